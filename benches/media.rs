//! Hot-path costs: G.711, building and parsing RTP, the receiver's statistics, and
//! the SIP endpoint's work for one call (INVITE → 100/200 → ACK → BYE → 200).
//! Run: `cargo bench --bench media`. Figures go to docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use precall::media::g711::G711;
use precall::media::prompt::Prompt;
use precall::media::rtp::RtpPacket;
use precall::media::session::{MAX_PACKET, RtpReceiver, RtpSender};
use precall::sip::endpoint::{Endpoint, EndpointConfig, Output, SipEvent};
use precall::sip::message;
use precall::sip::sdp::{self, LocalMedia, SessionDescription};
use precall::sip::{Flow, Transport};

const INVITE: &str = "INVITE sip:+15550001111@192.0.2.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-{n};rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:+15551234567@192.0.2.7:5062>;tag=a{n}\r\n\
To: <sip:+15550001111@192.0.2.1:5060>\r\n\
Call-ID: {n}@192.0.2.7\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.0.2.7:5062>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn codecs(c: &mut Criterion) {
    let pcm: Vec<i16> = (0..160).map(|i| ((i as f32 * 0.3).sin() * 12000.0) as i16).collect();
    let mut out = [0u8; 160];
    c.bench_function("g711 ulaw encode 20 ms", |b| {
        b.iter(|| G711::Ulaw.encode(black_box(&pcm), &mut out))
    });
    let mut back = [0i16; 160];
    c.bench_function("g711 ulaw decode 20 ms", |b| {
        b.iter(|| G711::Ulaw.decode(black_box(&out), &mut back))
    });
}

fn rtp(c: &mut Criterion) {
    let prompt = Prompt::from_pcm_8k(vec![1000; 8000]);
    let t0 = Instant::now();
    let mut sender = RtpSender::new(1, 0, 0, 0, t0);
    let mut buf = [0u8; MAX_PACKET];
    let mut n = 0u64;
    c.bench_function("rtp build one greeting packet", |b| {
        b.iter(|| {
            n += 1;
            black_box(sender.write_next(prompt.frame(G711::Ulaw, n), &mut buf))
        })
    });
    let mut receiver = RtpReceiver::new(8000, t0);
    let mut seq = 0u16;
    c.bench_function("rtp parse + receiver stats", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            black_box(
                receiver
                    .on_datagram(t0 + Duration::from_millis(u64::from(seq) * 20), &buf[..172])
                    .is_ok(),
            )
        })
    });
    c.bench_function("rtp parse only", |b| {
        b.iter(|| black_box(RtpPacket::parse(black_box(&buf[..172])).is_ok()))
    });
}

fn sip(c: &mut Criterion) {
    let invite = INVITE.replace("{n}", "1");
    c.bench_function("sip parse + validate INVITE", |b| {
        b.iter(|| black_box(message::Request::validate(message::parse(black_box(invite.as_bytes())).unwrap()).is_ok()))
    });
    let local = LocalMedia {
        addr: "192.0.2.1".parse().unwrap(),
        port: 10000,
        session_id: 1,
        version: 1,
        security: Default::default(),
    };
    let offer = INVITE.split("\r\n\r\n").nth(1).unwrap();
    c.bench_function("sdp parse + answer", |b| {
        b.iter(|| black_box(sdp::answer(&SessionDescription::parse(black_box(offer.as_bytes())).unwrap(), &local).is_ok()))
    });
    let flow = Flow {
        transport: Transport::Udp,
        remote: "192.0.2.7:5062".parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
    };
    let mut ep = Endpoint::new(EndpointConfig {
        user_agent: "bench".into(),
        timers: Default::default(),
        public_addr: None,
        session: Default::default(),
        auth: None,
    });
    let mut n = 0u64;
    c.bench_function("sip endpoint: INVITE, answer, ACK, BYE (one call)", |b| {
        b.iter(|| {
            n += 1;
            let now = Instant::now();
            ep.handle_datagram(now, flow, INVITE.replace("{n}", &n.to_string()).as_bytes());
            let mut tag = String::new();
            while let Some(o) = ep.poll_output() {
                if let Output::Event(SipEvent::Invite { call, .. }) = o {
                    ep.accept(now, call, b"v=0\r\n");
                }
            }
            while let Some(o) = ep.poll_output() {
                if let Output::Transmit(t) = o {
                    let text = String::from_utf8(t.data).unwrap();
                    tag = text.split(";tag=").nth(2).and_then(|r| r.split("\r\n").next()).unwrap_or("").to_owned();
                }
            }
            for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
                let msg = format!(
                    "{method} sip:precall@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-{method}{n}\r\nFrom: <sip:+15551234567@192.0.2.7:5062>;tag=a{n}\r\nTo: <sip:+15550001111@192.0.2.1:5060>;tag={tag}\r\nCall-ID: {n}@192.0.2.7\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
                );
                ep.handle_datagram(now, flow, msg.as_bytes());
                while ep.poll_output().is_some() {}
            }
            // Let Timer J expire so the benchmark measures steady state, not growth.
            ep.handle_timeout(now + Duration::from_secs(40));
            while ep.poll_output().is_some() {}
        })
    });
}

