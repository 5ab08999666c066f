//! End to end over real sockets: a caller places calls to an in-process daemon and
//! checks what arrives on the wire (SIP and RTP).

use crate::common;

use std::time::Duration;

use common::{Caller, offer, start_daemon};
use precall::media::g711::G711;
use precall::media::rtp::RtpPacket;

const SEC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn udp_call_plays_the_greeting_and_ends_on_bye() {
    let daemon = start_daemon(|_| {}).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0 8 101", "sendrecv")).await;
    let (provisional, ok) = c.final_response(SEC).await;
    assert_eq!(provisional.first().and_then(|m| m.status()), Some(100), "100 Trying first");
    assert!(provisional.iter().all(|m| m.status() != Some(180)), "no artificial ringing");
    assert_eq!(ok.status(), Some(200));
    assert!(
        ok.body().contains("m=audio ") && ok.body().contains(" RTP/AVP 0 101\r\n"),
        "{}",
        ok.body()
    );
    assert!(ok.body().contains("a=rtpmap:101 telephone-event/8000"));
    assert!(ok.header("Contact").is_some_and(|c| c.starts_with("<sip:precall@127.0.0.1:")));
    c.ack("").await;

    // 2 s of greeting: consecutive sequence numbers, +160 timestamps, one SSRC,
    // marker on the first packet, and exactly the greeting's μ-law frames.
    let mut packets = Vec::new();
    while packets.len() < 100 {
        let (data, _, from) = c.recv_rtp(SEC).await.expect("RTP keeps flowing");
        assert_eq!(from.port(), ok.sdp_port().unwrap(), "RTP comes from the port in our SDP");
        packets.push(data);
    }
    let parsed: Vec<_> = packets.iter().map(|p| RtpPacket::parse(p).unwrap()).collect();
    assert!(parsed[0].header.marker);
    for (i, p) in parsed.iter().enumerate() {
        assert_eq!(p.header.payload_type, 0);
        assert_eq!(p.header.ssrc, parsed[0].header.ssrc);
        assert_eq!(p.header.sequence, parsed[0].header.sequence.wrapping_add(i as u16));
        assert_eq!(p.header.timestamp, parsed[0].header.timestamp.wrapping_add(160 * i as u32));
        assert_eq!(
            p.payload,
            daemon.prompts.greeting.frame(G711::Ulaw, i as u64),
            "frame {i} is the greeting"
        );
        if i > 0 {
            assert!(!p.header.marker);
        }
    }
    let ok = c.bye().await;
    assert_eq!(ok.status(), Some(200));
    // Media stops at once.
    tokio::time::sleep(Duration::from_millis(60)).await;
    while c.recv_rtp(Duration::from_millis(1)).await.is_some() {}
    assert!(c.recv_rtp(Duration::from_millis(200)).await.is_none(), "no RTP after BYE");
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn tcp_call_with_pcma_and_daemon_side_bye_on_rtp_timeout() {
    let daemon = start_daemon(|s| s.rtp.timeout_seconds = 1).await;
    let mut c = Caller::tcp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "8 0", "sendrecv")).await;
    let (_, ok) = c.final_response(SEC).await;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.header("Contact").is_some_and(|c| c.contains(";transport=tcp")));
    c.ack("").await;
    let (data, _, _) = c.recv_rtp(SEC).await.unwrap();
    let p = RtpPacket::parse(&data).unwrap();
    assert_eq!(p.header.payload_type, 8);
    assert_eq!(p.payload, daemon.prompts.greeting.frame(G711::Alaw, 0));
    // We never send RTP: after 1 s the daemon hangs up on the same TCP connection.
    let bye = c
        .recv_until(3 * SEC, |m| m.method() == Some("BYE"))
        .await
        .expect("BYE on RTP timeout");
    assert!(bye.header("Reason").is_some_and(|r| r.contains("rtp_timeout")), "{}", bye.text);
    assert!(bye.header("To").is_some_and(|t| t.contains(&c.from_tag)));
    c.ok_to(&bye).await;
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn delayed_offer_gets_our_offer_and_uses_the_answer_from_the_ack() {
    let daemon = start_daemon(|_| {}).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite("").await;
    let (_, ok) = c.final_response(SEC).await;
    assert_eq!(ok.status(), Some(200));
    assert!(ok.body().contains("RTP/AVP 0 8 101"), "our offer: {}", ok.body());
    assert!(c.recv_rtp(Duration::from_millis(150)).await.is_none(), "no media before the answer");
    c.ack(&offer(c.rtp_port(), "8 101", "sendrecv")).await;
    let (data, _, _) = c.recv_rtp(SEC).await.expect("media after the ACK's answer");
    assert_eq!(RtpPacket::parse(&data).unwrap().header.payload_type, 8);
    assert_eq!(c.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn rejections_no_common_codec_no_audio_and_capacity() {
    let daemon = start_daemon(|s| s.limits.max_calls = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "9 18", "sendrecv")).await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(488));
    assert!(r.text.starts_with("SIP/2.0 488 Not Acceptable Here: no common codec"), "{}", r.text);
    assert!(r.header("Warning").is_some_and(|w| w.starts_with("305 precall \"")), "{}", r.text);
    c.ack("").await;

    // Well-formed offers without an acceptable stream: 488 with a Warning (RFC
    // 3261 §20.43) so an SBC can fall back, e.g. to plain RTP.
    for (body, code) in [("v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 5000 RTP/AVP 31\r\n", "304")] {
        let mut c = Caller::udp(daemon.sip_addr).await;
        c.invite(body).await;
        let (_, r) = c.final_response(SEC).await;
        assert_eq!(r.status(), Some(488), "{}", r.text);
        let warning = r.header("Warning").unwrap_or_default();
        assert!(warning.starts_with(&format!("{code} precall \"")), "{}", r.text);
        assert!(warning.contains("304 precall"), "{}", r.text);
        c.ack("").await;
    }
    // SDES keys in clear (over UDP): refused, and the reason says why.
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n").await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(488), "{}", r.text);
    assert!(r.text.contains("must be sent over SIP over TLS, not UDP"), "{}", r.text);
    assert!(r.header("Warning").is_some_and(|w| w.starts_with("302 precall \"")), "{}", r.text);
    c.ack("").await;
    // DTLS-SRTP without a usable SHA-256 fingerprint: refused, saying so.
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 5000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 AB:CD\r\n")
        .await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(488), "{}", r.text);
    assert!(r.text.contains("a=fingerprint:sha-256"), "{}", r.text);
    c.ack("").await;
    // SDP that does not parse stays 400.
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite("v=0\r\nm=audio port RTP/AVP 0\r\n").await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(400), "{}", r.text);
    c.ack("").await;

    let mut first = Caller::udp(daemon.sip_addr).await;
    first.invite(&offer(first.rtp_port(), "0", "sendrecv")).await;
    assert_eq!(first.final_response(SEC).await.1.status(), Some(200));
    first.ack("").await;
    let mut second = Caller::udp(daemon.sip_addr).await;
    second.invite(&offer(second.rtp_port(), "0", "sendrecv")).await;
    let (_, busy) = second.final_response(SEC).await;
    assert_eq!(busy.status(), Some(503));
    assert_eq!(busy.header("Retry-After"), Some("30"));
    assert_eq!(first.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn symmetric_rtp_follows_where_the_callers_media_comes_from() {
    let daemon = start_daemon(|_| {}).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    // The SDP names a private address (a NAT's inside view)…
    let natted = offer(4000, "0", "sendrecv").replace("c=IN IP4 127.0.0.1", "c=IN IP4 10.255.0.1");
    c.invite(&natted).await;
    let (_, ok) = c.final_response(SEC).await;
    c.ack("").await;
    // …but the caller's RTP really comes from `c.rtp`.
    let target = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), ok.sdp_port().unwrap());
    for seq in 1..=3u8 {
        let mut pkt = vec![0x80, 0, 0, seq, 0, 0, seq, 0, 0, 0, 0, 42];
        pkt.extend_from_slice(&[0xFF; 160]);
        c.rtp.send_to(&pkt, target).await.unwrap();
    }
    let (data, _, _) = c.recv_rtp(SEC).await.expect("RTP latched to the real source");
    assert!(RtpPacket::parse(&data).is_ok());
    assert_eq!(c.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn hold_and_resume_with_reinvite() {
    let daemon = start_daemon(|_| {}).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, ok) = c.final_response(SEC).await;
    c.ack("").await;
    let first = RtpPacket::parse(&c.recv_rtp(SEC).await.unwrap().0).unwrap().header;
    // Hold: we may not send any more.
    c.cseq += 1;
    let hold = c.in_dialog("INVITE", c.cseq, "z9hG4bK-hold", &offer(c.rtp_port(), "0", "sendonly"), "");
    c.send(&hold).await;
    let r = c.recv_until(SEC, |m| m.status() == Some(200)).await.unwrap();
    assert!(r.body().contains("a=recvonly"), "{}", r.body());
    assert_eq!(r.sdp_port(), ok.sdp_port(), "same media port");
    assert!(r.body().contains("o=precall ") && r.body() != ok.body(), "new SDP version");
    c.ack("").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    while c.recv_rtp(Duration::from_millis(1)).await.is_some() {}
    assert!(c.recv_rtp(Duration::from_millis(300)).await.is_none(), "silent while held");
    // Resume: media continues on the same timeline (same SSRC, timestamps moved on).
    c.cseq += 1;
    let resume = c.in_dialog("INVITE", c.cseq, "z9hG4bK-resume", &offer(c.rtp_port(), "0", "sendrecv"), "");
    c.send(&resume).await;
    let r = c.recv_until(SEC, |m| m.status() == Some(200)).await.unwrap();
    assert!(r.body().contains("a=sendrecv"));
    c.ack("").await;
    let again = RtpPacket::parse(&c.recv_rtp(SEC).await.unwrap().0).unwrap().header;
    assert_eq!(again.ssrc, first.ssrc);
    assert!(again.marker, "a new talkspurt after the hold");
    assert!(
        again.timestamp.wrapping_sub(first.timestamp) >= 160 * 15,
        "the clock ran during the hold"
    );
    assert_eq!(c.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn cancel_while_ringing_gets_200_and_487() {
    let daemon = start_daemon(|s| s.sip.answer_delay_ms = 2000).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let ringing = c
        .recv_until(SEC, |m| m.status() == Some(180))
        .await
        .expect("180 when answer_delay_ms is set");
    let cancel = c
        .last_invite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace(&format!("{} INVITE", c.cseq), &format!("{} CANCEL", c.cseq));
    let cancel = cancel.split("Content-Type").next().unwrap().to_owned() + "Content-Length: 0\r\n\r\n";
    c.send(&cancel).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = c.recv(SEC).await.expect("200 and 487");
        got.push((m.status(), m.header("CSeq").map(str::to_owned), m.to_tag()));
    }
    got.sort();
    assert_eq!(got[0].0, Some(200));
    assert!(got[0].1.as_deref().is_some_and(|c| c.ends_with("CANCEL")));
    assert_eq!(got[1].0, Some(487));
    assert_eq!(got[1].2, ringing.to_tag(), "487 carries the 180's To tag");
    c.to_tag = got[1].2.clone();
    let ack = c.in_dialog("ACK", c.cseq, &c.invite_branch.clone(), "", "");
    c.send(&ack).await;
    assert!(c.recv_rtp(Duration::from_millis(200)).await.is_none());
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn garbage_sip_and_rtp_never_take_the_daemon_down() {
    // Every datagram must reach the parser here, so the per-source limits are lifted.
    let daemon = start_daemon(|r| {
        r.sip.request_rate = 1e9;
        r.sip.request_burst = 1e9;
        r.sip.invite_rate = 1e9;
        r.sip.invite_burst = 1e9;
    })
    .await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, ok) = c.final_response(SEC).await;
    c.ack("").await;
    let rtp_target = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), ok.sdp_port().unwrap());
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let invite = c.invite_text(&offer(c.rtp_port(), "0", "sendrecv"), "").into_bytes();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for i in 0..3000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let datagram: Vec<u8> = match i % 3 {
            0 => invite[..(x as usize) % invite.len()].to_vec(),
            1 => (0..(x % 1400)).map(|k| (x.rotate_left(k as u32 % 64) & 0xFF) as u8).collect(),
            _ => {
                let mut m = invite.clone();
                let at = (x as usize) % m.len();
                m[at] = (x >> 16) as u8;
                m
            }
        };
        junk.send_to(&datagram, daemon.sip_addr).await.unwrap();
        let rtp_junk: Vec<u8> = (0..(x % 200)).map(|k| (x >> (k % 56)) as u8).collect();
        junk.send_to(&rtp_junk, rtp_target).await.unwrap();
        if i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Still alive: the call still gets media and the daemon still answers.
    assert!(c.recv_rtp(SEC).await.is_some());
    let r = options_probe(&daemon).await;
    assert_eq!(r.status(), Some(200));
    assert!(r.header("Allow").is_some_and(|a| a.contains("INVITE")));
    assert_eq!(c.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
}

