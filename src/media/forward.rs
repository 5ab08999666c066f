//! Caller → agent without a playout buffer. The agent's speech recogniser
//! tolerates network jitter, so each caller packet is forwarded the moment it
//! arrives. Only a sequence gap holds packets back, and for at most one frame
//! time: if the missing packet turns up by then, everything goes out in order;
//! if not, the gap is filled (the previous frame once, then silence) and what
//! was held goes out. Nothing already forwarded is ever reordered: a packet
//! that arrives after its turn is dropped and counted.
//!
//! Sans-IO: [`Forwarder::push`] and [`Forwarder::handle_timeout`] hand each
//! frame to a closure, in order; [`Forwarder::poll_timeout`] says when an open
//! gap closes. Storage is fixed (a few held frames), so a peer cannot make it
//! grow and nothing is allocated per packet.

use std::time::{Duration, Instant};

/// The longest payload handled: 60 ms of G.711.
pub const MAX_FRAME: usize = 480;
/// Packets held behind one gap; a packet further ahead ends the wait at once.
const HOLD: usize = 4;
/// How long a gap may hold packets back: one frame time.
pub const GAP_WAIT: Duration = Duration::from_millis(20);
/// A jump this far ahead is a new stream (a resync), not a gap to wait for.
const RESYNC: u16 = 100;

#[derive(Clone, Copy)]
struct Held {
    seq: u16,
    len: usize,
    filled: bool,
    data: [u8; MAX_FRAME],
}

const EMPTY: Held = Held {
    seq: 0,
    len: 0,
    filled: false,
    data: [0; MAX_FRAME],
};

/// Counters for the call's log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForwardStats {
    pub forwarded: u64,
    /// Lost frames filled in when their gap closed.
    pub concealed: u64,
    /// Packets that arrived after their turn (or twice), dropped.
    pub late: u64,
    /// Packets over [`MAX_FRAME`], dropped.
    pub oversize: u64,
}

pub struct Forwarder {
    expected: Option<u16>,
    /// `held[i]` is the packet `expected + i`; `held[0]` is the one missing.
    held: [Held; HOLD + 1],
    gap_until: Option<Instant>,
    /// The last frame forwarded, repeated once for a lost one.
    last: Held,
    repeated: bool,
    silence: [u8; MAX_FRAME],
    stats: ForwardStats,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("expected", &self.expected)
            .field("gap_until", &self.gap_until)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Forwarder {
    /// `silence` is one silent sample in the call's law (0xFF μ-law, 0xD5 A-law).
    pub fn new(silence: u8) -> Self {
        Forwarder {
            expected: None,
            held: [EMPTY; HOLD + 1],
            gap_until: None,
            last: EMPTY,
            repeated: false,
            silence: [silence; MAX_FRAME],
            stats: ForwardStats::default(),
        }
    }

    pub fn stats(&self) -> ForwardStats {
        self.stats
    }

    /// When an open gap stops holding packets back.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gap_until
    }

    /// A caller packet: forwarded now, unless a gap before it is open.
    pub fn push(&mut self, now: Instant, seq: u16, payload: &[u8], mut emit: impl FnMut(&[u8])) {
        if payload.len() > MAX_FRAME {
            self.stats.oversize += 1;
            return;
        }
        let expected = *self.expected.get_or_insert(seq);
        let ahead = seq.wrapping_sub(expected);
        if ahead >= u16::MAX / 2 {
            self.stats.late += 1;
            return;
        }
        if ahead >= RESYNC || usize::from(ahead) > HOLD {
            // Too far ahead to wait for (or a new stream): what was held goes
            // out, and the stream continues from here.
            self.release_all(&mut emit);
            self.expected = Some(seq);
            self.forward(seq, payload, &mut emit);
            return;
        }
        if ahead == 0 {
            self.forward(seq, payload, &mut emit);
            self.release_in_order(&mut emit);
            return;
        }
        let h = &mut self.held[usize::from(ahead)];
        if h.filled {
            self.stats.late += 1; // a duplicate of a held packet
            return;
        }
        *h = Held {
            seq,
            len: payload.len(),
            filled: true,
            data: h.data,
        };
        h.data[..payload.len()].copy_from_slice(payload);
        self.gap_until.get_or_insert(now + GAP_WAIT);
    }

    /// The gap's frame time is over: fill it and send what was held.
    pub fn handle_timeout(&mut self, now: Instant, mut emit: impl FnMut(&[u8])) {
        if self.gap_until.is_some_and(|t| now >= t) {
            self.release_all(&mut emit);
        }
    }

    /// Sends the expected packet and moves the window one on.
    fn forward(&mut self, seq: u16, payload: &[u8], emit: &mut impl FnMut(&[u8])) {
        emit(payload);
        self.stats.forwarded += 1;
        self.last.len = payload.len();
        self.last.data[..payload.len()].copy_from_slice(payload);
        self.repeated = false;
        self.expected = Some(seq.wrapping_add(1));
        self.shift();
    }

