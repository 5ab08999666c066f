//! The lexical layer of SIP (RFC 3261 §25): tokens, quoted strings, separators
//! outside quotes, `;param` lists, `host[:port]`, and the parse error every
//! layer above reports with. Header, URI and message parsing all build on it,
//! and it depends on none of them.

use thiserror::Error;

/// Largest message we accept on any transport; bigger ones are not SIP traffic a
/// UAS needs (RFC 3261 §18.1.1 puts the UDP path MTU far below this).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("message is not valid UTF-8 in its start line or headers")]
    NotUtf8,
    #[error("no empty line ends the header section")]
    Incomplete,
    #[error("malformed start line: {0}")]
    StartLine(String),
    #[error("malformed header line {0:?}")]
    HeaderLine(String),
    #[error("bad {header}: {why}")]
    Header { header: &'static str, why: String },
    #[error("message of {0} bytes is larger than the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
}

impl ParseError {
    pub fn header(header: &'static str, why: String) -> Self {
        ParseError::Header { header, why }
    }
}

/// `;name=value` parameters after a header value or URI, in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=b;c` (the leading `;` optional). Whitespace around separators is
    /// dropped; quoted values keep their quotes' content.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut out = Vec::new();
        for piece in split_outside_quotes(text, b';') {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = match piece.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (piece, None),
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(ParseError::header("parameter", format!("invalid parameter name {name:?}")));
            }
            let value = match value {
                Some(v) if v.starts_with('"') => Some(unquote(v)?),
                Some(v) => Some(v.to_owned()),
                None => None,
            };
            out.push((name.to_ascii_lowercase(), value));
        }
        Ok(Params(out))
    }

    /// The value of `name` (`Some(None)` for a flag parameter such as `;lr`).
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// RFC 3261 `token` characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Splits `text` on `sep` where it is not inside a quoted string or `<...>`.
pub fn split_outside_quotes(text: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut angle, mut escaped) = (0, false, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            _ if b == sep && !quoted && !angle => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter()
}

pub(super) fn find_outside_quotes(text: &str, sep: u8) -> Option<usize> {
    let mut quoted = false;
    text.bytes().position(|b| {
        if b == b'"' {
            quoted = !quoted;
        }
        b == sep && !quoted
    })
}

/// Index of the closing `"` in text that follows an opening quote.
pub(super) fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i),
            _ => {}
        }
    }
    None
}

pub(super) fn unescape_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unquote(text: &str) -> Result<String, ParseError> {
    let inner = text.strip_prefix('"').unwrap_or(text);
    let end = closing_quote(inner).ok_or_else(|| ParseError::header("parameter", "unterminated quoted value".to_owned()))?;
    Ok(unescape_quoted(&inner[..end]))
}

/// `host[:port]`, with IPv6 references in brackets.
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &text[..close + 2];
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'<' || b == b'>' || b == b'"') {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host.to_owned(), port))
}
