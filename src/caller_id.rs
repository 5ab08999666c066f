//! Caller ids as keys: normalised toward E.164 so that `+1 (555) 123-4567`,
//! `0015551234567` and `sip:+15551234567@trunk` all find the same mapping.

/// Normalises a caller id: strips visual separators, turns a `00` international
/// prefix into `+`, and prefixes `+` to a bare number long enough to carry a
/// country code (11–15 digits). Shorter national numbers stay as digits (we do not
/// guess a country). `None` for anonymous or non-numeric ids.
pub fn normalize(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let lower = raw.to_ascii_lowercase();
    if lower.is_empty() || ["anonymous", "unknown", "restricted", "private", "unavailable", "withheld"].contains(&lower.as_str()) {
        return None;
    }
    let mut plus = false;
    let mut digits = String::with_capacity(raw.len());
    for (i, c) in raw.chars().enumerate() {
        match c {
            '+' if i == 0 => plus = true,
            '0'..='9' if digits.len() <= 20 => digits.push(c),
            '0'..='9' => return None,
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return None,
        }
    }
    // E.164 numbers have at most 15 digits (17 with a 00 prefix); national ones fewer.
    if digits.is_empty() || digits.len() > 17 {
        return None;
    }
    if !plus {
        if let Some(rest) = digits.strip_prefix("00") {
            digits = rest.to_owned();
            plus = true;
        } else if (11..=15).contains(&digits.len()) {
            plus = true;
        }
    }
    if (plus && !(8..=15).contains(&digits.len())) || digits.len() > 15 {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}

/// Longest non-numeric id kept on a call record (a SIP user part can be any
/// length a peer likes).
pub const MAX_RECORDED: usize = 64;

/// What a call record keeps of a peer's caller or callee id: the normalised
/// number, or the raw text cut to [`MAX_RECORDED`] characters.
pub fn for_record(raw: &str) -> String {
    normalize(raw).unwrap_or_else(|| raw.chars().take(MAX_RECORDED).collect())
}

#[cfg(test)]
mod tests {
    use super::{MAX_RECORDED, for_record, normalize};

    #[test]
    fn e164_forms() {
        assert_eq!(normalize("+15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(normalize("+1 (555) 123-4567").as_deref(), Some("+15551234567"));
        assert_eq!(normalize("0015551234567").as_deref(), Some("+15551234567"));
        assert_eq!(normalize("15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(normalize("442071838750").as_deref(), Some("+442071838750"));
        assert_eq!(normalize("5551234").as_deref(), Some("5551234"), "national numbers stay digits");
        assert_eq!(normalize("1001").as_deref(), Some("1001"), "PBX extensions stay as they are");
    }

    #[test]
    fn anonymous_and_junk() {
        let huge = "5".repeat(10_000);
        assert_eq!(normalize(&huge), None);
        assert_eq!(for_record(&huge).len(), MAX_RECORDED);
        assert_eq!(normalize("1234567890123456"), None, "16 digits is no phone number");
        assert_eq!(normalize("00441234567890123").as_deref(), Some("+441234567890123"));
        for raw in ["", "anonymous", "Anonymous", "unknown", "sipp", "+", "+1", "12a4", "1+2"] {
            assert_eq!(normalize(raw), None, "{raw:?}");
        }
        assert_eq!(normalize("+1234567890123456"), None, "longer than E.164 allows");
    }
}
