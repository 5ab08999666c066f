//! One call's RTP timeline: the paced sender and the source latch (the
//! receiver's statistics are in [`super::receiver`]).
//!
//! Both are plain state machines on injected time. The sender schedules frame `n`
//! at `start + n·20 ms` (never `sleep(20ms)`, which drifts), so the wall clock,
//! the RTP timestamp and the sequence number advance together for the whole call,
//! across the greeting, hold music and later the agent's audio.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::rtp::{HEADER_LEN, RtpHeader};
// The receiver lives in its own module; re-exported where callers found it.
pub use super::receiver::{RtpReceiver, RtpStats};

/// Packetisation interval.
pub const FRAME: Duration = Duration::from_millis(20);
/// RTP timestamp units per frame at 8 kHz.
pub const TIMESTAMP_STEP: u32 = 160;
/// If the task falls this many frames behind (a stalled runtime), the backlog is
/// skipped instead of sent in a burst the caller's jitter buffer would drop anyway.
pub const MAX_BURST: u64 = 5;
/// Largest packet we build: header plus one 20 ms G.711 frame with room to
/// spare, plus the largest SRTP authentication tag.
pub const MAX_PACKET: usize = HEADER_LEN + 320 + crate::media::srtp::MAX_OVERHEAD;

/// The sending half of a call's RTP session.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    payload_type: u8,
    first_sequence: u16,
    first_timestamp: u32,
    start: Instant,
    /// Index of the next frame on the timeline.
    next_frame: u64,
    /// Packets actually sent (skipped frames are not).
    sent: u64,
    marker: bool,
    /// RTP clock ticks per 20 ms frame: 160 at 8 kHz, 960 for Opus (48 kHz clock).
    timestamp_step: u32,
}

impl RtpSender {
    /// `sequence` and `timestamp` are the random initial values RFC 3550 §5.1 asks for.
    pub fn new(ssrc: u32, payload_type: u8, sequence: u16, timestamp: u32, start: Instant) -> Self {
        RtpSender {
            ssrc,
            payload_type,
            first_sequence: sequence,
            first_timestamp: timestamp,
            start,
            next_frame: 0,
            sent: 0,
            marker: true,
            timestamp_step: TIMESTAMP_STEP,
        }
    }

    /// The payload's RTP clock rate (8000 for G.711, 48000 for Opus).
    pub fn set_clock_rate(&mut self, rate: u32) {
        self.timestamp_step = rate / 50;
    }

    /// When the next frame is due.
    #[inline]
    pub fn next_deadline(&self) -> Instant {
        let frames = u32::try_from(self.next_frame).unwrap_or(u32::MAX);
        crate::deadline::after(self.start, FRAME.saturating_mul(frames))
    }

    /// A new talkspurt is ready now (the agent starts speaking between frames):
    /// the next frame becomes due at once and the schedule continues 20 ms
    /// apart from here (RFC 3551 §4.1: marker set; the timestamp is the next
    /// frame's, one frame on from the last packet sent, which left at most a
    /// frame time ago; the sequence number continues).
    pub fn start_talkspurt(&mut self, now: Instant) {
        self.marker = true;
        let due = self.next_deadline();
        if let Some(early) = due.checked_duration_since(now)
            && let Some(start) = self.start.checked_sub(early)
        {
            self.start = start;
        }
    }

    /// The timeline index of the next frame (for the prompt player).
    pub fn next_frame(&self) -> u64 {
        self.next_frame
    }

