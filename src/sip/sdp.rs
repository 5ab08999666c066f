//! SDP (RFC 4566) parsing and the offer/answer rules (RFC 3264) for one audio
//! stream: G.711 μ-law/A-law in the caller's order of preference, RFC 4733
//! `telephone-event` always accepted on the caller's payload type, every other
//! stream refused with port 0, hold by direction attributes or `c=0.0.0.0`.
//!
//! Pure functions: the call layer decides what to do with the result.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use thiserror::Error;

use crate::media::g711::G711;
use crate::sip::message::{Rejection, Request};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP line {0:?} is malformed")]
    Line(String),
    #[error("SDP has no v=0 line")]
    NoVersion,
    #[error("SDP offers no audio stream")]
    NoAudio,
    /// Audio is offered, but only over a profile we do not speak (SRTP, DTLS).
    #[error("audio is offered only over {0}; precall speaks plain RTP/AVP")]
    NoPlainRtp(String),
    #[error("audio stream has no connection address (c=)")]
    NoConnection,
    #[error("no common codec: offered {0}, we accept PCMU and PCMA")]
    NoCommonCodec(String),
}

impl SdpError {
    /// The SIP status that reports this error: a well-formed offer we cannot
    /// accept is `488` (RFC 3261 §21.4.26), which SBCs answer by retrying with
    /// plain RTP or another codec; SDP that does not parse is `400`.
    pub fn status(&self) -> u16 {
        match self {
            SdpError::NoAudio | SdpError::NoPlainRtp(_) | SdpError::NoCommonCodec(_) => 488,
            _ => 400,
        }
    }

    /// The `Warning` values (RFC 3261 §20.43) that say why a `488` refused the
    /// offer, so that the far end can fall back without guessing.
    pub fn warnings(&self) -> Vec<(u16, String)> {
        match self {
            SdpError::NoAudio => vec![(304, "Media type not available: no audio stream over RTP/AVP".into())],
            SdpError::NoPlainRtp(proto) => vec![
                (302, format!("Incompatible transport protocol: {proto}; offer RTP/AVP")),
                (304, "Media type not available: no audio stream over RTP/AVP".into()),
            ],
            SdpError::NoCommonCodec(offered) => {
                vec![(305, format!("Incompatible media format: {offered}; precall accepts PCMU, PCMA"))]
            }
            _ => Vec::new(),
        }
    }

