//! Typed views of the header fields a UAS must understand: Via, name-addr (From, To,
//! Contact), CSeq and generic `;param` lists.
//!
//! The grammar is RFC 3261 §25 with the leniency RFC 4475 asks for: linear white
//! space is allowed around `;`, `=`, `/` and `:` separators, names are case
//! insensitive, and anything a peer controls is parsed into `Result`s, never
//! `unwrap`ped.

use std::fmt;

pub use super::syntax::{Params, is_token_byte, split_host_port, split_outside_quotes};
use super::syntax::{ParseError, closing_quote, find_outside_quotes, unescape_quoted};
use super::uri::Uri;

/// The top `Via` value: enough to match transactions (RFC 3261 §17.2.3) and route
/// responses (§18.2.2, RFC 3581).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let bad = |why: &str| ParseError::header("Via", why.to_owned());
        let (sent, params) = match find_outside_quotes(value, b';') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, ""),
        };
        let mut parts = sent.splitn(3, '/');
        let name = parts.next().map(str::trim).unwrap_or_default();
        let version = parts.next().map(str::trim).unwrap_or_default();
        let rest = parts.next().map(str::trim).ok_or_else(|| bad("missing sent-protocol"))?;
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(bad("sent-protocol is not SIP/2.0"));
        }
        let mut words = rest.split_whitespace();
        let transport = words.next().ok_or_else(|| bad("missing transport"))?;
        let sent_by: String = words.collect();
        if sent_by.is_empty() {
            return Err(bad("missing sent-by host"));
        }
        if !transport.bytes().all(is_token_byte) {
            return Err(bad("invalid transport token"));
        }
        let (host, port) = split_host_port(&sent_by).ok_or_else(|| bad("invalid sent-by host or port"))?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: Params::parse(params)?,
        })
    }

    /// The branch, if it carries the RFC 3261 magic cookie (otherwise the request is
    /// from an RFC 2543 element and transactions are matched the old way).
    pub fn rfc3261_branch(&self) -> Option<&str> {
        match self.params.get("branch") {
            Some(Some(b)) if b.starts_with("z9hG4bK") => Some(b),
            _ => None,
        }
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }
}

/// `name-addr` or `addr-spec` with header parameters: From, To, Contact, Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(header: &'static str, value: &str) -> Result<Self, ParseError> {
        let bad = |why: String| ParseError::header(header, why);
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("empty value".into()));
        }
        // name-addr: [display-name] "<" addr-spec ">" *(";" param)
        let (display, uri_text, rest) = if let Some(after_quote) = value.strip_prefix('"') {
            let end = closing_quote(after_quote).ok_or_else(|| bad("unterminated quoted display name".into()))?;
            let display = unescape_quoted(&after_quote[..end]);
            let rest = after_quote[end + 1..].trim_start();
            let inner = rest
                .strip_prefix('<')
                .ok_or_else(|| bad("quoted display name must be followed by <uri>".into()))?;
            let close = inner.find('>').ok_or_else(|| bad("missing closing > after URI".into()))?;
            (Some(display), &inner[..close], &inner[close + 1..])
        } else if let Some(open) = value.find('<') {
            let display = value[..open].trim();
            if !display.is_empty() && !display.split_whitespace().all(|w| w.bytes().all(is_token_byte)) {
                return Err(bad(format!("display name {display:?} has characters that must be quoted")));
            }
            let inner = &value[open + 1..];
            let close = inner.find('>').ok_or_else(|| bad("missing closing > after URI".into()))?;
            let display = (!display.is_empty()).then(|| display.to_owned());
            (display, &inner[..close], &inner[close + 1..])
        } else {
            // addr-spec: no display name, and any `;` starts a header parameter; a URI
            // with `?headers` or `,` must be enclosed in <> (RFC 3261 §20.10).
            let (uri, rest) = match value.find(';') {
                Some(i) => (value[..i].trim_end(), &value[i..]),
                None => (value, ""),
            };
            if uri.contains('?') || uri.contains(',') {
                return Err(bad("a URI with headers or commas must be enclosed in <>".into()));
            }
            (None, uri, rest)
        };
        if uri_text.trim() != uri_text || uri_text.contains(char::is_whitespace) {
            return Err(bad("whitespace inside the URI".into()));
        }
        let uri = Uri::parse(uri_text).map_err(|e| bad(e.to_string()))?;
        let rest = rest.trim_start();
        if !rest.is_empty() && !rest.starts_with(';') {
            return Err(bad(format!("unexpected text after the address: {rest:?}")));
        }
        Ok(NameAddr {
            display,
            uri,
            params: Params::parse(rest)?,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }
}

/// `CSeq: <number> <method>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: String,
}

impl CSeq {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let bad = |why: &str| ParseError::header("CSeq", why.to_owned());
        let mut words = value.split_whitespace();
        let number = words.next().ok_or_else(|| bad("missing sequence number"))?;
        let method = words.next().ok_or_else(|| bad("missing method"))?;
        if words.next().is_some() {
            return Err(bad("extra text after the method"));
        }
        if !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("sequence number is not a number"));
        }
        // RFC 3261 §8.1.1.5: the number must be below 2**31.
        let seq = number
            .parse::<u32>()
            .ok()
            .filter(|n| *n < 1 << 31)
            .ok_or_else(|| bad("sequence number is 2**31 or larger"))?;
        if !method.bytes().all(is_token_byte) {
            return Err(bad("method is not a token"));
        }
        Ok(CSeq {
            seq,
            method: method.to_owned(),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_whitespace_everywhere() {
        let v = Via::parse("SIP  /   2.0\t /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert_eq!(v.rfc3261_branch(), None);
        let v = Via::parse("SIP/2.0/TCP [2001:db8::9]:5061 ; branch = z9hG4bKx ; rport").unwrap();
        assert_eq!(v.host, "[2001:db8::9]");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rfc3261_branch(), Some("z9hG4bKx"));
        assert!(v.params.contains("rport"));
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP h:99999").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            "From",
            "\"J Rosenberg \\\\\\\"\"  <sip:jdrosen@example.com>\r\n ;\r\n tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("To", "sip:user@example.com;tag=1").unwrap();
        assert_eq!(n.uri.user.as_deref(), Some("user"));
        assert_eq!(n.tag(), Some("1"));
        let n = NameAddr::parse("From", "caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display.as_deref(), Some("caller"));
    }

    #[test]
    fn name_addr_rejects_rfc4475_errors() {
        assert!(NameAddr::parse("To", "\"Watson, Thomas <sip:t@example.org>").is_err(), "quotbal");
        assert!(
            NameAddr::parse("To", "\"Watson, Thomas\" < sip:t.watson@example.org >").is_err(),
            "badaspec"
        );
        assert!(
            NameAddr::parse("From", "Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err(),
            "baddn"
        );
        assert!(
            NameAddr::parse("Contact", "sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err(),
            "regbadct"
        );
    }

    #[test]
    fn cseq_limits() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE".into()
            }
        );
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
    }
}