    pub fn packets_sent(&self) -> u64 {
        self.sent
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// How many frames are due at `now`. Skips (advancing the timeline without
    /// sending) anything beyond [`MAX_BURST`], returning the number skipped too.
    pub fn due(&mut self, now: Instant) -> (u64, u64) {
        if now < self.start {
            return (0, 0);
        }
        let elapsed = now.duration_since(self.start).as_micros() as u64;
        let due_total = elapsed / FRAME.as_micros() as u64 + 1;
        let due = due_total.saturating_sub(self.next_frame);
        if due > MAX_BURST {
            let skip = due - MAX_BURST;
            self.next_frame += skip;
            // A gap in the timeline starts a new talkspurt (RFC 3551 §4.1).
            self.marker = true;
            (MAX_BURST, skip)
        } else {
            (due, 0)
        }
    }

    /// Builds the packet for the next frame into `buf` and advances the timeline.
    /// Returns the packet length (0 if `buf` is too small, which is a bug upstream).
    #[inline]
    pub fn write_next(&mut self, payload: &[u8], buf: &mut [u8]) -> usize {
        let len = HEADER_LEN + payload.len();
        if buf.len() < len {
            return 0;
        }
        let header = RtpHeader {
            marker: self.marker,
            payload_type: self.payload_type,
            sequence: self.first_sequence.wrapping_add(self.sent as u16),
            timestamp: self
                .first_timestamp
                .wrapping_add((self.next_frame as u32).wrapping_mul(self.timestamp_step)),
            ssrc: self.ssrc,
        };
        let _ = header.write(buf);
        buf[HEADER_LEN..len].copy_from_slice(payload);
        self.marker = false;
        self.next_frame += 1;
        self.sent += 1;
        len
    }

    /// A re-INVITE may move the call to another codec; the timeline continues.
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type;
    }

    /// Advances the timeline by one frame without sending (while on hold).
    pub fn skip_one(&mut self) {
        self.next_frame += 1;
        self.marker = true;
    }
}

/// Symmetric RTP (RFC 4961, "comedia") without RTP bleed (the class of
/// Asterisk CVE-2017-14099). The caller's media address is learned from its
/// packets only while learning is open: from the start of media until a source
/// is latched, and again when a re-INVITE/UPDATE moves the media. Once latched,
/// traffic alone never moves it; a silent or muted caller cannot be replaced by
/// whoever sends next.
///
/// - Packets from the exact SDP address are always the caller's, and latch at once.
/// - Another source latches only with [`LATCH_STREAK`] packets of a negotiated
///   payload type from one SSRC with consecutive sequence numbers, and only
///   where the network can explain the difference: from any address when the
///   SDP names one a NAT hides (private, CGNAT, link-local, unspecified); when
///   it names a routable one, from its own IP on another port (a NAT that
///   remapped the port), or from another IP within [`LEARN_WINDOW`] of media
///   starting (a multi-homed phone, an ALG); never when it names loopback.
/// - `strict` (`rtp.strict_source`) accepts the SDP address and nothing else.
///
/// Anything else arriving on the port is ignored (and does not keep the call alive).
#[derive(Debug, Clone, Default)]
pub struct SourceLatch {
    expected: Option<SocketAddr>,
    strict: bool,
    latched: Option<SocketAddr>,
    /// Learning is closed once a source is latched.
    closed: bool,
    /// When learning (re)opened: other IPs than a routable SDP address are
    /// learned only within [`LEARN_WINDOW`] of it.
    opened: Option<Instant>,
    candidate: Option<(SocketAddr, u32, u16)>,
    streak: u8,
}

/// How long after media starts (or moves) a source on another IP than a
/// routable SDP address may be learned (a multi-homed phone that advertises one
/// interface and sends from another, a SIP ALG that rewrote the IP).
pub const LEARN_WINDOW: Duration = Duration::from_secs(5);

/// Packets in a row needed to latch a source other than the SDP address.
pub const LATCH_STREAK: u8 = 3;

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latch {
    /// From the caller: count it; send our media to `send_to`.
    Accept { send_to: SocketAddr },
    /// From someone else, or not RTP we negotiated: drop it.
    Ignore,
}

impl SourceLatch {
    /// Learning opens with `expected`, the address the SDP names (`None` until a
    /// delayed offer's answer arrives).
    pub fn new(expected: Option<SocketAddr>, strict: bool, now: Instant) -> Self {
        SourceLatch {
            expected,
            strict,
            opened: Some(now),
            ..SourceLatch::default()
        }
    }

    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// The SDP now names `expected` (a delayed offer's answer, or a re-INVITE or
    /// UPDATE that moved the media): forget the learned source and learn again.
    pub fn reset(&mut self, expected: SocketAddr, now: Instant) {
        *self = SourceLatch::new(Some(expected), self.strict, now);
    }

