//! SIP messages: parsing (RFC 3261 §7, §25), stream framing (§18.3), and printing.
//!
//! Parsing happens in two steps. [`parse`] splits a datagram into a start line, a
//! header list and a body, and fails only when the bytes are not a SIP message at
//! all (those are dropped: there is nobody to answer). [`Request::validate`] then
//! types the fields a UAS relies on and turns every defect into a
//! [`Rejection`] carrying the status code and a reason phrase that names the
//! problem, so the endpoint can answer `400 Bad CSeq: sequence number is 2**31 or
//! larger` rather than a blanket 400.

use std::fmt::Write as _;

use bytes::Bytes;

use super::header::{CSeq, NameAddr, Via};
pub use super::syntax::{MAX_MESSAGE_LEN, ParseError};
use super::syntax::{is_token_byte, split_outside_quotes};
use super::uri::Uri;

/// Header names precall knows, with their compact forms (RFC 3261 §7.3.3 and later
/// RFCs), so lookups need not care which form a peer used.
const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("b", "Referred-By"),
    ("y", "Identity"),
];

/// Ordered header fields. Values are stored unfolded (continuation lines joined by a
/// single space) and trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name` (case-insensitive, compact forms expanded).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header line named `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every comma-separated value of a list header (`Via`, `Require`, `Accept`…).
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.all(name)
            .flat_map(|v| split_outside_quotes(v, b','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    pub fn count(&self, name: &str) -> usize {
        self.all(name).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// What [`parse`] found before any validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String, version: String },
    Response { version: String, status: u16, reason: String },
}

/// A message split into its parts; nothing checked but the framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Bytes,
    /// The Content-Length header disagreed with the datagram (RFC 4475 clerr).
    pub body_short: bool,
    /// The request line could be split into method, URI and version, but not by
    /// the grammar's single spaces; answered with 400 once the headers are known.
    pub start_error: Option<String>,
}

/// Splits a complete message (a UDP datagram or one framed TCP message).
pub fn parse(data: &[u8]) -> Result<RawMessage, ParseError> {
    if data.len() > MAX_MESSAGE_LEN {
        return Err(ParseError::TooLarge(data.len()));
    }
    // RFC 3261 §7.5: ignore CRLFs before the start line.
    let start = data.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(data.len());
    let data = &data[start..];
    // A datagram is one whole message: if the empty line after the headers is
    // missing, the headers end with the datagram (Postel; RFC 4475 baddn lacks it).
    let (head_len, body_start) = header_end(data).unwrap_or((data.len(), data.len()));
    let head = std::str::from_utf8(&data[..head_len]).map_err(|_| ParseError::NotUtf8)?;
    let mut lines = unfold(head);
    let first = lines.next().ok_or_else(|| ParseError::StartLine(String::new()))?;
    let (start, start_error) = parse_start_line(&first)?;
    let mut headers = Headers::default();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| ParseError::HeaderLine(truncate(&line)))?;
        let name = name.trim_end();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::HeaderLine(truncate(&line)));
        }
        let name = COMPACT
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(name))
            .map_or(name, |(_, full)| full);
        let canonical = COMPACT
            .iter()
            .find(|(_, full)| full.eq_ignore_ascii_case(name))
            .map_or(name, |(_, full)| full);
        headers.push(canonical, value.trim());
    }
    let rest = &data[body_start..];
    // Content-Length is validated later; here it only bounds the body. A datagram
    // with extra bytes after the body has them ignored (RFC 3261 §18.3, RFC 4475 dblreq).
    let declared = headers.get("Content-Length").and_then(|v| v.trim().parse::<usize>().ok());
    let (body, body_short) = match declared {
        Some(n) if n <= rest.len() => (Bytes::copy_from_slice(&rest[..n]), false),
        Some(_) => (Bytes::copy_from_slice(rest), true),
        None => (Bytes::copy_from_slice(rest), false),
    };
    Ok(RawMessage {
        start,
        headers,
        body,
        body_short,
        start_error,
    })
}

/// For stream transports: the length of the first complete message in `buf`, or
/// `Ok(None)` when more bytes are needed. Content-Length is mandatory on streams.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    Framer::default().next(buf)
}

