//! Wall-clock media timing, measured by a caller with its own RTP socket: what
//! SIPp cannot assert. Ignored in the default `cargo test` because a parallel build
//! or other tests on a 2-core box distort wall-clock figures; `.ci/run` runs it
//! alone, in release mode:
//!
//!     cargo test --release --test timing -- --ignored --test-threads=1
//!
//! The media clock's schedule itself (start + n·20 ms, +160 timestamps, no drift)
//! is asserted without wall clocks in `media::session`'s unit tests.

mod common;

use std::time::{Duration, Instant};

use common::{Caller, offer, start_daemon};
use precall::media::g711::G711;
use precall::media::rtp::RtpPacket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "wall-clock timing: run alone by .ci/run (see the module docs)"]
async fn first_packet_and_pacing_over_five_seconds() {
    let daemon = start_daemon(|_| {}).await;
    let prompts = daemon.prompts.clone();
    let mut caller = Caller::udp(daemon.sip_addr).await;
    let rtp = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let rtp_port = rtp.local_addr().unwrap().port();

    // Timestamp arrivals in a dedicated task, started before the INVITE, so a
    // packet that arrives before the ACK is stamped when it arrives.
    let listener = {
        let rtp = rtp.clone();
        tokio::spawn(async move {
            let mut got: Vec<(Instant, Vec<u8>)> = Vec::with_capacity(400);
            let mut buf = [0u8; 2048];
            let end = Instant::now() + Duration::from_millis(6500);
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(end.into(), rtp.recv_from(&mut buf)).await {
                got.push((Instant::now(), buf[..n].to_vec()));
            }
            got
        })
    };

    caller.invite(&offer(rtp_port, "0", "sendrecv")).await;
    let t_invite = Instant::now();
    let (_, ok) = caller.final_response(Duration::from_secs(1)).await;
    let t_200 = Instant::now();
    assert_eq!(ok.status(), Some(200));
    let t_ack = Instant::now();
    caller.ack("").await;
    let got = listener.await.unwrap();
    assert_eq!(caller.bye().await.status(), Some(200));

    // Five seconds from the first packet.
    let first_at = got.first().expect("RTP arrived").0;
    let window: Vec<&(Instant, Vec<u8>)> = got
        .iter()
        .take_while(|(t, _)| t.duration_since(first_at) <= Duration::from_secs(5))
        .collect();
    assert!(window.len() >= 245, "about 250 packets in 5 s, got {}", window.len());

    let first_after_ack = first_at.saturating_duration_since(t_ack);
    let mut deviation_us: Vec<i64> = window
        .windows(2)
        .map(|w| (w[1].0.duration_since(w[0].0).as_micros() as i64 - 20_000).abs())
        .collect();
    deviation_us.sort_unstable();
    let p50 = deviation_us[deviation_us.len() / 2];
    let p99 = deviation_us[deviation_us.len() * 99 / 100];
    let max = *deviation_us.last().unwrap();
    // Drift: the 250th packet must be 250·20 ms after the first, within a frame.
    let span = window.last().unwrap().0.duration_since(first_at).as_micros() as i64;
    let expected_span = (window.len() as i64 - 1) * 20_000;
    eprintln!(
        "INVITE->200 {:?}; first RTP {:?} after the ACK (media starts with the 200); gap deviation p50 {p50} us, p99 {p99} us, max {max} us; \
         {} packets, span {span} us vs {expected_span} us",
        t_200.duration_since(t_invite),
        first_after_ack,
        window.len()
    );
    assert!(
        first_after_ack <= Duration::from_millis(20),
        "first RTP {first_after_ack:?} after the ACK"
    );
    // The 2 ms pacing target is a figure of the load benchmark
    // (`sipp-scenarios/load.sh`, docs/PERFORMANCE.md): on the shared 2-core CI
    // VM a few host preemptions per 5 s push this one call's p99 to 3-5 ms in
    // some runs. What this test guards is the mechanism: a pacer that slept
    // 20 ms per frame would drift (the span check below), one that bursts
    // frames would show gaps near 20 ms.
    assert!(
        p99 <= 10_000,
        "inter-packet gap p99 deviation {p99} us > 10 ms: frames are bursting"
    );
    assert!(
        (span - expected_span).abs() <= 20_000,
        "drift: span {span} us for {} packets",
        window.len()
    );

    // Wire format: +1 sequence, +160 timestamp, and the greeting's audio.
    let packets: Vec<RtpPacket> = window.iter().map(|(_, d)| RtpPacket::parse(d).unwrap()).collect();
    let mut decoded = vec![0i16; 160];
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p.header.sequence, packets[0].header.sequence.wrapping_add(i as u16));
        assert_eq!(p.header.timestamp, packets[0].header.timestamp.wrapping_add(160 * i as u32));
        G711::Ulaw.decode(p.payload, &mut decoded);
        let original = &prompts.greeting.pcm()[(i % prompts.greeting.frames()) * 160..][..160];
        for (d, o) in decoded.iter().zip(original) {
            // μ-law keeps each sample within half a quantisation step.
            let bound = (i32::from(*o).abs() / 16).max(16);
            assert!((i32::from(*d) - i32::from(*o)).abs() <= bound, "packet {i}: {d} vs {o}");
        }
    }
}
