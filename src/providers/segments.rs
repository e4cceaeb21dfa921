//! How many SMS segments a text takes, for providers that do not say
//! (Africa's Talking answers with a cost but no count).
//!
//! A text that fits the GSM 03.38 alphabet is sent 7-bit: 160 characters
//! in one segment, 153 per segment when it is split (the rest carries the
//! concatenation header); the extension characters (`{ } [ ] ~ \ | ^ €`
//! and form feed) take two. Any other character makes the whole text
//! UCS-2: 70 UTF-16 units in one segment, 67 per segment when split.

/// The GSM 03.38 basic character set.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: escape plus one septet each.
const GSM_EXTENSION: &str = "\u{c}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// The encoding a text needs and the number of segments it takes.
pub fn count(text: &str) -> (Encoding, usize) {
    let mut septets = 0usize;
    for c in text.chars() {
        if GSM_BASIC.contains(c) {
            septets += 1;
        } else if GSM_EXTENSION.contains(c) {
            septets += 2;
        } else {
            let units = text.encode_utf16().count();
            return (Encoding::Ucs2, segments(units, 70, 67));
        }
    }
    (Encoding::Gsm7, segments(septets, 160, 153))
}

fn segments(units: usize, single: usize, part: usize) -> usize {
    if units <= single {
        1
    } else {
        units.div_ceil(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_and_ucs2_limits() {
        assert_eq!(count(""), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(160)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"a".repeat(161)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(306)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"a".repeat(307)), (Encoding::Gsm7, 3));
        // Extension characters count twice.
        assert_eq!(count(&"€".repeat(80)), (Encoding::Gsm7, 1));
        assert_eq!(count(&"€".repeat(81)), (Encoding::Gsm7, 2));
        assert_eq!(count(&"é".repeat(160)).0, Encoding::Gsm7);
        // One character outside GSM makes it all UCS-2.
        assert_eq!(count(&format!("{}ł", "a".repeat(69))), (Encoding::Ucs2, 1));
        assert_eq!(count(&format!("{}ł", "a".repeat(70))), (Encoding::Ucs2, 2));
        assert_eq!(
            count(&"a".repeat(134).replacen('a', "ł", 1)),
            (Encoding::Ucs2, 2)
        );
        assert_eq!(
            count(&"a".repeat(135).replacen('a', "ł", 1)),
            (Encoding::Ucs2, 3)
        );
        // An emoji is two UTF-16 units.
        assert_eq!(count(&"🏠".repeat(35)), (Encoding::Ucs2, 1));
        assert_eq!(count(&"🏠".repeat(36)), (Encoding::Ucs2, 2));
    }
}
