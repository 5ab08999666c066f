//! The receiving half of RTP accounting: extended sequence numbers, loss and
//! interarrival jitter exactly as RFC 3550 appendix A.1 and A.8 define them.
//!
//! A call's media does not stay one tidy stream: a trunk re-anchors media, a PBX
//! transfers the call, an SBC restarts its relay. Each shows up as a new SSRC or
//! as a jump of thousands in the sequence number or timestamp. Counting across
//! such a jump reports tens of thousands of "lost" packets and seconds of
//! "jitter" that never happened, and an operator judging a trunk by its call
//! records is misled. So the receiver keeps one *segment* per source (A.1's
//! `source` state): a new SSRC starts one on probation (two sequential packets
//! validate it); a jump beyond [`MAX_DROPOUT`] is believed only when the next
//! packet confirms it, and then restarts the segment. Jitter (A.8) is per
//! segment and skips a timestamp re-anchoring. Loss is the sum over segments.

use std::time::Instant;

use super::rtp::{RtpError, RtpPacket};

/// RFC 3550 A.1: a new source is valid after this many sequential packets.
const MIN_SEQUENTIAL: u32 = 2;
/// RFC 3550 A.1: a forward step this large or more is a jump, not loss.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a backward step this small is reordering or a duplicate.
const MAX_MISORDER: u16 = 100;
const SEQ_MOD: u32 = 1 << 16;
/// A transit-time step above this many seconds is a timestamp re-anchoring
/// (the sender's clock moved), not network jitter: no jitter buffer could
/// absorb it anyway, and it would pin the call's jitter at seconds.
const MAX_TRANSIT_STEP_SECONDS: f64 = 2.0;

/// What the receiver counted, logged at call end and stored on the call record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtpStats {
    /// Every well-formed packet, validated or not.
    pub packets: u64,
    pub bytes: u64,
    /// Packets the validated segments' sequence numbers say were sent.
    pub expected: u64,
    pub lost: u64,
    pub malformed: u64,
    pub ssrc_changes: u32,
    /// Sequence or timestamp jumps that restarted the accounting.
    pub resyncs: u32,
    pub max_jitter_ms: f64,
    /// The mean of the A.8 jitter estimate over the call (for the MOS estimate).
    pub mean_jitter_ms: f64,
}

impl RtpStats {
    /// Lost packets as a fraction of those expected (0.0 when none expected).
    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost.min(self.expected) as f64 / self.expected as f64
        }
    }
}

/// One source's sequence state (RFC 3550 A.1 `source`).
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    ssrc: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u64,
    last_transit: Option<f64>,
    jitter: f64,
}

impl Segment {
    fn new(ssrc: u32, seq: u16) -> Self {
        Segment {
            ssrc,
            max_seq: seq.wrapping_sub(1),
            probation: MIN_SEQUENTIAL,
            bad_seq: SEQ_MOD + 1,
            ..Segment::default()
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.last_transit = None;
    }

    fn expected(&self) -> u64 {
        if self.probation > 0 {
            return 0;
        }
        let extended_max = u64::from(self.cycles) + u64::from(self.max_seq);
        (extended_max + 1).saturating_sub(u64::from(self.base_seq))
    }
}

/// What A.1's `update_seq` decided about a packet.
enum Seq {
    Valid,
    /// Probation, or a jump not yet confirmed: not counted.
    Invalid,
    /// A confirmed jump: the segment restarts at this packet.
    Resync,
}

/// Validates packets and keeps RFC 3550 statistics.
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    clock_rate: f64,
    epoch: Instant,
    current: Option<Segment>,
    /// Finished segments, folded in.
    expected_before: u64,
    received_before: u64,
    jitter_sum: f64,
    jitter_samples: u64,
    stats: RtpStats,
    last_packet: Option<Instant>,
}

impl RtpReceiver {
    pub fn new(clock_rate: u32, epoch: Instant) -> Self {
        RtpReceiver {
            clock_rate: f64::from(clock_rate.max(1)),
            epoch,
            current: None,
            expected_before: 0,
            received_before: 0,
            jitter_sum: 0.0,
            jitter_samples: 0,
            stats: RtpStats::default(),
            last_packet: None,
        }
    }

