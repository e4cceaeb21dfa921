//! Integration settings: which keys a provider takes, which are secret, and
//! the decrypted, merged map an adapter reads at send time.

use std::fmt;

use serde_json::{Map, Value};

use super::Provider;
use crate::domain::Channel;

/// One settings key of a provider (DESIGN.md, "Integration settings").
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    pub key: &'static str,
    /// Encrypted at rest, never logged, masked when listed.
    pub secret: bool,
    pub required: bool,
}

impl SettingSpec {
    pub const fn required(key: &'static str) -> Self {
        Self {
            key,
            secret: false,
            required: true,
        }
    }
    pub const fn optional(key: &'static str) -> Self {
        Self {
            key,
            secret: false,
            required: false,
        }
    }
    pub const fn secret(key: &'static str) -> Self {
        Self {
            key,
            secret: true,
            required: true,
        }
    }
    pub const fn optional_secret(key: &'static str) -> Self {
        Self {
            key,
            secret: true,
            required: false,
        }
    }
}

/// Keys every integration may carry whatever its provider.
const COMMON_KEYS: [&str; 1] = ["rate_limit"];

/// An integration's settings with secrets decrypted, as adapters read them.
/// `Debug` shows key names only, never values.
#[derive(Clone, Default, PartialEq)]
pub struct ProviderSettings(Map<String, Value>);

impl ProviderSettings {
    pub fn new(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// A string setting, or `None` when absent or empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A setting the adapter cannot work without.
    pub fn require(&self, key: &str) -> Result<&str, super::ProviderError> {
        self.get(key).ok_or_else(|| {
            super::ProviderError::misconfigured(format!("setting `{key}` is missing"))
        })
    }

    pub fn into_inner(self) -> Map<String, Value> {
        self.0
    }
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Settings split by how they are stored.
#[derive(Debug, Default)]
pub struct SplitSettings {
    /// Stored as plain JSON.
    pub config: Map<String, Value>,
    /// Encrypted before they are stored.
    pub secrets: Map<String, Value>,
}

/// Checks settings given for `provider` on `channel` and splits them into
/// plain config and secrets. Unknown keys are refused, so that a typo
/// (`auth_tokn`) is reported at connect time instead of as a failed send.
pub fn split_settings(
    provider: &dyn Provider,
    channel: Channel,
    settings: &Value,
) -> Result<SplitSettings, String> {
    let specs = provider.settings(channel);
    if specs.is_empty() {
        return Err(format!(
            "provider `{}` does not send {channel}",
            provider.name()
        ));
    }
    let given = settings
        .as_object()
        .ok_or_else(|| "settings must be a JSON object".to_string())?;
    let mut config = Map::new();
    let mut secrets = Map::new();
    for (key, value) in given {
        if COMMON_KEYS.contains(&key.as_str()) {
            crate::policy::RateLimit::check_json(value, "rate_limit")?;
            config.insert(key.clone(), value.clone());
            continue;
        }
        let spec = specs.iter().find(|s| s.key == key).ok_or_else(|| {
            let known: Vec<_> = specs.iter().map(|s| s.key).chain(COMMON_KEYS).collect();
            format!(
                "unknown setting `{key}` for {} {channel} (known: {})",
                provider.name(),
                known.join(", ")
            )
        })?;
        if value.is_null() {
            continue;
        }
        if spec.secret {
            if !value.is_string() {
                return Err(format!("setting `{key}` must be a string"));
            }
            secrets.insert(key.clone(), value.clone());
        } else {
            if !(value.is_string() || value.is_number() || value.is_boolean()) {
                return Err(format!(
                    "setting `{key}` must be a string, number or boolean"
                ));
            }
            config.insert(key.clone(), value.clone());
        }
    }
    for spec in specs.iter().filter(|s| s.required) {
        let present = given
            .get(spec.key)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
        if !present {
            return Err(format!(
                "setting `{}` is required for {} {channel}",
                spec.key,
                provider.name()
            ));
        }
    }
    let mut merged = config.clone();
    merged.extend(secrets.clone());
    provider.check_settings(channel, &ProviderSettings::new(merged))?;
    Ok(SplitSettings { config, secrets })
}

/// Masks a secret for display: enough to recognise which key is connected,
/// never enough to use it.
pub fn mask_secret(value: &str) -> String {
    let n = value.chars().count();
    if n >= 12 {
        let tail: String = value.chars().skip(n - 4).collect();
        format!("****{tail}")
    } else {
        "****".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_keys_not_values() {
        let mut m = Map::new();
        m.insert("auth_token".into(), "very-secret-token".into());
        let s = ProviderSettings::new(m);
        let shown = format!("{s:?}");
        assert!(shown.contains("auth_token"));
        assert!(!shown.contains("very-secret"));
    }

    #[test]
    fn masking() {
        assert_eq!(mask_secret("re_1234567890abcd"), "****abcd");
        assert_eq!(mask_secret("short"), "****");
    }

    #[test]
    fn rate_limit_is_checked() {
        let check = |v| crate::policy::RateLimit::check_json(&v, "rate_limit");
        assert!(check(serde_json::json!({"per_second": 5, "per_day": 1000})).is_ok());
        assert!(check(serde_json::json!({"per_minute": 5})).is_err());
        assert!(check(serde_json::json!({"per_second": 0})).is_err());
    }
}