/// Frames messages on a stream, remembering how far it has already searched
/// for the end of the header section: a 60 KB header that arrives a byte at a
/// time costs one pass over its bytes, not one pass per byte.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    /// Bytes of the current message already searched without finding the header end.
    scanned: usize,
}

impl Framer {
    /// The length of the first complete message in `buf` (the same buffer, grown
    /// since the last call, until [`Framer::consume`]).
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, ParseError> {
        let from = self.scanned.min(buf.len());
        let Some((head_len, body_start)) = header_end_from(buf, from) else {
            if buf.len() > MAX_MESSAGE_LEN {
                return Err(ParseError::TooLarge(buf.len()));
            }
            // The last two bytes may begin a terminator that is not complete yet.
            self.scanned = buf.len().saturating_sub(2);
            return Ok(None);
        };
        self.scanned = head_len;
        let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| ParseError::NotUtf8)?;
        let mut length = None;
        for line in unfold(head).skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                    let value = value.trim();
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ParseError::header("Content-Length", "not a number".into()));
                    }
                    // A number too large for usize is simply too large.
                    length = Some(value.parse::<usize>().unwrap_or(usize::MAX));
                }
            }
        }
        let length = length.ok_or_else(|| ParseError::header("Content-Length", "required on stream transports".into()))?;
        let total = body_start.saturating_add(length);
        if total > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLarge(total));
        }
        Ok((buf.len() >= total).then_some(total))
    }

    /// The message returned by [`Framer::next`] was taken off the buffer.
    pub fn consume(&mut self) {
        self.scanned = 0;
    }
}

/// Index where the header section ends and where the body starts. Accepts bare LF
/// line ends, as RFC 3261 §7.5 asks implementations to.
fn header_end(data: &[u8]) -> Option<(usize, usize)> {
    header_end_from(data, 0)
}

fn header_end_from(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < data.len() {
        if data[i] == b'\n' {
            if data.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Yields logical header lines with continuation lines (leading SP/HT) joined.
fn unfold(head: &str) -> impl Iterator<Item = String> + '_ {
    let mut out: Vec<String> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t'])
            && let Some(last) = out.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim_start());
            continue;
        }
        if !line.is_empty() {
            out.push(line.to_owned());
        }
    }
    out.into_iter()
}

fn parse_start_line(line: &str) -> Result<(StartLine, Option<String>), ParseError> {
    let bad = || ParseError::StartLine(truncate(line));
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let version = format!("SIP/{}", parts.next().ok_or_else(bad)?);
        let code = parts.next().ok_or_else(bad)?;
        let reason = parts.next().unwrap_or("").to_owned();
        let status = code
            .parse::<u16>()
            .ok()
            .filter(|c| code.len() == 3 && (100..700).contains(c))
            .ok_or_else(bad)?;
        return Ok((StartLine::Response { version, status, reason }, None));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly one space each,
    // nothing trailing (RFC 4475 lwsstart, lwsruri, trws). A line that still has a
    // method, something and a version is kept so the peer can be told what is wrong.
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 3 {
        return Err(bad());
    }
    let (method, version) = (words[0], words[words.len() - 1]);
    let uri = words[1..words.len() - 1].join(" ");
    if method.is_empty() || !method.bytes().all(is_token_byte) || !version.starts_with("SIP/") {
        return Err(bad());
    }
    let error = (line.split(' ').count() != 3 || words.len() != 3)
        .then(|| "Bad Request-Line: method, Request-URI and SIP version must be separated by single spaces".to_owned());
    Ok((
        StartLine::Request {
            method: method.to_owned(),
            uri,
            version: version.to_owned(),
        },
        error,
    ))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A request whose essential fields parsed; everything a UAS needs to route it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Bytes,
    pub via: Via,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
}

/// A response to one of our requests (BYE).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub via: Via,
    pub call_id: String,
    pub cseq: CSeq,
}

/// Why a request cannot be processed; the status and reason go on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
    /// Extra header lines (`Unsupported`, `Accept`, `Allow`…).
    pub headers: Vec<(&'static str, String)>,
}