    /// Accounts for one datagram; malformed ones are counted and returned as errors.
    pub fn on_datagram<'a>(&mut self, now: Instant, data: &'a [u8]) -> Result<RtpPacket<'a>, RtpError> {
        match RtpPacket::parse(data) {
            Ok(packet) => {
                self.on_packet(now, &packet);
                Ok(packet)
            }
            Err(e) => {
                self.stats.malformed += 1;
                Err(e)
            }
        }
    }

    /// Accounts for a packet the caller has already parsed (the hot path parses
    /// each datagram once).
    pub fn on_packet(&mut self, now: Instant, packet: &RtpPacket<'_>) {
        let h = packet.header;
        self.stats.packets += 1;
        self.stats.bytes += packet.payload.len() as u64;
        self.last_packet = Some(now);
        if self.current.is_some_and(|s| s.ssrc != h.ssrc) {
            self.stats.ssrc_changes = self.stats.ssrc_changes.saturating_add(1);
            self.fold();
        }
        let seg = self.current.get_or_insert_with(|| Segment::new(h.ssrc, h.sequence));
        match update_seq(seg, h.sequence) {
            Seq::Invalid => return,
            Seq::Valid => {}
            Seq::Resync => {
                self.stats.resyncs = self.stats.resyncs.saturating_add(1);
                // Close the old run of sequence numbers, start a new one here.
                let (expected, received) = (seg.expected(), seg.received);
                seg.init_seq(h.sequence);
                seg.received = 1;
                self.expected_before += expected;
                self.received_before += received;
            }
        }
        let seg = match self.current.as_mut() {
            Some(s) => s,
            None => return,
        };
        // Interarrival jitter in timestamp units (A.8).
        let arrival = now.saturating_duration_since(self.epoch).as_secs_f64() * self.clock_rate;
        let transit = arrival - f64::from(h.timestamp);
        if let Some(last) = seg.last_transit {
            let mut d = transit - last;
            // Timestamps wrap at 2^32; a wrap shows up as a huge transit step.
            if d.abs() > 2f64.powi(31) {
                d -= 2f64.powi(32) * d.signum();
            }
            if d.abs() <= MAX_TRANSIT_STEP_SECONDS * self.clock_rate {
                seg.jitter += (d.abs() - seg.jitter) / 16.0;
                let ms = seg.jitter / self.clock_rate * 1000.0;
                self.stats.max_jitter_ms = self.stats.max_jitter_ms.max(ms);
                self.jitter_sum += ms;
                self.jitter_samples += 1;
            } else {
                self.stats.resyncs = self.stats.resyncs.saturating_add(1);
            }
        }
        seg.last_transit = Some(transit);
    }

    /// Folds the current segment into the totals (a new SSRC takes over).
    fn fold(&mut self) {
        if let Some(seg) = self.current.take() {
            self.expected_before += seg.expected();
            self.received_before += seg.received;
        }
    }

    /// Counts a datagram that is not RTP.
    pub fn count_malformed(&mut self) {
        self.stats.malformed += 1;
    }

    /// When the last valid packet arrived (for the RTP timeout).
    pub fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }

    pub fn stats(&self) -> RtpStats {
        let (seg_expected, seg_received) = self.current.map_or((0, 0), |s| (s.expected(), s.received));
        let expected = self.expected_before + seg_expected;
        let received = self.received_before + seg_received;
        RtpStats {
            expected,
            lost: expected.saturating_sub(received),
            mean_jitter_ms: if self.jitter_samples == 0 {
                0.0
            } else {
                self.jitter_sum / self.jitter_samples as f64
            },
            ..self.stats
        }
    }
}

