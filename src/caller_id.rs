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
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return None,
        }
    }
    if digits.is_empty() {
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
    if plus && !(8..=15).contains(&digits.len()) {
        return None;
    }
    Some(if plus { format!("+{digits}") } else { digits })
}

#[cfg(test)]
mod tests {
    use super::normalize;

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
        for raw in ["", "anonymous", "Anonymous", "unknown", "sipp", "+", "+1", "12a4", "1+2"] {
            assert_eq!(normalize(raw), None, "{raw:?}");
        }
        assert_eq!(normalize("+1234567890123456"), None, "longer than E.164 allows");
    }
}