impl Rejection {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Rejection {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl Request {
    /// Types the essential fields; `Err` says how to answer (RFC 3261 §8.2, §16.3
    /// and RFC 4475's expectations).
    pub fn validate(raw: RawMessage) -> Result<Request, Rejection> {
        let StartLine::Request { method, uri, version } = raw.start else {
            return Err(Rejection::new(400, "Not a request"));
        };
        let h = &raw.headers;
        if let Some(why) = &raw.start_error {
            return Err(Rejection::new(400, why.clone()));
        }
        if version != "SIP/2.0" {
            return Err(Rejection::new(505, format!("Version Not Supported: {version}, only SIP/2.0")));
        }
        for name in ["Call-ID", "From", "To", "CSeq", "Content-Length", "Max-Forwards", "Content-Type"] {
            if h.count(name) > 1 {
                return Err(Rejection::new(400, format!("Bad Request: {name} appears more than once")));
            }
        }
        let via = h
            .list("Via")
            .next()
            .ok_or_else(|| Rejection::new(400, "Bad Request: missing Via"))?;
        let via = Via::parse(via).map_err(bad)?;
        for other in h.list("Via").skip(1) {
            Via::parse(other).map_err(bad)?;
        }
        let call_id = h
            .get("Call-ID")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Rejection::new(400, "Bad Request: missing Call-ID"))?
            .to_owned();
        if call_id.contains(char::is_whitespace) {
            return Err(Rejection::new(400, "Bad Request: Call-ID contains whitespace"));
        }
        let from = NameAddr::parse(
            "From",
            h.get("From").ok_or_else(|| Rejection::new(400, "Bad Request: missing From"))?,
        )
        .map_err(bad)?;
        let to = NameAddr::parse("To", h.get("To").ok_or_else(|| Rejection::new(400, "Bad Request: missing To"))?).map_err(bad)?;
        let cseq = CSeq::parse(h.get("CSeq").ok_or_else(|| Rejection::new(400, "Bad Request: missing CSeq"))?).map_err(bad)?;
        if cseq.method != method {
            return Err(Rejection::new(
                400,
                format!("Bad Request: CSeq method {} does not match request method {method}", cseq.method),
            ));
        }
        if let Some(mf) = h.get("Max-Forwards")
            && (mf.parse::<u32>().ok().filter(|n| *n <= 255).is_none() || !mf.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Rejection::new(
                400,
                format!("Bad Request: Max-Forwards {mf:?} is not a number from 0 to 255"),
            ));
        }
        if let Some(cl) = h.get("Content-Length")
            && (!cl.bytes().all(|b| b.is_ascii_digit()) || cl.is_empty() || cl.parse::<u32>().is_err())
        {
            return Err(Rejection::new(
                400,
                format!("Bad Request: Content-Length {cl:?} is not a valid length"),
            ));
        }
        if raw.body_short {
            return Err(Rejection::new(400, "Bad Request: Content-Length is larger than the message body"));
        }
        for contact in h.list("Contact") {
            if contact != "*" {
                NameAddr::parse("Contact", contact).map_err(bad)?;
            }
        }
        let uri = Uri::parse(&uri).map_err(|e| Rejection::new(400, format!("Bad Request-URI: {}", e.0)))?;
        if !uri.is_sip() {
            return Err(Rejection::new(416, "Unsupported URI Scheme in Request-URI").with_header("Accept", "application/sdp"));
        }
        if uri.has_headers {
            return Err(Rejection::new(
                400,
                "Bad Request-URI: header fields (?...) are not allowed in a Request-URI",
            ));
        }
        Ok(Request {
            method,
            uri,
            headers: raw.headers,
            body: raw.body,
            via,
            from,
            to,
            call_id,
            cseq,
        })
    }

    pub fn is(&self, method: &str) -> bool {
        self.method == method
    }
}

impl Response {
    pub fn validate(raw: RawMessage) -> Option<Response> {
        let StartLine::Response { status, reason, .. } = raw.start else {
            return None;
        };
        let via = Via::parse(raw.headers.list("Via").next()?).ok()?;
        let call_id = raw.headers.get("Call-ID")?.to_owned();
        let cseq = CSeq::parse(raw.headers.get("CSeq")?).ok()?;
        Some(Response {
            status,
            reason,
            headers: raw.headers,
            via,
            call_id,
            cseq,
        })
    }
}