#[tokio::test]
async fn shutdown_refuses_new_calls_and_hangs_up_after_the_drain() {
    let daemon = start_daemon(|s| s.limits.drain_seconds = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    c.final_response(SEC).await;
    c.ack("").await;
    daemon.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut late = Caller::udp(daemon.sip_addr).await;
    late.invite(&offer(late.rtp_port(), "0", "sendrecv")).await;
    let (_, r) = late.final_response(SEC).await;
    assert_eq!(r.status(), Some(503));
    assert!(r.header("Retry-After").is_some());
    let bye = c
        .recv_until(3 * SEC, |m| m.method() == Some("BYE"))
        .await
        .expect("BYE after the drain");
    assert!(bye.header("Reason").is_some_and(|r| r.contains("shutdown")));
    c.ok_to(&bye).await;
    let store = daemon.store.clone();
    let records = daemon.records.clone();
    tokio::time::timeout(5 * SEC, daemon.handle.wait())
        .await
        .expect("daemon exits after the drain");
    // Both calls are on record: the one we hung up, and the one refused while draining.
    assert!(records.flush(5 * SEC).await);
    let ended = store.call_by_external_id(&c.call_id).await.unwrap().expect("call recorded");
    assert_eq!(ended.row.end_reason.as_deref(), Some("shutdown"));
    assert!(ended.row.answered_at.is_some() && ended.row.ended_at.is_some());
    let refused = store
        .call_by_external_id(&late.call_id)
        .await
        .unwrap()
        .expect("refused call recorded");
    assert_eq!(
        (refused.row.end_reason.as_deref(), refused.row.end_status),
        (Some("rejected"), Some(503))
    );
}

/// Issue 13 #7: drain ends within `limits.drain_seconds` plus a small bound
/// (2 s), whatever state the calls are in: one answered but never ACKed, one
/// whose caller never answers our BYE. Both are on record. OPTIONS probes hear
/// 503 while draining, so a dispatcher stops sending.
#[tokio::test]
async fn drain_is_bounded_for_unacked_calls_and_unanswered_byes() {
    let daemon = start_daemon(|s| s.limits.drain_seconds = 1).await;
    let mut unacked = Caller::udp(daemon.sip_addr).await;
    unacked.invite(&offer(unacked.rtp_port(), "0", "sendrecv")).await;
    assert_eq!(unacked.final_response(SEC).await.1.status(), Some(200));
    let mut deaf = Caller::udp(daemon.sip_addr).await;
    deaf.invite(&offer(deaf.rtp_port(), "0", "sendrecv")).await;
    deaf.final_response(SEC).await;
    deaf.ack("").await;
    let started = std::time::Instant::now();
    daemon.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = options_probe(&daemon).await;
    assert_eq!(r.status(), Some(503), "a draining node says so to probes");
    let store = daemon.store.clone();
    let records = daemon.records.clone();
    tokio::time::timeout(10 * SEC, daemon.handle.wait()).await.expect("daemon exits");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000 + 2000 + 1000),
        "drain took {took:?}, more than drain_seconds + 2 s (+1 s of slack)"
    );
    assert!(records.flush(5 * SEC).await);
    for c in [&unacked, &deaf] {
        let row = store.call_by_external_id(&c.call_id).await.unwrap().expect("call recorded").row;
        assert_eq!(row.end_reason.as_deref(), Some("shutdown"), "{row:?}");
        assert!(row.ended_at.is_some());
    }
}