    /// How to refuse an offer with this error: the status, a reason phrase that
    /// names the problem, and for `488` the `Warning` header.
    pub fn rejection(&self) -> Rejection {
        let status = self.status();
        let prefix = if status == 488 { "Not Acceptable Here" } else { "Bad Request" };
        let mut r = Rejection::new(status, format!("{prefix}: {self}"));
        let warnings = self.warnings();
        if !warnings.is_empty() {
            let value = warnings
                .iter()
                .map(|(code, text)| format!("{code} precall \"{}\"", text.replace(['"', '\\'], "'")))
                .collect::<Vec<_>>()
                .join(", ");
            r = r.with_header("Warning", value);
        }
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answerer uses for an offer in this direction.
    fn reverse(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the side with this direction may send media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub direction: Option<Direction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let mut sd = SessionDescription {
            connection: None,
            direction: None,
            media: Vec::new(),
        };
        let mut saw_version = false;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let (kind, value) = line
                .split_once('=')
                .ok_or_else(|| SdpError::Line(line.chars().take(60).collect()))?;
            let bad = || SdpError::Line(line.chars().take(60).collect());
            match kind {
                "v" => {
                    if value.trim() != "0" {
                        return Err(bad());
                    }
                    saw_version = true;
                }
                "c" => {
                    let addr = parse_connection(value).ok_or_else(bad)?;
                    match sd.media.last_mut() {
                        Some(m) => m.connection = Some(addr),
                        None => sd.connection = Some(addr),
                    }
                }
                "m" => {
                    let mut words = value.split_whitespace();
                    let kind = words.next().ok_or_else(bad)?.to_owned();
                    let port = words.next().ok_or_else(bad)?;
                    // `port/count` (RFC 4566 §5.14) — only the base port matters here.
                    let port = port.split('/').next().and_then(|p| p.parse::<u16>().ok()).ok_or_else(bad)?;
                    let proto = words.next().ok_or_else(bad)?.to_owned();
                    let formats = words.map(str::to_owned).collect();
                    sd.media.push(MediaDescription {
                        kind,
                        port,
                        proto,
                        formats,
                        connection: None,
                        rtpmaps: Vec::new(),
                        direction: None,
                    });
                }
                "a" => {
                    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
                    let direction = match name {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    match (direction, sd.media.last_mut()) {
                        (Some(d), Some(m)) => m.direction = Some(d),
                        (Some(d), None) => sd.direction = Some(d),
                        (None, Some(m)) if name == "rtpmap" => {
                            if let Some(map) = parse_rtpmap(arg) {
                                m.rtpmaps.push(map);
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::NoVersion);
        }
        Ok(sd)
    }
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut words = value.split_whitespace();
    if words.next()? != "IN" {
        return None;
    }
    let family = words.next()?;
    // Multicast TTL suffix (`/127`) is irrelevant for unicast telephony.
    let addr = words.next()?.split('/').next()?;
    match family {
        "IP4" => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "IP6" => addr.parse().ok().map(IpAddr::V6),
        _ => None,
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.trim().split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_owned();
    let clock_rate = parts.next()?.parse().ok()?;
    Some(RtpMap {
        payload_type: pt.parse().ok()?,
        encoding,
        clock_rate,
    })
}

/// What the offer/answer exchange settled for the call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The G.711 law the call's audio is handled in (the wire codec, or for an
    /// Opus call the law used inside precall: Opus is transcoded at the RTP edge).
    pub codec: G711,
    /// The RTP payload is Opus (48 kHz RTP clock), not `codec`.
    pub opus: bool,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Where the SDP says to send RTP (until symmetric RTP learns better).
    pub remote: SocketAddr,
    /// Our direction: whether we may send (`sends()`) to the caller.
    pub direction: Direction,
}

/// Our side of the session: address, RTP port, and the `o=` line's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub addr: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub version: u64,
}

/// Payload type we offer for telephone-event when we make the offer.
pub const OFFER_TELEPHONE_EVENT_PT: u8 = 101;

/// Answers `offer` (RFC 3264 §6): returns the negotiated audio and the answer body.
pub fn answer(offer: &SessionDescription, local: &LocalMedia) -> Result<(Negotiated, String), SdpError> {
    let audio_index = offer
        .media
        .iter()
        .position(|m| m.kind == "audio" && m.port != 0 && m.proto.starts_with("RTP/AVP"));
    let Some(audio_index) = audio_index else {
        // Tell an SBC why: audio over a secure profile only is a transport
        // mismatch it can fix by re-offering plain RTP.
        let secure = offer.media.iter().find(|m| m.kind == "audio" && m.port != 0);
        return Err(match secure {
            Some(m) => SdpError::NoPlainRtp(m.proto.chars().take(32).collect()),
            None => SdpError::NoAudio,
        });
    };
    let audio = &offer.media[audio_index];
    let (codec, payload_type, opus) = choose_codec(audio).ok_or_else(|| SdpError::NoCommonCodec(describe_formats(audio)))?;
    let event_rate = if opus { 48000 } else { 8000 };
    let telephone_event = audio
        .rtpmaps
        .iter()
        .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == event_rate)
        .or_else(|| {
            audio
                .rtpmaps
                .iter()
                .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000)
        })
        .map(|m| m.payload_type);
    let event_rate = audio
        .rtpmaps
        .iter()
        .find(|m| Some(m.payload_type) == telephone_event)
        .map_or(8000, |m| m.clock_rate);
    let conn = audio.connection.or(offer.connection).ok_or(SdpError::NoConnection)?;
    let offered = audio.direction.or(offer.direction).unwrap_or(Direction::SendRecv);
    // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
    let mut direction = offered.reverse();
    if conn.is_unspecified() && direction.sends() {
        direction = if direction == Direction::SendRecv {
            Direction::RecvOnly
        } else {
            Direction::Inactive
        };
    }
    let negotiated = Negotiated {
        codec,
        opus,
        payload_type,
        telephone_event,
        remote: SocketAddr::new(conn, audio.port),
        direction,
    };
    let mut body = session_header(local);
    for (i, m) in offer.media.iter().enumerate() {
        if i == audio_index {
            let wire = if opus { Wire::Opus } else { Wire::G711(codec) };
            write_audio(
                &mut body,
                local.port,
                payload_type,
                wire,
                telephone_event.map(|te| (te, event_rate)),
                direction,
            );
        } else {
            // Refuse every other stream, keeping the offer's m-line order (§6).
            let fmt = m.formats.first().map_or("0", String::as_str);
            let _ = write!(body, "m={} 0 {} {}\r\n", m.kind, m.proto, fmt);
        }
    }
    Ok((negotiated, body))
}

/// Our offer, for an INVITE that arrived without one (delayed offer).
pub fn offer(local: &LocalMedia) -> String {
    let mut body = session_header(local);
    let _ = write!(
        body,
        "m=audio {} RTP/AVP 0 8 {te}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        local.port,
        te = OFFER_TELEPHONE_EVENT_PT
    );
    body
}

/// Our offer in the 200 to a re-INVITE without SDP (RFC 3261 §14.2): the
/// session as it stands, one codec on its payload type plus telephone-event,
/// sendrecv. Offering everything again would let the answer move a bridged
/// call to another codec mid-sentence; this offer can only be confirmed.
pub fn reoffer(local: &LocalMedia, current: &Negotiated) -> String {
    let mut body = session_header(local);
    let wire = if current.opus { Wire::Opus } else { Wire::G711(current.codec) };
    let rate = if current.opus { 48000 } else { 8000 };
    let te = current.telephone_event.map(|pt| (pt, rate));
    write_audio(&mut body, local.port, current.payload_type, wire, te, Direction::SendRecv);
    body
}

/// Reads the answer to our offer (the ACK body of a delayed-offer call).
pub fn accept_answer(answer: &SessionDescription) -> Result<Negotiated, SdpError> {
    let audio = answer
        .media
        .iter()
        .find(|m| m.kind == "audio" && m.port != 0)
        .ok_or(SdpError::NoAudio)?;
    let (codec, payload_type, opus) = choose_codec(audio).ok_or_else(|| SdpError::NoCommonCodec(describe_formats(audio)))?;
    let telephone_event = audio
        .rtpmaps
        .iter()
        .find(|m| m.encoding.eq_ignore_ascii_case("telephone-event"))
        .map(|m| m.payload_type);
    let conn = audio.connection.or(answer.connection).ok_or(SdpError::NoConnection)?;
    let theirs = audio.direction.or(answer.direction).unwrap_or(Direction::SendRecv);
    Ok(Negotiated {
        codec,
        opus,
        payload_type,
        telephone_event,
        remote: SocketAddr::new(conn, audio.port),
        direction: theirs.reverse(),
    })
}

/// The codec for a media line: the first G.711 format in the offer's order
/// (precall's pipeline is 8 kHz, so G.711 costs nothing to carry), else Opus
/// when built with the `opus` feature. Returns (internal law, payload type, opus).
fn choose_codec(m: &MediaDescription) -> Option<(G711, u8, bool)> {
    let g711 = m.formats.iter().filter_map(|f| f.parse::<u8>().ok()).find_map(|pt| {
        let codec = match m.rtpmaps.iter().find(|r| r.payload_type == pt) {
            Some(r) if r.clock_rate == 8000 && r.encoding.eq_ignore_ascii_case("PCMU") => Some(G711::Ulaw),
            Some(r) if r.clock_rate == 8000 && r.encoding.eq_ignore_ascii_case("PCMA") => Some(G711::Alaw),
            Some(_) => None,
            None if pt == 0 => Some(G711::Ulaw),
            None if pt == 8 => Some(G711::Alaw),
            None => None,
        };
        codec.map(|c| (c, pt, false))
    });
    if g711.is_some() || !cfg!(feature = "opus") {
        return g711;
    }
    m.formats.iter().filter_map(|f| f.parse::<u8>().ok()).find_map(|pt| {
        m.rtpmaps
            .iter()
            .find(|r| r.payload_type == pt && r.clock_rate == 48000 && r.encoding.eq_ignore_ascii_case("opus"))
            .map(|_| (G711::Ulaw, pt, true))
    })
}

/// What goes on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire {
    G711(G711),
    Opus,
}

fn describe_formats(m: &MediaDescription) -> String {
    let names: Vec<String> = m
        .formats
        .iter()
        .map(|f| match m.rtpmaps.iter().find(|r| r.payload_type.to_string() == *f) {
            Some(r) => format!("{}/{}", r.encoding, r.clock_rate),
            None => format!("pt {f}"),
        })
        .collect();
    names.join(", ")
}

fn session_header(local: &LocalMedia) -> String {
    let family = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    let mut body = String::with_capacity(320);
    let _ = write!(
        body,
        "v=0\r\no=precall {} {} IN {family} {addr}\r\ns=precall\r\nc=IN {family} {addr}\r\nt=0 0\r\n",
        local.session_id,
        local.version,
        addr = local.addr
    );
    body
}

fn write_audio(body: &mut String, port: u16, pt: u8, wire: Wire, te: Option<(u8, u32)>, direction: Direction) {
    let _ = write!(body, "m=audio {port} RTP/AVP {pt}");
    if let Some((te, _)) = te {
        let _ = write!(body, " {te}");
    }
    match wire {
        Wire::G711(G711::Ulaw) => {
            let _ = write!(body, "\r\na=rtpmap:{pt} PCMU/8000\r\n");
        }
        Wire::G711(G711::Alaw) => {
            let _ = write!(body, "\r\na=rtpmap:{pt} PCMA/8000\r\n");
        }
        Wire::Opus => {
            // RFC 7587: always "/2" in rtpmap; we send mono.
            let _ = write!(
                body,
                "\r\na=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1; stereo=0; sprop-stereo=0\r\n"
            );
        }
    }
    if let Some((te, rate)) = te {
        let _ = write!(body, "a=rtpmap:{te} telephone-event/{rate}\r\na=fmtp:{te} 0-16\r\n");
    }
    let _ = write!(body, "a=ptime:20\r\na={}\r\n", direction.attribute());
}

/// The SDP offer in an INVITE: the body, or the `application/sdp` part of a
/// `multipart/mixed` body. `None` for a delayed offer.
pub fn offer_in(req: &Request) -> Result<Option<Bytes>, Rejection> {
    if req.body.is_empty() {
        return Ok(None);
    }
    let ct = req.headers.get("Content-Type").unwrap_or("application/sdp");
    let media_type = ct.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("multipart/mixed") {
        return Ok(Some(req.body.clone()));
    }
    let boundary = ct
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| Rejection::new(400, "Bad Request: multipart body without a boundary"))?;
    let text = String::from_utf8_lossy(&req.body);
    let delimiter = format!("--{boundary}");
    for part in text.split(delimiter.as_str()).skip(1) {
        let part = part.trim_start_matches("\r\n");
        let Some((head, body)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let is_sdp = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case("content-type") && v.trim().to_ascii_lowercase().starts_with("application/sdp")
            })
        });
        if is_sdp {
            let body = body.strip_suffix("\r\n").unwrap_or(body);
            return Ok(Some(Bytes::from(body.to_owned())));
        }
    }
    Err(Rejection::new(415, "Unsupported Media Type: multipart body has no application/sdp part").with_header("Accept", "application/sdp"))
}

#[cfg(test)]
mod tests;