fn bad(e: ParseError) -> Rejection {
    match e {
        ParseError::Header { header, why } => Rejection::new(400, format!("Bad {header}: {why}")),
        other => Rejection::new(400, format!("Bad Request: {other}")),
    }
}

/// Prints a message: start line, headers in order, `Content-Length` computed.
pub struct MessageWriter {
    buf: String,
}

impl MessageWriter {
    pub fn request(method: &str, uri: &str) -> Self {
        let mut buf = String::with_capacity(512);
        let _ = write!(buf, "{method} {uri} SIP/2.0\r\n");
        MessageWriter { buf }
    }

    pub fn response(status: u16, reason: &str) -> Self {
        let mut buf = String::with_capacity(512);
        // A reason phrase must not break the start line.
        let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        let _ = write!(buf, "SIP/2.0 {status} {reason}\r\n");
        MessageWriter { buf }
    }

    pub fn header(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.buf, "{name}: {value}\r\n");
        self
    }

    /// Finishes the message with `body` (and `Content-Type` when it is not empty).
    pub fn finish(mut self, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
        if let (Some(ct), false) = (content_type, body.is_empty()) {
            let _ = write!(self.buf, "Content-Type: {ct}\r\n");
        }
        let _ = write!(self.buf, "Content-Length: {}\r\n\r\n", body.len());
        let mut out = self.buf.into_bytes();
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n\
        Max-Forwards: 70\r\n\
        To: Bob <sip:bob@example.com>\r\n\
        From: Alice <sip:alice@example.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33.example.com\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@10.0.0.1>\r\n\
        Content-Type: application/sdp\r\n\
        l: 5\r\n\r\nv=0\r\n";

    #[test]
    fn parses_and_validates_a_request() {
        let raw = parse(INVITE.as_bytes()).unwrap();
        let req = Request::validate(raw).unwrap();
        assert_eq!(req.method, "INVITE");
        assert_eq!(req.cseq.seq, 314159);
        assert_eq!(req.from.tag(), Some("1928301774"));
        assert_eq!(req.to.tag(), None);
        assert_eq!(&req.body[..], b"v=0\r\n");
        assert_eq!(req.headers.get("content-length"), Some("5"));
    }

    #[test]
    fn frames_stream_messages() {
        let msg = INVITE.as_bytes();
        assert_eq!(frame_len(&msg[..40]).unwrap(), None);
        assert_eq!(frame_len(&msg[..msg.len() - 1]).unwrap(), None);
        assert_eq!(frame_len(msg).unwrap(), Some(msg.len()));
        let mut two = msg.to_vec();
        two.extend_from_slice(msg);
        assert_eq!(frame_len(&two).unwrap(), Some(msg.len()));
        assert!(frame_len(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n").is_err());
    }

    #[test]
    fn rejections_name_the_problem() {
        let r = Request::validate(parse(INVITE.replace("CSeq: 314159 INVITE", "CSeq: 1 ACK").as_bytes()).unwrap()).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("CSeq method"), "{}", r.reason);
        let r = Request::validate(parse(INVITE.replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia").as_bytes()).unwrap()).unwrap_err();
        assert_eq!(r.status, 505);
        let r = Request::validate(parse(INVITE.replace("sip:bob@example.com SIP", "xmpp:bob@example.com SIP").as_bytes()).unwrap())
            .unwrap_err();
        assert_eq!(r.status, 416);
        let r =
            Request::validate(parse(INVITE.replace("Call-ID: a84b4c76e66710@pc33.example.com\r\n", "").as_bytes()).unwrap()).unwrap_err();
        assert_eq!((r.status, r.reason.as_str()), (400, "Bad Request: missing Call-ID"));
    }

    #[test]
    fn writer_computes_content_length() {
        let mut w = MessageWriter::response(200, "OK\r\nInjected: yes");
        w.header("Call-ID", "x");
        let out = String::from_utf8(w.finish(Some("application/sdp"), b"v=0\r\n")).unwrap();
        assert!(out.starts_with("SIP/2.0 200 OKInjected: yes\r\n"));
        assert!(out.ends_with("Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"));
    }
}
