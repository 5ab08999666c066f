//! The caller-side jitter buffer: RTP arrives whenever the network delivers it,
//! the agent wants one 20 ms frame per tick of the call's media clock.
//!
//! Sans-IO: [`push`] takes a packet's sequence number and payload, [`pop`] is
//! called once per tick. It reorders within its window, conceals a single lost
//! frame by repeating the previous one (then silence), drops late packets, and
//! adapts its depth: a late packet deepens it by one frame, ten seconds without
//! one make it shallower again. Storage is a fixed ring of slots, so nothing is
//! allocated per packet and a peer cannot make it grow.
//!
//! [`push`]: JitterBuffer::push
//! [`pop`]: JitterBuffer::pop

/// Largest payload kept: 60 ms of G.711.
pub const MAX_FRAME: usize = 480;
const SLOTS: usize = 32;
const MIN_DEPTH: usize = 1;
const MAX_DEPTH: usize = 8;
/// Ticks without a late packet before the depth shrinks (10 s).
const SHRINK_AFTER: u32 = 500;
/// Ticks with nothing to play before the buffer re-primes (caller stopped sending).
const IDLE_RESET: u32 = 5;

#[derive(Clone, Copy)]
struct Slot {
    seq: u16,
    len: u16,
    filled: bool,
    data: [u8; MAX_FRAME],
}

impl Slot {
    const EMPTY: Slot = Slot {
        seq: 0,
        len: 0,
        filled: false,
        data: [0; MAX_FRAME],
    };
}

/// What one tick plays.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<'a> {
    Frame(&'a [u8]),
    /// A lost frame, concealed by repeating the previous one.
    Concealed(&'a [u8]),
    /// Nothing to play (not primed yet, or a run of losses): the caller is silent.
    Silence,
}

/// Counters for the call's record and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    pub concealed: u64,
    pub late: u64,
    pub oversize: u64,
    pub depth: usize,
}

pub struct JitterBuffer {
    slots: Box<[Slot; SLOTS]>,
    next: Option<u16>,
    depth: usize,
    last: usize,
    lost_run: u32,
    idle: u32,
    since_late: u32,
    stats: JitterStats,
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("next", &self.next)
            .field("depth", &self.depth)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new(2)
    }
}

impl JitterBuffer {
    /// A buffer that starts playing once `depth` frames are queued.
    pub fn new(depth: usize) -> Self {
        JitterBuffer {
            slots: Box::new([Slot::EMPTY; SLOTS]),
            next: None,
            depth: depth.clamp(MIN_DEPTH, MAX_DEPTH),
            last: SLOTS,
            lost_run: 0,
            idle: 0,
            since_late: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            depth: self.depth,
            ..self.stats
        }
    }

    fn queued(&self) -> usize {
        self.slots.iter().filter(|s| s.filled).count()
    }

    /// One packet's payload (the codec frame), by RTP sequence number.
    pub fn push(&mut self, seq: u16, payload: &[u8]) {
        if payload.len() > MAX_FRAME {
            self.stats.oversize += 1;
            return;
        }
        if let Some(next) = self.next {
            let ahead = seq.wrapping_sub(next) as i16;
            if ahead < 0 {
                self.stats.late += 1;
                self.since_late = 0;
                self.depth = (self.depth + 1).min(MAX_DEPTH);
                return;
            }
            if ahead as usize >= SLOTS {
                // A jump (new source, long gap): start over from this packet.
                self.clear();
            }
        }
        let slot = &mut self.slots[usize::from(seq) % SLOTS];
        slot.seq = seq;
        slot.len = payload.len() as u16;
        slot.filled = true;
        slot.data[..payload.len()].copy_from_slice(payload);
    }

    fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            s.filled = false;
        }
        self.next = None;
        self.lost_run = 0;
    }

    /// The oldest queued sequence number, in RTP order (all queued packets lie
    /// within one window, so signed distance from any of them orders them).
    fn oldest(&self) -> Option<u16> {
        let mut filled = self.slots.iter().filter(|s| s.filled).map(|s| s.seq);
        let reference = filled.next()?;
        Some(filled.fold(reference, |o, s| if (s.wrapping_sub(o) as i16) < 0 { s } else { o }))
    }

    /// The frame for this tick.
    pub fn pop(&mut self) -> Pop<'_> {
        self.since_late = self.since_late.saturating_add(1);
        if self.since_late >= SHRINK_AFTER {
            self.since_late = 0;
            self.depth = (self.depth - 1).max(MIN_DEPTH);
        }
        let queued = self.queued();
        let next = match self.next {
            Some(n) => n,
            None if queued >= self.depth => match self.oldest() {
                Some(o) => o,
                None => return Pop::Silence,
            },
            None => return Pop::Silence,
        };
        // Too deep (a burst arrived, or the depth just shrank): skip ahead so the
        // caller's words are not heard late by the agent.
        let mut next = next;
        if queued > self.depth + 2 {
            let i = usize::from(next) % SLOTS;
            self.slots[i].filled = false;
            next = next.wrapping_add(1);
        }
        let i = usize::from(next) % SLOTS;
        self.next = Some(next.wrapping_add(1));
        if self.slots[i].filled && self.slots[i].seq == next {
            self.slots[i].filled = false;
            self.last = i;
            self.lost_run = 0;
            self.idle = 0;
            self.stats.played += 1;
            let len = usize::from(self.slots[i].len);
            return Pop::Frame(&self.slots[i].data[..len]);
        }
        self.lost_run += 1;
        if queued == 0 {
            self.idle += 1;
            if self.idle >= IDLE_RESET {
                // The caller stopped sending (silence suppression, hold): re-prime
                // rather than count every tick of silence as a loss.
                self.clear();
                return Pop::Silence;
            }
        }
        if self.lost_run == 1 && self.last < SLOTS {
            self.stats.concealed += 1;
            let len = usize::from(self.slots[self.last].len);
            return Pop::Concealed(&self.slots[self.last].data[..len]);
        }
        Pop::Silence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8) -> [u8; 160] {
        [tag; 160]
    }

    fn tag(p: Pop<'_>) -> Option<u8> {
        match p {
            Pop::Frame(f) => Some(f[0]),
            Pop::Concealed(f) => Some(f[0] | 0x80),
            Pop::Silence => None,
        }
    }

    #[test]
    fn primes_then_plays_in_order_despite_reordering() {
        let mut jb = JitterBuffer::new(2);
        jb.push(101, &frame(2));
        assert_eq!(tag(jb.pop()), None, "not primed with one frame");
        jb.push(100, &frame(1));
        assert_eq!(tag(jb.pop()), Some(1));
        jb.push(103, &frame(4));
        jb.push(102, &frame(3));
        assert_eq!(tag(jb.pop()), Some(2));
        assert_eq!(tag(jb.pop()), Some(3));
        assert_eq!(tag(jb.pop()), Some(4));
        assert_eq!(jb.stats().played, 4);
    }

    #[test]
    fn conceals_one_loss_by_repetition_then_silence() {
        let mut jb = JitterBuffer::new(1);
        jb.push(10, &frame(1));
        assert_eq!(tag(jb.pop()), Some(1));
        jb.push(13, &frame(4));
        assert_eq!(tag(jb.pop()), Some(0x81), "11 lost: repeat 10");
        assert_eq!(tag(jb.pop()), None, "12 lost too: silence");
        assert_eq!(tag(jb.pop()), Some(4));
        assert_eq!(jb.stats().concealed, 1);
    }

    #[test]
    fn late_packets_are_dropped_and_deepen_the_buffer() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, &frame(1));
        jb.pop();
        jb.push(2, &frame(2));
        jb.pop();
        jb.push(1, &frame(9));
        assert_eq!(jb.stats().late, 1);
        assert_eq!(jb.stats().depth, 2);
        for _ in 0..SHRINK_AFTER {
            jb.pop();
        }
        assert_eq!(jb.stats().depth, 1, "shrinks again after a quiet spell");
    }

    #[test]
    fn wraps_sequence_numbers_and_resyncs_after_a_jump() {
        let mut jb = JitterBuffer::new(1);
        jb.push(65535, &frame(1));
        assert_eq!(tag(jb.pop()), Some(1));
        jb.push(0, &frame(2));
        assert_eq!(tag(jb.pop()), Some(2));
        jb.push(5000, &frame(3));
        assert_eq!(tag(jb.pop()), Some(3), "a jump restarts at the new packet");
    }

    #[test]
    fn bounded_latency_after_a_burst_and_no_growth_from_a_flood() {
        let mut jb = JitterBuffer::new(2);
        for s in 0..20u16 {
            jb.push(s, &frame(s as u8));
        }
        let mut played = Vec::new();
        for _ in 0..20 {
            if let Some(t) = tag(jb.pop()) {
                played.push(t);
            }
        }
        assert!(played.len() < 20, "a burst is thinned towards the target depth: {played:?}");
        assert!(played.windows(2).all(|w| w[0] < w[1]), "still in order: {played:?}");
        jb.push(100, &[0u8; MAX_FRAME + 1]);
        assert_eq!(jb.stats().oversize, 1);
    }

    #[test]
    fn reprimes_after_the_caller_goes_quiet() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, &frame(1));
        jb.pop();
        for _ in 0..IDLE_RESET + 2 {
            jb.pop();
        }
        jb.push(200, &frame(7));
        assert_eq!(tag(jb.pop()), Some(7));
    }
}
