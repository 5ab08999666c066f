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

use crate::media::dtls::{self, DtlsParams};
use crate::media::g711::G711;
use crate::media::srtp::{Crypto, KeyMaterial, MAX_KEY, Policy, SrtpParams, Suite};
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
    /// `rtp.srtp = "required"` and the offer is plain RTP.
    #[error("SRTP is required here; audio is offered over {0}")]
    SrtpRequired(String),
    /// SDES keys arrived where anyone on the path could read them.
    #[error("SDES keys (a=crypto) must be sent over SIP over TLS, not {0}")]
    InsecureSdes(&'static str),
    /// SRTP offered, but no `a=crypto` line precall can use.
    #[error("no usable a=crypto line: precall speaks AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32 and AEAD_AES_128_GCM")]
    NoCommonCrypto,
    /// DTLS-SRTP offered without a SHA-256 `a=fingerprint`.
    #[error("DTLS-SRTP needs an a=fingerprint:sha-256 line")]
    NoFingerprint,
}

impl SdpError {
    /// The SIP status that reports this error: a well-formed offer we cannot
    /// accept is `488` (RFC 3261 §21.4.26), which SBCs answer by retrying with
    /// plain RTP or another codec; SDP that does not parse is `400`.
    pub fn status(&self) -> u16 {
        match self {
            SdpError::NoAudio
            | SdpError::NoPlainRtp(_)
            | SdpError::NoCommonCodec(_)
            | SdpError::SrtpRequired(_)
            | SdpError::InsecureSdes(_)
            | SdpError::NoCommonCrypto
            | SdpError::NoFingerprint => 488,
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
            SdpError::SrtpRequired(proto) => vec![(
                302,
                format!("Incompatible transport protocol: {proto}; SRTP is required, offer RTP/SAVP with a=crypto over TLS"),
            )],
            SdpError::InsecureSdes(transport) => vec![(
                302,
                format!("Incompatible transport protocol: SDES keys arrived over {transport}; call over SIP TLS"),
            )],
            SdpError::NoFingerprint => vec![(
                302,
                "Incompatible transport protocol: DTLS-SRTP without a=fingerprint:sha-256".into(),
            )],
            SdpError::NoCommonCrypto => vec![(
                302,
                "Incompatible transport protocol: no usable a=crypto; offer AES_CM_128_HMAC_SHA1_80".into(),
            )],
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
    /// `a=crypto` values (RFC 4568), first [`MAX_CRYPTO`] kept.
    pub crypto: Vec<String>,
    /// `a=fingerprint` and `a=setup` (RFC 8122, RFC 4145), for DTLS-SRTP.
    pub fingerprint: Option<String>,
    pub setup: Option<String>,
}

/// `a=crypto` lines kept per stream: an offer lists a few suites; a peer
/// sending hundreds gets the first ones considered.
pub const MAX_CRYPTO: usize = 16;

impl MediaDescription {
    /// RTP/SAVP or RTP/SAVPF (RFC 3711, RFC 5124): SRTP keyed by SDES.
    pub fn is_sdes_srtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/SAVP") || self.proto.eq_ignore_ascii_case("RTP/SAVPF")
    }

    /// UDP/TLS/RTP/SAVP(F) (RFC 5764): SRTP keyed by a DTLS handshake.
    pub fn is_dtls_srtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("UDP/TLS/RTP/SAVP") || self.proto.eq_ignore_ascii_case("UDP/TLS/RTP/SAVPF")
    }

    /// RTP/AVP or RTP/AVPF: plain RTP.
    pub fn is_plain_rtp(&self) -> bool {
        self.proto.eq_ignore_ascii_case("RTP/AVP") || self.proto.eq_ignore_ascii_case("RTP/AVPF")
    }

    /// The first `a=crypto` line precall can use, in the offer's order (the
    /// offerer's preference, RFC 4568 §7.1.1).
    pub fn usable_crypto(&self) -> Option<Crypto> {
        self.crypto.iter().find_map(|c| Crypto::parse(c).ok())
    }
}