/// The bridge's per-frame work in each direction, resampled (PCM 16 kHz agent)
/// and passthrough (μ-law agent).
fn bridge(c: &mut Criterion) {
    use precall::elevenlabs::agent::AudioFormat;
    use precall::media::bridge::Bridge;
    let frame = [0x55u8; 160];
    let agent_20ms: Vec<u8> = (0..320i16).flat_map(|i| (i * 37).to_le_bytes()).collect();
    let mut out = Vec::with_capacity(1024);
    for (name, format) in [("pcm_16000", AudioFormat::Pcm(16000)), ("ulaw_8000", AudioFormat::Ulaw8000)] {
        let mut b = Bridge::new(G711::Ulaw, format, format, 10).unwrap();
        c.bench_function(&format!("bridge caller->agent 20 ms ({name})"), |bench| {
            bench.iter(|| {
                out.clear();
                b.caller_frame(Some(black_box(&frame)), &mut out);
            })
        });
        let agent = if format == AudioFormat::Ulaw8000 {
            &frame[..]
        } else {
            &agent_20ms[..]
        };
        c.bench_function(&format!("bridge agent->caller 20 ms ({name})"), |bench| {
            bench.iter(|| {
                b.agent_audio(1, black_box(agent));
                black_box(b.next_frame());
            })
        });
    }
}

/// SRTP per 20 ms G.711 packet, each suite, both directions: what an
/// encrypted call adds to the media path (docs/PERFORMANCE.md).
fn srtp(c: &mut Criterion) {
    use precall::media::srtp::{KeyMaterial, MAX_KEY, SrtpParams, SrtpSession, Suite};
    for suite in Suite::ALL {
        let key = KeyMaterial::from_random(suite, &[5; MAX_KEY]);
        let params = SrtpParams {
            tag: 1,
            suite,
            local: key,
            remote: key,
        };
        let mut tx = SrtpSession::new(params).expect("session");
        let mut buf = [0u8; 256];
        buf[0] = 0x80;
        let mut seq = 0u16;
        c.bench_function(&format!("srtp protect 20 ms PCMU ({})", suite.name()), |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                black_box(tx.protect_rtp(&mut buf, 172).expect("protect"))
            })
        });
        // A stream of protected packets to decrypt in order.
        let mut sender = SrtpSession::new(params).expect("session");
        let packets: Vec<Vec<u8>> = (0..20_000u32)
            .map(|i| {
                let mut p = [0u8; 256];
                p[0] = 0x80;
                p[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                let n = sender.protect_rtp(&mut p, 172).expect("protect");
                p[..n].to_vec()
            })
            .collect();
        let mut out = [0u8; 2048];
        c.bench_function(&format!("srtp unprotect 20 ms PCMU ({})", suite.name()), |b| {
            b.iter_batched(
                || SrtpSession::new(params).expect("session"),
                |mut rx| {
                    for p in packets.iter().take(100) {
                        black_box(rx.unprotect_rtp(p, &mut out).expect("authentic"));
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

/// The floor under every call's CPU: the syscalls one RTP packet costs on this
/// kernel (loopback, so the send also pays for delivery into the receiving
/// socket, as it does in `bridge_load` and `loadgen`). docs/PERFORMANCE.md
/// divides the per-call CPU figures by these.
fn syscalls(c: &mut Criterion) {
    use std::net::UdpSocket;
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = rx.local_addr().expect("addr");
    rx.set_nonblocking(true).expect("nonblocking");
    let packet = [0x80u8; 172];
    let mut buf = [0u8; 2048];
    c.bench_function("udp sendto + recvfrom, 172 B RTP packet, loopback", |b| {
        b.iter(|| {
            let _ = tx.send_to(black_box(&packet), to);
            black_box(rx.recv_from(&mut buf).ok());
        })
    });
    c.bench_function("udp recvfrom on an empty socket (the EAGAIN that re-arms readiness)", |b| {
        b.iter(|| black_box(rx.recv_from(&mut buf).is_err()))
    });
}

criterion_group!(benches, codecs, rtp, sip, bridge, srtp, syscalls);
criterion_main!(benches);
