//! Africa's Talking's callbacks: SMS delivery reports and incoming SMS.
//!
//! Africa's Talking signs nothing (`../shared/providers.md` §7), so the
//! callback URL itself carries the proof: the integration's
//! `webhook_token` (a random value the agent chooses, at least 16
//! characters) as `?token=`, compared in constant time. Anyone who learns
//! the URL can post to it, so it must be kept like a password; a replay is
//! recognised by the ids inside (message id and status, incoming message id).

use serde_json::json;

use crate::webhooks::inbox::Keyword;

/// A webhook token shorter than this is refused at connect time.
pub const MIN_TOKEN_CHARS: usize = 16;

/// What a callback says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A delivery report for a message we sent.
    Status {
        /// The `messageId` the send answered with.
        message_id: String,
        status: String,
        /// `delivered` or `failed`.
        event: &'static str,
        /// `phoneNumber`: the recipient.
        phone: Option<String>,
        /// `failureReason`, when it failed (`UserInBlacklist`, …).
        failure_reason: Option<String>,
        detail: serde_json::Value,
    },
    /// Someone texted the account's number or shortcode.
    Inbound {
        id: String,
        from: String,
        keyword: Option<Keyword>,
    },
    /// Intermediate statuses (Sent, Submitted, Buffered) and anything else.
    Ignored,
}

/// Reads a form-encoded callback. Delivery reports carry `id`, `status`,
/// `phoneNumber`, `networkCode` and, when it failed, `failureReason`;
/// incoming messages carry `id`, `from`, `to`, `text`, `date`, `linkId`.
pub fn parse(params: &[(String, String)]) -> Notice {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(id) = get("id").filter(|id| !id.is_empty()) else {
        return Notice::Ignored;
    };
    if let Some(status) = get("status") {
        let event = match status {
            "Success" => "delivered",
            "Failed" | "Rejected" => "failed",
            _ => return Notice::Ignored,
        };
        return Notice::Status {
            message_id: id.to_string(),
            status: status.to_string(),
            event,
            phone: get("phoneNumber").map(str::to_string),
            failure_reason: get("failureReason").map(str::to_string),
            detail: json!({
                "provider_status": status,
                "failure_reason": get("failureReason"),
                "network_code": get("networkCode"),
            }),
        };
    }
    match (get("from"), get("text")) {
        (Some(from), Some(text)) => Notice::Inbound {
            id: id.to_string(),
            from: from.to_string(),
            keyword: Keyword::from_reply(text),
        },
        _ => Notice::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reports_and_replies_are_read() {
        let n = parse(&p(&[
            ("id", "ATXid_1"),
            ("status", "Failed"),
            ("phoneNumber", "+254711000001"),
            ("failureReason", "UserInBlacklist"),
        ]));
        match n {
            Notice::Status { event, detail, .. } => {
                assert_eq!(event, "failed");
                assert_eq!(detail["failure_reason"], "UserInBlacklist");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&p(&[("id", "ATXid_1"), ("status", "Buffered")])),
            Notice::Ignored
        );
        assert_eq!(
            parse(&p(&[
                ("id", "in-1"),
                ("from", "+254711000001"),
                ("text", " stop")
            ])),
            Notice::Inbound {
                id: "in-1".into(),
                from: "+254711000001".into(),
                keyword: Some(Keyword::Stop)
            }
        );
        assert_eq!(
            parse(&p(&[("from", "+2547"), ("text", "hi")])),
            Notice::Ignored
        );
    }
}