/// What the call's media security may be: the policy, whether SDES keys can
/// be accepted (the signalling is TLS, or insecure SDES is allowed), and the
/// random material our key is cut from (drawn at the IO edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSecurity {
    pub policy: Policy,
    /// `Some(transport)` when keys would cross the network in clear: the
    /// transport's name for the refusal.
    pub insecure_signalling: Option<&'static str>,
    pub key: [u8; MAX_KEY],
    /// Our DTLS certificate's SHA-256 fingerprint; `None`: no DTLS-SRTP.
    pub dtls_fingerprint: Option<[u8; 32]>,
}

impl Default for MediaSecurity {
    fn default() -> Self {
        MediaSecurity {
            policy: Policy::Off,
            insecure_signalling: None,
            key: [0; MAX_KEY],
            dtls_fingerprint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
    /// Session-level `a=fingerprint`/`a=setup`, for streams that name none.
    pub fingerprint: Option<String>,
    pub setup: Option<String>,
}

impl SessionDescription {
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let mut sd = SessionDescription {
            connection: None,
            direction: None,
            media: Vec::new(),
            fingerprint: None,
            setup: None,
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
                        crypto: Vec::new(),
                        fingerprint: None,
                        setup: None,
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
                        (None, Some(m)) if name == "crypto" && m.crypto.len() < MAX_CRYPTO => {
                            m.crypto.push(arg.chars().take(200).collect());
                        }
                        (None, m) if name == "fingerprint" || name == "setup" => {
                            let value = Some(arg.chars().take(200).collect());
                            match (name, m) {
                                ("fingerprint", Some(m)) => m.fingerprint = value,
                                ("fingerprint", None) => sd.fingerprint = value,
                                (_, Some(m)) => m.setup = value,
                                (_, None) => sd.setup = value,
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
    /// SRTP keys, when the stream is RTP/SAVP(F).
    pub srtp: Option<SrtpParams>,
    /// The DTLS handshake to run, when the stream is UDP/TLS/RTP/SAVP(F): the
    /// SRTP keys come from it.
    pub dtls: Option<DtlsParams>,
}

/// Our side of the session: address, RTP port, and the `o=` line's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    pub addr: IpAddr,
    pub port: u16,
    pub session_id: u64,
    pub version: u64,
    pub security: MediaSecurity,
}

/// Payload type we offer for telephone-event when we make the offer.
pub const OFFER_TELEPHONE_EVENT_PT: u8 = 101;

/// Answers `offer` (RFC 3264 §6): returns the negotiated audio and the answer body.
pub fn answer(offer: &SessionDescription, local: &LocalMedia) -> Result<(Negotiated, String), SdpError> {
    let Chosen {
        index: audio_index,
        srtp,
        dtls,
    } = choose_stream(offer, &local.security)?;
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
        srtp,
        dtls,
    };
    let mut body = session_header(local);
    for (i, m) in offer.media.iter().enumerate() {
        if i == audio_index {
            let wire = if opus { Wire::Opus } else { Wire::G711(codec) };
            let stream = Stream {
                port: local.port,
                proto: &audio.proto,
                pt: payload_type,
                wire,
                te: telephone_event.map(|te| (te, event_rate)),
                direction,
            };
            write_audio(&mut body, &stream, srtp.map(local_crypto).as_slice());
            if let (Some(d), Some(ours)) = (dtls, local.security.dtls_fingerprint) {
                // RFC 5763 §5: we answer actpass as the passive side, so the
                // caller (who may be behind NAT) opens the handshake.
                let setup = if d.client { "active" } else { "passive" };
                let _ = write!(
                    body,
                    "a=fingerprint:sha-256 {}\r\na=setup:{setup}\r\n",
                    dtls::format_fingerprint(&ours)
                );
            }
        } else {
            // Refuse every other stream, keeping the offer's m-line order (§6).
            let fmt = m.formats.first().map_or("0", String::as_str);
            let _ = write!(body, "m={} 0 {} {}\r\n", m.kind, m.proto, fmt);
        }
    }
    Ok((negotiated, body))
}

/// The stream an answer takes, and how it is secured.
struct Chosen {
    index: usize,
    srtp: Option<SrtpParams>,
    dtls: Option<DtlsParams>,
}

/// Picks the audio stream to answer under the SRTP policy. Where an offer
/// carries several (best-effort SRTP: a secure stream and a plain one),
/// `optional` takes SDES when its keys are usable, then DTLS-SRTP, then plain
/// RTP; `required` never takes plain RTP.
fn choose_stream(offer: &SessionDescription, security: &MediaSecurity) -> Result<Chosen, SdpError> {
    let live = |m: &MediaDescription| m.kind == "audio" && m.port != 0;
    let find = |f: fn(&MediaDescription) -> bool| offer.media.iter().position(|m| live(m) && f(m));
    let plain = find(MediaDescription::is_plain_rtp).map(|index| Chosen {
        index,
        srtp: None,
        dtls: None,
    });
    let sdes = find(MediaDescription::is_sdes_srtp).map(|i| sdes_keys(offer, i, security));
    let dtls = find(MediaDescription::is_dtls_srtp).map(|i| dtls_params(offer, i, security));
    let unusable = || {
        // Tell an SBC why: a transport mismatch it can fix by re-offering.
        match offer.media.iter().find(|m| live(m)) {
            Some(m) => SdpError::NoPlainRtp(m.proto.chars().take(32).collect()),
            None => SdpError::NoAudio,
        }
    };
    match security.policy {
        Policy::Off => plain.ok_or_else(unusable),
        Policy::Optional | Policy::Required => {
            let mut first_error = None;
            for secure in [sdes, dtls].into_iter().flatten() {
                match secure {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (security.policy, plain, first_error) {
                (Policy::Optional, Some(p), _) => Ok(p),
                (_, _, Some(e)) => Err(e),
                (Policy::Required, Some(p), None) => Err(SdpError::SrtpRequired(offer.media[p.index].proto.chars().take(32).collect())),
                _ => Err(unusable()),
            }
        }
    }
}

/// An SDES stream: its first usable `a=crypto`, if keys may travel this way.
fn sdes_keys(offer: &SessionDescription, i: usize, security: &MediaSecurity) -> Result<Chosen, SdpError> {
    if let Some(transport) = security.insecure_signalling {
        return Err(SdpError::InsecureSdes(transport));
    }
    let theirs = offer.media[i].usable_crypto().ok_or(SdpError::NoCommonCrypto)?;
    let srtp = SrtpParams {
        tag: theirs.tag,
        suite: theirs.suite,
        local: KeyMaterial::from_random(theirs.suite, &security.key),
        remote: theirs.key,
    };
    Ok(Chosen {
        index: i,
        srtp: Some(srtp),
        dtls: None,
    })
}

/// A DTLS-SRTP stream: the caller's SHA-256 fingerprint and our role.
fn dtls_params(offer: &SessionDescription, i: usize, security: &MediaSecurity) -> Result<Chosen, SdpError> {
    let m = &offer.media[i];
    if security.dtls_fingerprint.is_none() {
        return Err(SdpError::NoPlainRtp(m.proto.chars().take(32).collect()));
    }
    let fingerprint = m
        .fingerprint
        .as_deref()
        .or(offer.fingerprint.as_deref())
        .and_then(dtls::parse_fingerprint)
        .ok_or(SdpError::NoFingerprint)?;
    let setup = m.setup.as_deref().or(offer.setup.as_deref()).unwrap_or("actpass");
    // Their passive makes us the client; actpass or active makes us the server.
    let client = setup.trim().eq_ignore_ascii_case("passive");
    Ok(Chosen {
        index: i,
        srtp: None,
        dtls: Some(DtlsParams {
            client,
            remote_fingerprint: fingerprint,
        }),
    })
}

/// Our `a=crypto` line for the negotiated keys: the offer's tag and suite,
/// our key (RFC 4568 §7.1.2).
fn local_crypto(p: SrtpParams) -> Crypto {
    Crypto {
        tag: p.tag,
        suite: p.suite,
        key: p.local,
    }
}

/// Our offer, for an INVITE that arrived without one (delayed offer): plain
/// RTP, or under `rtp.srtp = "required"` RTP/SAVP with one `a=crypto` line per
/// suite (tags 1..=3, our preference first).
pub fn offer(local: &LocalMedia) -> String {
    let mut body = session_header(local);
    let required = local.security.policy == Policy::Required;
    let proto = if required { "RTP/SAVP" } else { "RTP/AVP" };
    let _ = write!(
        body,
        "m=audio {} {proto} 0 8 {te}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        local.port,
        te = OFFER_TELEPHONE_EVENT_PT
    );
    if required {
        for c in offered_crypto(&local.security) {
            c.write(&mut body);
        }
    }
    body
}

/// The `a=crypto` lines of our own offer.
fn offered_crypto(security: &MediaSecurity) -> impl Iterator<Item = Crypto> + '_ {
    Suite::ALL.into_iter().zip(1..).map(|(suite, tag)| Crypto {
        tag,
        suite,
        key: KeyMaterial::from_random(suite, &security.key),
    })
}

/// Our offer in the 200 to a re-INVITE without SDP (RFC 3261 §14.2): the
/// session as it stands, one codec on its payload type plus telephone-event,
/// sendrecv, and the same SRTP keys. Offering everything again would let the
/// answer move a bridged call to another codec mid-sentence; this offer can
/// only be confirmed.
pub fn reoffer(local: &LocalMedia, current: &Negotiated) -> String {
    let mut body = session_header(local);
    let wire = if current.opus { Wire::Opus } else { Wire::G711(current.codec) };
    let rate = if current.opus { 48000 } else { 8000 };
    let stream = Stream {
        port: local.port,
        proto: if current.srtp.is_some() { "RTP/SAVP" } else { "RTP/AVP" },
        pt: current.payload_type,
        wire,
        te: current.telephone_event.map(|pt| (pt, rate)),
        direction: Direction::SendRecv,
    };
    write_audio(&mut body, &stream, current.srtp.map(local_crypto).as_slice());
    body
}

/// Reads the answer to our offer: the ACK body of a delayed-offer call
/// (`current` is `None`), or of an offerless re-INVITE (`current` is the
/// session our offer repeated, SRTP keys included).
pub fn accept_answer(answer: &SessionDescription, local: &LocalMedia, current: Option<&Negotiated>) -> Result<Negotiated, SdpError> {
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
    // Where we offered SRTP (a new call under `required`, or a re-offer of an
    // SRTP session), the answer must take one of our suites under its tag.
    let ours: Vec<Crypto> = match current {
        Some(n) => n.srtp.map(local_crypto).into_iter().collect(),
        None if local.security.policy == Policy::Required => offered_crypto(&local.security).collect(),
        None => Vec::new(),
    };
    let srtp = if !ours.is_empty() {
        let chosen = audio.usable_crypto().ok_or(SdpError::NoCommonCrypto)?;
        let ours = ours
            .into_iter()
            .find(|c| c.tag == chosen.tag && c.suite == chosen.suite)
            .ok_or(SdpError::NoCommonCrypto)?;
        Some(SrtpParams {
            tag: chosen.tag,
            suite: chosen.suite,
            local: ours.key,
            remote: chosen.key,
        })
    } else {
        None
    };
    Ok(Negotiated {
        codec,
        opus,
        payload_type,
        telephone_event,
        remote: SocketAddr::new(conn, audio.port),
        direction: theirs.reverse(),
        srtp,
        dtls: None,
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

/// One audio m-line of ours.
struct Stream<'a> {
    port: u16,
    /// The profile, echoed from the offer (RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF).
    proto: &'a str,
    pt: u8,
    wire: Wire,
    te: Option<(u8, u32)>,
    direction: Direction,
}

fn write_audio(body: &mut String, s: &Stream<'_>, crypto: &[Crypto]) {
    let (port, pt) = (s.port, s.pt);
    let _ = write!(body, "m=audio {port} {} {pt}", s.proto);
    if let Some((te, _)) = s.te {
        let _ = write!(body, " {te}");
    }
    match s.wire {
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
    if let Some((te, rate)) = s.te {
        let _ = write!(body, "a=rtpmap:{te} telephone-event/{rate}\r\na=fmtp:{te} 0-16\r\n");
    }
    let _ = write!(body, "a=ptime:20\r\na={}\r\n", s.direction.attribute());
    for c in crypto {
        c.write(body);
    }
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