/// RFC 3550 A.1 `update_seq`, with the segment restart made explicit.
fn update_seq(s: &mut Segment, seq: u16) -> Seq {
    let udelta = seq.wrapping_sub(s.max_seq);
    if s.probation > 0 {
        // A new source: sequential packets validate it.
        if seq == s.max_seq.wrapping_add(1) {
            s.probation -= 1;
            s.max_seq = seq;
            if s.probation == 0 {
                s.init_seq(seq);
                s.received = 1;
                return Seq::Valid;
            }
        } else {
            s.probation = MIN_SEQUENTIAL - 1;
            s.max_seq = seq;
        }
        return Seq::Invalid;
    }
    if udelta < MAX_DROPOUT {
        // In order, with a permissible gap.
        if seq < s.max_seq {
            s.cycles += SEQ_MOD;
        }
        s.max_seq = seq;
    } else if u32::from(udelta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
        // A very large jump: believe it only when the next packet follows it.
        if u32::from(seq) == s.bad_seq {
            return Seq::Resync;
        }
        s.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
        return Seq::Invalid;
    }
    // Otherwise a duplicate or reordered packet: counted, max_seq unchanged.
    s.received += 1;
    Seq::Valid
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::media::rtp::RtpHeader;

    const FRAME: Duration = Duration::from_millis(20);

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + 160];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: ts,
            ssrc,
        }
        .write(&mut buf)
        .unwrap();
        buf
    }

    #[test]
    fn counts_loss_reordering_wrap_and_ssrc_change() {
        let t0 = Instant::now();
        let mut r = RtpReceiver::new(8000, t0);
        let mut now = t0;
        // 65528, 65529 validate the source; then 65530..=65535, 0..=9 with 3
        // lost and one reordered.
        let mut seqs: Vec<u16> = (65528..=65535).chain(0..10).filter(|s| ![65533, 2, 7].contains(s)).collect();
        seqs.swap(6, 7);
        for (i, s) in seqs.iter().enumerate() {
            now += FRAME;
            r.on_datagram(now, &packet(*s, 160 * i as u32, 7)).unwrap();
        }
        let st = r.stats();
        assert_eq!((st.expected, st.lost, st.packets), (17, 3, 15));
        // A new SSRC: one probation packet, then counted afresh.
        for s in 100..110u16 {
            now += FRAME;
            r.on_datagram(now, &packet(s, u32::from(s) * 160, 8)).unwrap();
        }
        let st = r.stats();
        assert_eq!((st.expected, st.lost, st.ssrc_changes), (26, 3, 1));
        assert!(r.on_datagram(now, &[1, 2, 3]).is_err());
        assert_eq!(r.stats().malformed, 1);
        assert_eq!(r.last_packet(), Some(now));
    }

    /// The defect: a trunk re-anchoring media (a sequence jump of 31,000 and a
    /// timestamp jump of 30 s on the same SSRC) was counted as 31,000 lost
    /// packets and 3.75 s of jitter.
    #[test]
    fn a_sequence_and_timestamp_jump_is_a_resync_not_loss_or_jitter() {
        let t0 = Instant::now();
        let mut r = RtpReceiver::new(8000, t0);
        let mut now = t0;
        for i in 0..100u16 {
            now += FRAME;
            r.on_datagram(now, &packet(i, u32::from(i) * 160, 5)).unwrap();
        }
        for i in 0..100u16 {
            now += FRAME;
            let seq = 31_100u16.wrapping_add(i);
            r.on_datagram(now, &packet(seq, 240_000 + u32::from(i) * 160, 5)).unwrap();
        }
        let st = r.stats();
        assert_eq!(st.lost, 0, "{st:?}");
        assert_eq!(
            st.expected, 198,
            "the probation packet and the unconfirmed first packet after the jump are not counted"
        );
        assert!(st.max_jitter_ms < 1.0, "{st:?}");
        assert_eq!(st.resyncs, 1);
        // A timestamp-only re-anchoring (same sequence run) leaves jitter alone.
        let mut r = RtpReceiver::new(8000, t0);
        let mut now = t0;
        for i in 0..200u16 {
            now += FRAME;
            let ts = if i < 100 {
                u32::from(i) * 160
            } else {
                9_000_000 + u32::from(i) * 160
            };
            r.on_datagram(now, &packet(i, ts, 5)).unwrap();
        }
        let st = r.stats();
        assert!(st.max_jitter_ms < 1.0 && st.lost == 0, "{st:?}");
    }

    #[test]
    fn a_new_ssrc_mid_call_and_stragglers_of_the_old_one_lose_nothing() {
        let t0 = Instant::now();
        let mut r = RtpReceiver::new(8000, t0);
        let mut now = t0;
        for i in 0..50u16 {
            now += FRAME;
            r.on_datagram(now, &packet(1000 + i, u32::from(i) * 160, 1)).unwrap();
        }
        // A transfer: SSRC 2 starts at an unrelated sequence number and
        // timestamp; two late packets of SSRC 1 arrive in between.
        for i in 0..50u16 {
            now += FRAME;
            r.on_datagram(now, &packet(40_000 + i, 7_777_777 + u32::from(i) * 160, 2)).unwrap();
            if i == 1 || i == 2 {
                r.on_datagram(now, &packet(1050 + i, 0, 1)).unwrap();
            }
        }
        let st = r.stats();
        assert_eq!(st.lost, 0, "{st:?}");
        assert!(st.max_jitter_ms < 1.0, "{st:?}");
    }

    #[test]
    fn a_real_gap_is_still_loss() {
        let t0 = Instant::now();
        let mut r = RtpReceiver::new(8000, t0);
        for i in (0..1000u16).filter(|i| i % 10 != 5) {
            r.on_datagram(t0 + FRAME * u32::from(i), &packet(i, u32::from(i) * 160, 9)).unwrap();
        }
        let st = r.stats();
        assert_eq!((st.expected, st.lost), (999, 100));
        assert!((st.loss_ratio() - 0.1).abs() < 0.001);
    }

    #[test]
    fn jitter_reflects_arrival_variation() {
        let t0 = Instant::now();
        let mut steady = RtpReceiver::new(8000, t0);
        let mut jittery = RtpReceiver::new(8000, t0);
        for i in 0..100u32 {
            let at = t0 + FRAME * i;
            steady.on_datagram(at, &packet(i as u16, i * 160, 1)).unwrap();
            let wobble = if i % 2 == 0 { Duration::ZERO } else { Duration::from_millis(10) };
            jittery.on_datagram(at + wobble, &packet(i as u16, i * 160, 1)).unwrap();
        }
        assert!(steady.stats().max_jitter_ms < 0.01);
        let j = jittery.stats().max_jitter_ms;
        assert!(j > 5.0 && j < 10.5, "jitter {j}");
        assert!(jittery.stats().mean_jitter_ms > 3.0);
    }
}