    pub fn on_packet(&mut self, now: Instant, from: SocketAddr, header: &RtpHeader, payload_ok: bool) -> Latch {
        if self.latched == Some(from) {
            return Latch::Accept { send_to: from };
        }
        if !payload_ok {
            return Latch::Ignore;
        }
        if self.expected == Some(from) {
            // The negotiated address itself: where we send anyway.
            return self.latch(from);
        }
        if self.strict || self.closed {
            return Latch::Ignore;
        }
        let Some(expected) = self.expected else {
            return Latch::Ignore;
        };
        let in_window = self.opened.is_some_and(|t| now.saturating_duration_since(t) < LEARN_WINDOW);
        if !learnable(expected.ip(), from.ip(), in_window) {
            return Latch::Ignore;
        }
        let continues = matches!(self.candidate, Some((addr, ssrc, seq)) if addr == from && ssrc == header.ssrc && header.sequence == seq.wrapping_add(1));
        self.streak = if continues { self.streak.saturating_add(1) } else { 1 };
        self.candidate = Some((from, header.ssrc, header.sequence));
        if self.streak >= LATCH_STREAK {
            return self.latch(from);
        }
        Latch::Ignore
    }

    fn latch(&mut self, from: SocketAddr) -> Latch {
        self.latched = Some(from);
        self.closed = true;
        self.candidate = None;
        Latch::Accept { send_to: from }
    }
}

/// Whether packets from `from` may be the caller whose SDP names `expected`.
fn learnable(expected: IpAddr, from: IpAddr, in_window: bool) -> bool {
    if expected.is_loopback() {
        false
    } else if behind_nat(expected) {
        true
    } else {
        from == expected || in_window
    }
}

