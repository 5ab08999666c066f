//! RTP parsing and everything a peer's packets reach: the receiver's
//! statistics, the source latch, RFC 4733 DTMF and the caller-audio forwarder.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use precall::media::dtmf::DtmfReceiver;
use precall::media::forward::Forwarder;
use precall::media::session::{RtpReceiver, SourceLatch};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut receiver = RtpReceiver::new(8000, t0);
    let mut latch = SourceLatch::new(Some(SocketAddr::from(([10, 0, 0, 1], 4000))), false, t0);
    let mut dtmf = DtmfReceiver::default();
    let mut forward = Forwarder::new(0xFF);
    // The input is a run of datagrams, each prefixed by its length byte.
    let mut rest = data;
    let mut i = 0u32;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        i += 1;
        let now = t0 + Duration::from_millis(u64::from(i) * 20);
        let from = SocketAddr::from(([10, 0, 0, 1 + (i % 2) as u8], 4000));
        if let Ok(p) = receiver.on_datagram(now, packet) {
            let _ = latch.on_packet(now, from, &p.header, true);
            let _ = dtmf.on_packet(p.header.timestamp, p.payload);
            forward.push(now, p.header.sequence, p.payload, |f| assert!(f.len() <= 480));
            forward.handle_timeout(now, |_| {});
        }
    }
    let stats = receiver.stats();
    assert!(stats.lost <= stats.expected);
});