/// An out-of-dialog OPTIONS, as a load balancer's probe sends it; the answer.
async fn options_probe(daemon: &common::TestDaemon) -> common::Msg {
    let mut probe = Caller::udp(daemon.sip_addr).await;
    probe
        .send(&format!(
            "OPTIONS sip:{d} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bK-probe{n}\r\nFrom: <sip:lb@{l}>;tag=1\r\nTo: <sip:{d}>\r\nCall-ID: probe{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            d = daemon.sip_addr,
            l = probe.local,
            n = common::rand_u64()
        ))
        .await;
    probe.recv_until(SEC, |m| m.status().is_some()).await.expect("OPTIONS answered")
}

async fn wait_idle(daemon: &common::TestDaemon) {
    for _ in 0..100 {
        if daemon.stats.live_calls.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("calls did not end");
}

#[tokio::test]
async fn a_mapped_caller_ends_cloned_and_an_unmapped_one_unmapped() {
    use precall::clone::{CloneConfig, CloneService};
    use precall::elevenlabs::rest::{Client, ClientConfig};
    let sim = precall::sim::Simulator::start("127.0.0.1:0".parse().unwrap(), "k").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut raw = precall::config::RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    raw.rtp.port_min = 41000;
    raw.rtp.port_max = 41098;
    let settings = precall::config::Settings::compile(raw).unwrap();
    let data_dir = settings.data_dir.clone();
    let base = sim.base_url();
    let daemon = common::start_full(settings, dir, move |store, sink| {
        let client = Client::new(ClientConfig {
            base_url: base,
            api_key: "k".into(),
            max_concurrent_requests: 2,
            request_timeout: SEC * 5,
        })
        .unwrap();
        Some(CloneService::new(
            store.clone(),
            client,
            sink.clone(),
            CloneConfig {
                max_wait: SEC * 5,
                cache_ttl: SEC * 3600,
                default_voice_id: "default".into(),
                remove_background_noise: false,
                data_dir,
                request_timeout: SEC * 5,
                orphan_grace: Duration::from_secs(900),
            },
        ))
    })
    .await;
    daemon.store.migrate().await.unwrap();
    let wav = daemon.settings.data_dir.join("alice.wav");
    std::fs::write(&wav, b"RIFF\x24\0\0\0WAVEfmt alice").unwrap();
    // The test caller's From is +15551234567.
    precall::callers::add(&daemon.store, &daemon.settings.data_dir, "+15551234567", &[wav], None, None)
        .await
        .unwrap();

    let mut mapped = Caller::udp(daemon.sip_addr).await;
    mapped.invite(&offer(mapped.rtp_port(), "0", "sendrecv")).await;
    mapped.final_response(SEC).await;
    mapped.ack("").await;
    // The greeting plays while the clone runs.
    assert!(mapped.recv_rtp(SEC).await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mapped.bye().await.status(), Some(200));

    let mut unmapped = Caller::udp(daemon.sip_addr).await;
    let invite = unmapped
        .invite_text(&offer(unmapped.rtp_port(), "0", "sendrecv"), "")
        .replace("+15551234567", "+15559990000");
    unmapped.send(&invite).await;
    unmapped.final_response(SEC).await;
    unmapped.ack("").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(unmapped.bye().await.status(), Some(200));
    wait_idle(&daemon).await;
    assert!(daemon.records.flush(SEC * 5).await);

    let row = daemon.store.call_by_external_id(&mapped.call_id).await.unwrap().unwrap().row;
    assert_eq!(row.clone_outcome.as_deref(), Some("cloned"), "{row:?}");
    assert!(row.voice_id.as_deref().is_some_and(|v| v.starts_with("sim")), "{row:?}");
    assert_eq!(row.caller.as_deref(), Some("+15551234567"));
    let row = daemon.store.call_by_external_id(&unmapped.call_id).await.unwrap().unwrap().row;
    assert_eq!(
        (row.clone_outcome.as_deref(), row.voice_id.as_deref()),
        (Some("unmapped"), Some("default"))
    );
    assert_eq!(sim.requests().len(), 1);
}