/// Addresses a caller behind NAT puts in its SDP: its packets come from elsewhere.
fn behind_nat(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || v4.is_unspecified() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            v6.is_unspecified() || (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::RtpPacket;

    #[test]
    fn sender_follows_the_media_clock() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(0xABCD, 0, 65534, u32::MAX - 100, t0);
        let mut buf = [0u8; MAX_PACKET];
        assert_eq!(s.due(t0), (1, 0), "the first frame is due at the start");
        let mut packets = Vec::new();
        for n in 0..200u64 {
            // Wake up a little late each time: the schedule must not drift.
            let now = t0 + FRAME * n as u32 + Duration::from_micros(700);
            let (due, skipped) = s.due(now);
            assert_eq!((due, skipped), (1, 0), "frame {n}");
            assert_eq!(s.next_deadline(), t0 + FRAME * n as u32);
            let len = s.write_next(&[0xFF; 160], &mut buf);
            packets.push(RtpPacket::parse(&buf[..len]).unwrap().header);
        }
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|h| !h.marker));
        for pair in packets.windows(2) {
            assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
            assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(160));
        }
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(4));
    }

    #[test]
    fn stalls_skip_the_backlog_and_mark_a_new_talkspurt() {
        let t0 = Instant::now();
        let mut s = RtpSender::new(1, 8, 0, 0, t0);
        let mut buf = [0u8; MAX_PACKET];
        s.due(t0);
        s.write_next(&[0xD5; 160], &mut buf);
        // One second stalled: 50 frames due, only MAX_BURST sent.
        let (due, skipped) = s.due(t0 + Duration::from_secs(1));
        assert_eq!(due, MAX_BURST);
        assert_eq!(skipped, 51 - 1 - MAX_BURST);
        let len = s.write_next(&[0xD5; 160], &mut buf);
        let h = RtpPacket::parse(&buf[..len]).unwrap().header;
        assert!(h.marker);
        assert_eq!(h.sequence, 1, "sequence counts packets sent, without gaps");
        assert_eq!(h.timestamp, (1 + skipped as u32) * 160, "timestamp follows the clock");
    }

    fn h(seq: u16, ssrc: u32) -> RtpHeader {
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: 0,
            ssrc,
        }
    }

    #[test]
    fn latch_needs_a_consecutive_stream_and_resists_hijack() {
        let t0 = Instant::now();
        let natted: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        let caller: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let attacker: SocketAddr = "203.0.113.66:9999".parse().unwrap();
        let mut l = SourceLatch::new(Some(natted), false, t0);
        assert_eq!(l.on_packet(t0, attacker, &h(9, 1), false), Latch::Ignore, "wrong payload type");
        assert_eq!(
            l.on_packet(t0, caller, &h(100, 5), true),
            Latch::Ignore,
            "one packet is not a stream"
        );
        assert_eq!(l.on_packet(t0, attacker, &h(7, 1), true), Latch::Ignore);
        assert_eq!(
            l.on_packet(t0, caller, &h(101, 5), true),
            Latch::Ignore,
            "interleaving broke the streak"
        );
        assert_eq!(l.on_packet(t0, caller, &h(102, 5), true), Latch::Ignore);
        assert_eq!(l.on_packet(t0, caller, &h(103, 5), true), Latch::Accept { send_to: caller });
        assert_eq!(l.latched(), Some(caller));
        // Nobody takes over, while the caller talks or after it falls silent.
        for seq in 0..50 {
            assert_eq!(l.on_packet(t0, attacker, &h(seq, 1), true), Latch::Ignore);
        }
        assert_eq!(l.on_packet(t0, caller, &h(104, 5), true), Latch::Accept { send_to: caller });
        // A re-INVITE that moves the media opens learning again.
        let moved: SocketAddr = "198.51.100.7:4100".parse().unwrap();
        l.reset(moved, t0);
        assert_eq!(l.on_packet(t0, moved, &h(200, 5), true), Latch::Accept { send_to: moved });
    }

    #[test]
    fn a_silent_caller_with_a_routable_address_cannot_be_replaced() {
        let t0 = Instant::now();
        let after_window = t0 + LEARN_WINDOW;
        let caller: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let attacker: SocketAddr = "203.0.113.66:9999".parse().unwrap();
        let mut l = SourceLatch::new(Some(caller), false, t0);
        // Once the learning window is over, another IP is never learned.
        for seq in 0..100 {
            assert_eq!(l.on_packet(after_window, attacker, &h(seq, 1), true), Latch::Ignore);
        }
        assert_eq!(l.latched(), None);
        // The caller's own IP from another port (a NAT that remapped the port)
        // latches with a stream…
        let other_port: SocketAddr = "198.51.100.7:4002".parse().unwrap();
        let got: Vec<_> = (0..3).map(|s| l.on_packet(after_window, other_port, &h(s, 9), true)).collect();
        assert_eq!(got[2], Latch::Accept { send_to: other_port });
        // …and the SDP address itself is still preferred.
        assert_eq!(
            l.on_packet(after_window, caller, &h(50, 9), true),
            Latch::Accept { send_to: caller }
        );
        assert_eq!(l.latched(), Some(caller));
    }

    #[test]
    fn a_multihomed_caller_is_learned_at_the_start_of_media() {
        let t0 = Instant::now();
        // It advertises one interface and sends from another (baresip on a
        // host whose eth0 is 192.0.2.2, calling over loopback).
        let advertised: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let actual: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut l = SourceLatch::new(Some(advertised), false, t0);
        let got: Vec<_> = (0..3).map(|s| l.on_packet(t0 + FRAME * s, actual, &h(s as u16, 5), true)).collect();
        assert_eq!(got[2], Latch::Accept { send_to: actual });
        // Latched: nobody replaces it afterwards.
        let attacker: SocketAddr = "203.0.113.66:9999".parse().unwrap();
        for seq in 0..20 {
            assert_eq!(l.on_packet(t0 + FRAME * 10, attacker, &h(seq, 1), true), Latch::Ignore);
        }
    }

    #[test]
    fn a_loopback_caller_is_only_its_sdp_address() {
        let t0 = Instant::now();
        let caller: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let same_host: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let mut l = SourceLatch::new(Some(caller), false, t0);
        for seq in 0..20 {
            assert_eq!(l.on_packet(t0, same_host, &h(seq, 1), true), Latch::Ignore);
        }
        assert_eq!(l.on_packet(t0, caller, &h(1, 2), true), Latch::Accept { send_to: caller });
    }

    #[test]
    fn strict_source_accepts_only_the_sdp_address() {
        let t0 = Instant::now();
        let caller: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        let other: SocketAddr = "192.168.1.20:4002".parse().unwrap();
        let mut l = SourceLatch::new(Some(caller), true, t0);
        for seq in 0..10 {
            assert_eq!(l.on_packet(t0, other, &h(seq, 1), true), Latch::Ignore);
        }
        assert_eq!(l.on_packet(t0, caller, &h(1, 1), true), Latch::Accept { send_to: caller });
    }
}
