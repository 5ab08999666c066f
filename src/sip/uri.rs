//! SIP, SIPS and tel URIs, parsed far enough to route a request and to read the
//! caller's number. Other schemes parse as `Scheme::Other` so the endpoint can answer
//! `416 Unsupported URI Scheme` instead of `400`.

use std::fmt;

use thiserror::Error;

use super::syntax::{Params, split_host_port};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid URI: {0}")]
pub struct UriError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part (or the tel number), still percent-encoded.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    /// Whether the URI carried `?headers` (illegal in a Request-URI, RFC 3261 §19.1.5).
    pub has_headers: bool,
    raw: String,
}

impl Uri {
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let bad = |why: &str| UriError(format!("{why} in {text:?}"));
        if text.is_empty()
            || text
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'<' || b == b'>')
        {
            return Err(bad("whitespace, control characters or <> "));
        }
        let (scheme, rest) = text.split_once(':').ok_or_else(|| bad("no scheme"))?;
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad("invalid scheme"));
        }
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => Scheme::Other(other.to_owned()),
        };
        let raw = text.to_owned();
        match scheme {
            Scheme::Other(_) => Ok(Uri {
                scheme,
                user: None,
                host: String::new(),
                port: None,
                params: Params::default(),
                has_headers: false,
                raw,
            }),
            Scheme::Tel => {
                let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
                if number.is_empty() {
                    return Err(bad("empty tel number"));
                }
                let params = Params::parse(params).map_err(|e| UriError(e.to_string()))?;
                Ok(Uri {
                    scheme,
                    user: Some(number.to_owned()),
                    host: String::new(),
                    port: None,
                    params,
                    has_headers: false,
                    raw,
                })
            }
            Scheme::Sip | Scheme::Sips => {
                // The user part may itself contain ';' and '?' (RFC 4475 semiuri,
                // intmeth), so split the userinfo at the last '@' before looking for
                // parameters and headers.
                let (user, hostpart) = match rest.rfind('@') {
                    Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
                    None => (None, rest),
                };
                let (hostpart, has_headers) = match hostpart.split_once('?') {
                    Some((r, _)) => (r, true),
                    None => (hostpart, false),
                };
                let user = match user {
                    Some(u) => {
                        let u = u.split_once(':').map_or(u, |(name, _password)| name);
                        if u.is_empty() {
                            return Err(bad("empty user part"));
                        }
                        Some(u.to_owned())
                    }
                    None => None,
                };
                let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
                let (host, port) = split_host_port(hostport).ok_or_else(|| bad("invalid host or port"))?;
                if !host.starts_with('[') && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                    return Err(bad("invalid host"));
                }
                let params = Params::parse(params).map_err(|e| UriError(e.to_string()))?;
                Ok(Uri {
                    scheme,
                    user,
                    host,
                    port,
                    params,
                    has_headers,
                    raw,
                })
            }
        }
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel)
    }

    /// The user part with `%XX` escapes decoded (lossy for invalid UTF-8).
    pub fn user_decoded(&self) -> Option<String> {
        self.user.as_deref().map(percent_decode)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse("sip:+15551234567@gw.example.com:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("+15551234567"));
        assert_eq!(u.host, "gw.example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.get("transport"), Some(Some("tcp")));
        assert!(u.params.contains("lr"));
    }

    #[test]
    fn escapes_and_semicolons_in_user() {
        let u = Uri::parse("sip:sips%3Auser%40example.com@example.net").unwrap();
        assert_eq!(u.user_decoded().as_deref(), Some("sips:user@example.com"));
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.host, "example.com");
        let u = Uri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.port, Some(5070));
    }

    #[test]
    fn other_schemes_and_errors() {
        assert_eq!(
            Uri::parse("nobodyknowsthisscheme:totallyopaquecontent").unwrap().scheme,
            Scheme::Other("nobodyknowsthisscheme".into())
        );
        assert!(!Uri::parse("soap.beep://192.0.2.103:3002").unwrap().is_sip());
        assert!(Uri::parse("<sip:user@example.com>").is_err());
        assert!(Uri::parse("sip:user@example.com?Route=x").unwrap().has_headers);
        assert!(Uri::parse("sip:").is_err());
        assert!(Uri::parse("sip:host:notaport").is_err());
        assert_eq!(Uri::parse("tel:+1-201-555-0123").unwrap().user.as_deref(), Some("+1-201-555-0123"));
        assert_eq!(percent_decode("a%"), "a%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