    /// Sends held packets that are now next in line; the gap stays open only
    /// while something is still held behind a missing packet.
    fn release_in_order(&mut self, emit: &mut impl FnMut(&[u8])) {
        while self.held[0].filled {
            let h = self.held[0];
            self.forward(h.seq, &h.data[..h.len], emit);
        }
        if self.held.iter().all(|h| !h.filled) {
            self.gap_until = None;
        }
    }

    /// Fills every missing frame before the last held packet and sends them all.
    fn release_all(&mut self, emit: &mut impl FnMut(&[u8])) {
        while self.held.iter().any(|h| h.filled) {
            if self.held[0].filled {
                self.release_in_order(emit);
                continue;
            }
            // A lost frame: the previous one once (it hides a short loss
            // best), silence after that.
            let len = if self.last.len == 0 { 160 } else { self.last.len };
            if self.repeated || self.last.len == 0 {
                emit(&self.silence[..len]);
            } else {
                emit(&self.last.data[..len]);
                self.repeated = true;
            }
            self.stats.concealed += 1;
            self.expected = self.expected.map(|e| e.wrapping_add(1));
            self.shift();
        }
        self.gap_until = None;
    }

    fn shift(&mut self) {
        self.held.rotate_left(1);
        self.held[HOLD].filled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> [u8; 160] {
        [n; 160]
    }

    fn run(f: &mut Forwarder, now: Instant, seq: u16, out: &mut Vec<u8>) {
        f.push(now, seq, &frame(seq as u8), |p| out.push(p[0]));
    }

    #[test]
    fn in_order_packets_go_out_on_arrival() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(0xFF);
        let mut out = Vec::new();
        for seq in 10..20 {
            let before = out.len();
            run(&mut f, t0, seq, &mut out);
            assert_eq!(out.len(), before + 1, "forwarded at once");
            assert_eq!(f.poll_timeout(), None);
        }
        assert_eq!(out, (10..20).collect::<Vec<u8>>());
    }

    #[test]
    fn a_reordered_packet_waits_at_most_one_frame_and_order_is_kept() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(0xFF);
        let mut out = Vec::new();
        run(&mut f, t0, 1, &mut out);
        run(&mut f, t0, 3, &mut out); // 2 is late
        assert_eq!(out, vec![1]);
        assert_eq!(f.poll_timeout(), Some(t0 + GAP_WAIT));
        run(&mut f, t0 + Duration::from_millis(5), 2, &mut out);
        assert_eq!(out, vec![1, 2, 3], "the gap closed as soon as 2 came");
        assert_eq!(f.poll_timeout(), None);
        // A loss: 5 never comes; after one frame time 4's copy fills it, 6 goes out.
        run(&mut f, t0, 4, &mut out);
        run(&mut f, t0 + Duration::from_millis(40), 6, &mut out);
        f.handle_timeout(t0 + Duration::from_millis(59), |p| out.push(p[0]));
        assert_eq!(out.len(), 4, "still within the frame time");
        f.handle_timeout(t0 + Duration::from_millis(60), |p| out.push(p[0]));
        assert_eq!(out, vec![1, 2, 3, 4, 4, 6]);
        // 5 arriving now is too late: never reordered into what was sent.
        run(&mut f, t0 + Duration::from_millis(61), 5, &mut out);
        assert_eq!(out.len(), 6);
        assert_eq!(f.stats().late, 1);
        assert_eq!(f.stats().concealed, 1);
    }

    #[test]
    fn a_long_loss_is_the_previous_frame_once_then_silence() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(0xFF);
        let mut out = Vec::new();
        run(&mut f, t0, 1, &mut out);
        run(&mut f, t0, 5, &mut out);
        f.handle_timeout(t0 + GAP_WAIT, |p| out.push(p[0]));
        assert_eq!(out, vec![1, 1, 0xFF, 0xFF, 5]);
    }

    #[test]
    fn far_jumps_and_hostile_sequences_never_hold_or_grow() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(0xFF);
        let mut out = Vec::new();
        run(&mut f, t0, 1, &mut out);
        // Far ahead of the hold window: the gap closes at once.
        run(&mut f, t0, 8, &mut out);
        assert_eq!(f.poll_timeout(), None);
        assert_eq!(*out.last().unwrap(), 8);
        // A resync (new stream): forwarded at once from there.
        run(&mut f, t0, 30_000, &mut out);
        assert_eq!(*out.last().unwrap(), 30_000u16 as u8);
        // Duplicates, wrap-around and oversize frames.
        run(&mut f, t0, 30_000, &mut out);
        f.push(t0, 30_001, &[0u8; MAX_FRAME + 1], |_| panic!("oversize forwarded"));
        let mut f = Forwarder::new(0xFF);
        let mut out = Vec::new();
        for seq in [65_534u16, 65_535, 0, 1] {
            run(&mut f, t0, seq, &mut out);
        }
        assert_eq!(out.len(), 4, "wrap-around is in order");
        for i in 0..10_000u32 {
            let seq = (i.wrapping_mul(2_654_435_761) >> 16) as u16;
            f.push(t0, seq, &frame(1), |_| {});
            f.handle_timeout(t0 + Duration::from_secs(1), |_| {});
        }
    }
}
