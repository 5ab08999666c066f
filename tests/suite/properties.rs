//! Property tests for the arithmetic a peer or a long call can push to its
//! limits: deadlines, the RTP sender's sequence/timestamp/timeline, the
//! receiver's loss accounting and the caller-audio forwarder.

use std::time::{Duration, Instant};

use precall::deadline;
use precall::media::forward::{Forwarder, GAP_WAIT, MAX_FRAME};
use precall::media::rtp::RtpPacket;
use precall::media::session::{MAX_PACKET, RtpReceiver, RtpSender};
use proptest::prelude::*;

proptest! {
    #[test]
    fn deadlines_never_panic_and_never_go_back(a in any::<u64>(), b in any::<u64>(), nanos in any::<u32>()) {
        let now = Instant::now();
        let (lo, hi) = (a.min(b), a.max(b));
        let da = deadline::after(now, Duration::new(lo, nanos % 1_000_000_000));
        let db = deadline::after(now, Duration::new(hi, nanos % 1_000_000_000));
        prop_assert!(da >= now && db >= da);
    }

    #[test]
    fn peer_seconds_are_clamped(text in "[0-9]{0,40}", max in 1u64..1_000_000) {
        let max = Duration::from_secs(max);
        if let Some(d) = deadline::clamp_secs(&text, max) {
            prop_assert!(d <= max);
        } else {
            prop_assert!(text.is_empty());
        }
    }

    /// Whatever the clock does, once the due frames are written the next
    /// deadline is in the future: the media loop always waits.
    #[test]
    fn the_sender_always_moves_past_now(seq in any::<u16>(), ts in any::<u32>(), jumps in prop::collection::vec(0u64..5_000_000, 1..60)) {
        let t0 = Instant::now();
        let mut s = RtpSender::new(7, 0, seq, ts, t0);
        let mut buf = [0u8; MAX_PACKET];
        let mut now = t0;
        let mut last: Option<(u16, u32)> = None;
        for j in jumps {
            now += Duration::from_micros(j);
            let (due, _skipped) = s.due(now);
            for _ in 0..due {
                let n = s.write_next(&[0xff; 160], &mut buf);
                let h = RtpPacket::parse(&buf[..n]).expect("our packet parses").header;
                if let Some((pseq, pts)) = last {
                    prop_assert_eq!(h.sequence, pseq.wrapping_add(1));
                    // The timestamp advances by whole frames (more across a skip).
                    prop_assert_eq!(h.timestamp.wrapping_sub(pts) % 160, 0);
                }
                last = Some((h.sequence, h.timestamp));
            }
            prop_assert!(s.next_deadline() > now, "deadline {:?} not after now", s.next_deadline() - t0);
        }
    }

    #[test]
    fn loss_never_exceeds_what_was_expected(packets in prop::collection::vec((any::<u16>(), any::<u32>(), 0u32..3), 0..300)) {
        let t0 = Instant::now();
        let mut r = RtpReceiver::new(8000, t0);
        for (i, (seq, ts, ssrc)) in packets.iter().enumerate() {
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[0xff; 160]);
            let _ = r.on_datagram(t0 + Duration::from_millis(20 * i as u64), &p);
        }
        let st = r.stats();
        prop_assert!(st.lost <= st.expected);
        prop_assert!(st.packets <= packets.len() as u64);
    }

    /// Whatever sequence numbers and timing a peer sends, the forwarder emits
    /// bounded frames, never holds a packet past one frame time, and accounts
    /// for every packet (forwarded, concealed in its place, late, or oversize).
    #[test]
    fn the_forwarder_takes_any_sequence(ops in prop::collection::vec((any::<u16>(), 0usize..600, 0u64..50), 0..400)) {
        let t0 = std::time::Instant::now();
        let mut f = Forwarder::new(0xFF);
        let mut now = t0;
        let mut emitted = 0u64;
        let mut pushed = 0u64;
        for (seq, len, wait_ms) in ops {
            now += std::time::Duration::from_millis(wait_ms);
            f.handle_timeout(now, |p| { emitted += 1; assert!(p.len() <= MAX_FRAME); });
            f.push(now, seq, &vec![1u8; len], |p| { emitted += 1; assert!(p.len() <= MAX_FRAME); });
            pushed += 1;
            if let Some(t) = f.poll_timeout() {
                prop_assert!(t <= now + GAP_WAIT, "held longer than one frame time");
            }
        }
        f.handle_timeout(now + GAP_WAIT, |_| emitted += 1);
        prop_assert_eq!(f.poll_timeout(), None);
        let st = f.stats();
        prop_assert_eq!(emitted, st.forwarded + st.concealed);
        prop_assert_eq!(pushed, st.forwarded + st.late + st.oversize, "every packet accounted for");
    }
}
