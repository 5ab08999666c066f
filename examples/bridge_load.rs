//! Bridge benchmark for docs/PERFORMANCE.md: the release daemon, bridged to an
//! ElevenLabs simulator running in this process, under N concurrent calls.
//!
//!     cargo build --release && cargo run --release --example bridge_load -- --calls 100 --hold 12
//!
//! `--srtp true` makes every call SDES-SRTP (AES_CM_128_HMAC_SHA1_80): the
//! callers offer RTP/SAVP over UDP signalling (the daemon is started with
//! `rtp.srtp_allow_insecure_sdes`), encrypt what they send and decrypt what
//! they hear, so the daemon's CPU figure includes SRTP both ways.
//!
//! Each caller talks in bursts (400 ms of voice every 3 s, silence between);
//! the simulator's agent answers each turn. Measured, on one clock (the
//! simulator and the callers share this process):
//! - caller → agent: burst sent as RTP → its first loud chunk reaches the agent;
//! - agent → caller: the agent starts sending a reply turn → its first loud RTP
//!   frame reaches the caller;
//! - the daemon's CPU time from /proc, per bridged call.
//!
//! Caller audio is forwarded as it arrives and an agent turn starts at once,
//! so the figures are the bridge's own processing and IO; the resampler's
//! filter delay (about 2 ms at 16 kHz) is in the audio, not in these times.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use precall::elevenlabs::agent::AudioFormat;
use precall::media::g711;
use precall::sim::{AgentKnobs, Simulator};
use tokio::net::UdpSocket;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_ticks, fds, pct, rss_kib};

struct Args {
    bin: String,
    calls: usize,
    hold: Duration,
    ulaw: bool,
    srtp: bool,
    /// Bridge to the agent; `false` keeps every call on the greeting (the
    /// greeting-phase cost).
    agent: bool,
    port: u16,
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: "target/release/precall".into(),
        calls: 10,
        hold: Duration::from_secs(12),
        ulaw: false,
        srtp: false,
        agent: true,
        port: 5090,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--bin" => a.bin = v,
            "--calls" => a.calls = v.parse().expect("--calls N"),
            "--hold" => a.hold = Duration::from_secs_f64(v.parse().expect("--hold seconds")),
            "--ulaw" => a.ulaw = v == "true",
            "--srtp" => a.srtp = v == "true",
            "--agent" => a.agent = v != "false",
            "--port" => a.port = v.parse().expect("--port"),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

#[derive(Default)]
struct CallResult {
    ok: bool,
    caller: String,
    bursts: Vec<Instant>,
    loud_onsets: Vec<Instant>,
}

fn loud(payload: &[u8]) -> bool {
    let sum: i64 = payload.iter().map(|&b| i64::from(g711::ulaw_to_linear(b)).abs()).sum();
    sum / payload.len().max(1) as i64 > 1000
}

/// An SRTP context for one direction of a call (AES_CM_128_HMAC_SHA1_80).
fn srtp_context(key: &[u8]) -> Option<webrtc_srtp::context::Context> {
    use webrtc_srtp::protection_profile::ProtectionProfile;
    webrtc_srtp::context::Context::new(key.get(..16)?, key.get(16..30)?, ProtectionProfile::Aes128CmHmacSha1_80, None, None).ok()
}

async fn one_call(n: usize, target: SocketAddr, hold: Duration, srtp: bool) -> CallResult {
    let mut r = CallResult {
        caller: format!("+1666{n:07}"),
        ..CallResult::default()
    };
    let sip = UdpSocket::bind("127.0.0.1:0").await.expect("bind sip");
    let rtp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind rtp"));
    let local = sip.local_addr().expect("addr");
    let rtp_port = rtp.local_addr().expect("addr").port();
    let call_id = format!("bridge-{n}-{}@127.0.0.1", std::process::id());
    use base64::Engine as _;
    let our_key: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(31).wrapping_add(n as u8)).collect();
    let sdp = if srtp {
        format!(
            "v=0\r\no=load 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(&our_key)
        )
    } else {
        format!("v=0\r\no=load 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\n")
    };
    let from = format!("<sip:{}@{local}>;tag=f{n}", r.caller);
    let invite = format!(
        "INVITE sip:+15550001111@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-b{n};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:+15550001111@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:load@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), target).await.expect("send INVITE");
    let mut buf = vec![0u8; 65536];
    let (to_tag, media_port, their_key) = loop {
        let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(5), sip.recv_from(&mut buf)).await else {
            return r;
        };
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with("SIP/2.0 200") {
            let tag = text
                .lines()
                .find(|l| l.starts_with("To:"))
                .and_then(|l| l.split(";tag=").nth(1))
                .unwrap_or("")
                .to_owned();
            let port: u16 = text
                .lines()
                .find_map(|l| l.strip_prefix("m=audio "))
                .and_then(|l| l.split(' ').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.trim()).ok());
            break (tag, port, key);
        }
        if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
            return r;
        }
    };
    let dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:precall@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{method}{n}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:+15550001111@{target}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let rx = {
        let rtp = rtp.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut decrypt = their_key.as_deref().and_then(srtp_context);
            let mut onsets = Vec::new();
            let mut was_loud = false;
            let mut source = None;
            let end = Instant::now() + hold + Duration::from_secs(1);
            while let Ok(Ok((n, src))) = tokio::time::timeout_at(end.into(), rtp.recv_from(&mut buf)).await {
                source.get_or_insert(src);
                let plain = match decrypt.as_mut() {
                    Some(ctx) => match ctx.decrypt_rtp(&buf[..n]) {
                        Ok(p) => p.to_vec(),
                        Err(_) => continue,
                    },
                    None => buf[..n].to_vec(),
                };
                if plain.len() > 12 {
                    let l = loud(&plain[12..]);
                    if l && !was_loud {
                        onsets.push(Instant::now());
                    }
                    was_loud = l;
                }
            }
            onsets
        })
    };
    sip.send_to(dialog("ACK", 1).as_bytes(), target).await.expect("send ACK");
    let mut encrypt = if srtp { srtp_context(&our_key) } else { None };
    let dest = SocketAddr::from(([127, 0, 0, 1], media_port));
    let start = Instant::now();
    let talk_until = start + hold;
    let voice: Vec<u8> = precall::sim::speak("bridge-caller", 8000, 0.4)
        .iter()
        .map(|&s| g711::ulaw_encode(s))
        .collect();
    let mut pkt = [0xFFu8; 172];
    pkt[0] = 0x80;
    pkt[1] = 0; // PCMU, no marker
    pkt[8..12].copy_from_slice(&(n as u32).to_be_bytes());
    let mut seq = 0u16;
    let mut next = start;
    // First burst after the greeting (0.5 s) and the agent's first message (1 s).
    let mut burst_at = start + Duration::from_millis(2500);
    let mut burst_pos: Option<usize> = None;
    while next < talk_until {
        if burst_pos.is_none() && next >= burst_at {
            burst_pos = Some(0);
            burst_at += Duration::from_secs(3);
        }
        match burst_pos {
            Some(p) if p < voice.len() => {
                if p == 0 {
                    r.bursts.push(Instant::now());
                }
                pkt[12..].copy_from_slice(&voice[p..p + 160]);
                burst_pos = Some(p + 160);
            }
            _ => {
                pkt[12..].fill(0xFF);
                burst_pos = None;
            }
        }
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        match encrypt.as_mut() {
            Some(ctx) => {
                if let Ok(p) = ctx.encrypt_rtp(&pkt) {
                    let _ = rtp.send_to(&p, dest).await;
                }
            }
            None => {
                let _ = rtp.send_to(&pkt, dest).await;
            }
        }
        seq = seq.wrapping_add(1);
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next.into()).await;
    }
    sip.send_to(dialog("BYE", 2).as_bytes(), target).await.expect("send BYE");
    let got_ok = loop {
        let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(5), sip.recv_from(&mut buf)).await else {
            break false;
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.starts_with("SIP/2.0 200") && text.contains(" BYE\r\n") {
            break true;
        }
    };
    r.loud_onsets = rx.await.unwrap_or_default();
    r.ok = got_ok;
    r
}

fn spawn_daemon(a: &Args, sim: &Simulator, dir: &std::path::Path) -> Child {
    let greeting = dir.join("greeting.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&greeting, spec).expect("greeting");
    for i in 0..4000 {
        w.write_sample((3000.0 * (2.0 * std::f64::consts::PI * 1000.0 * f64::from(i) / 8000.0).sin()) as i16)
            .expect("greeting");
    }
    w.finalize().expect("greeting");
    Command::new(&a.bin)
        .arg("serve")
        .env("PRECALL_SIP__LISTEN", format!("127.0.0.1:{}", a.port))
        .env("PRECALL_HTTP__LISTEN", "127.0.0.1:0")
        .env("PRECALL_SIP__INVITE_RATE", "100000")
        .env("PRECALL_SIP__INVITE_BURST", "100000")
        // Every caller shares 127.0.0.1, like calls from one trunk: trusted, so
        // the per-source request budget (meant for strangers) does not drop
        // the 500 BYEs that arrive in the same instant.
        .env("PRECALL_SIP__TRUSTED_CIDRS", "127.0.0.1/32")
        .env("PRECALL_RTP__PORT_MIN", "40000")
        .env("PRECALL_RTP__PORT_MAX", "49998")
        .env("PRECALL_LIMITS__MAX_CALLS", "2000")
        .env("PRECALL_RTP__SRTP_ALLOW_INSECURE_SDES", if a.srtp { "true" } else { "false" })
        .env(
            "PRECALL_LOG__LEVEL",
            std::env::var("BRIDGE_LOAD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("PRECALL_DATA__DIR", dir)
        .env("PRECALL_GREETING__FILE", &greeting)
        .env("ELEVENLABS_API_KEY", "bench-key")
        .env("PRECALL_ELEVENLABS__BASE_URL", sim.base_url())
        .env("ELEVENLABS_AGENT_ID", if a.agent { "sim-agent" } else { "" })
        .stdout(if std::env::var_os("BRIDGE_LOAD_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the daemon (build it with cargo build --release)")
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), "bench-key")
        .await
        .expect("simulator");
    let format = if a.ulaw { AudioFormat::Ulaw8000 } else { AudioFormat::Pcm(16000) };
    sim.set_agent_knobs(AgentKnobs {
        input_format: format,
        output_format: format,
        first_message_seconds: 1.0,
        reply_seconds: 1.0,
        ..AgentKnobs::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = spawn_daemon(&a, &sim, dir.path());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let target: SocketAddr = format!("127.0.0.1:{}", a.port).parse().expect("addr");

    let (rss0, fds0) = (rss_kib(daemon.id()), fds(daemon.id()));
    // Calls start over one second; CPU is measured over the window where all are live.
    let mut tasks = Vec::new();
    for n in 0..a.calls {
        let (hold, srtp) = (a.hold, a.srtp);
        tasks.push(tokio::spawn(async move { one_call(n, target, hold, srtp).await }));
        tokio::time::sleep(Duration::from_secs(1) / a.calls as u32).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = a.hold.saturating_sub(Duration::from_secs(5));
    let cpu0 = cpu_ticks(daemon.id());
    tokio::time::sleep(window).await;
    let cpu = cpu0.zip(cpu_ticks(daemon.id())).map(|(c0, c1)| (c1 - c0) as f64 / 100.0);
    let (rss_live, fds_live) = (rss_kib(daemon.id()), fds(daemon.id()));

    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let convs = sim.conversations();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    if std::env::var_os("BRIDGE_LOAD_DEBUG").is_some() {
        for c in &convs {
            eprintln!(
                "conv caller={} onsets={} turns={} chunks={}",
                c.initiation["dynamic_variables"]["caller_number"],
                c.speech_onsets.len(),
                c.turn_starts.len(),
                c.chunks
            );
        }
        for r in &results {
            eprintln!("call {} bursts={} loud={}", r.caller, r.bursts.len(), r.loud_onsets.len());
        }
    }
    for r in &results {
        let Some(conv) = convs
            .iter()
            .find(|c| c.initiation["dynamic_variables"]["caller_number"] == r.caller.as_str())
        else {
            continue;
        };
        for b in &r.bursts {
            if let Some(o) = conv
                .speech_onsets
                .iter()
                .find(|o| **o >= *b && o.duration_since(*b) < Duration::from_secs(1))
            {
                up.push(o.duration_since(*b).as_micros() as u64);
            }
        }
        // Reply turns only: the first message waits for the greeting to finish.
        for t in conv.turn_starts.iter().skip(1) {
            if let Some(o) = r
                .loud_onsets
                .iter()
                .find(|o| **o >= *t && o.duration_since(*t) < Duration::from_secs(1))
            {
                down.push(o.duration_since(*t).as_micros() as u64);
            }
        }
    }
    // After every call ended: what the daemon gave back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, fds_after) = (rss_kib(daemon.id()), fds(daemon.id()));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let ok = results.iter().filter(|r| r.ok).count();
    println!(
        "calls={} ok={} agent={} agent_format={} srtp={} conversations={}",
        a.calls,
        ok,
        a.agent,
        format,
        a.srtp,
        convs.len()
    );
    println!(
        "caller_to_agent_ms p50={:.1} p99={:.1} n={}",
        pct(&mut up, 0.5) as f64 / 1000.0,
        pct(&mut up, 0.99) as f64 / 1000.0,
        up.len()
    );
    println!(
        "agent_to_caller_ms p50={:.1} p99={:.1} n={}",
        pct(&mut down, 0.5) as f64 / 1000.0,
        pct(&mut down, 0.99) as f64 / 1000.0,
        down.len()
    );
    if let Some(cpu) = cpu {
        let pct_core = 100.0 * cpu / window.as_secs_f64();
        println!(
            "daemon_cpu={pct_core:.1}% of one core over {:.0}s with {} bridged calls = {:.3}% per call",
            window.as_secs_f64(),
            a.calls,
            pct_core / a.calls as f64
        );
    }
    if let (Some(r0), Some(r1), Some(r2)) = (rss0, rss_live, rss_after) {
        println!(
            "daemon_rss_mib base={:.1} live={:.1} after={:.1} per_live_call_kib={:.0}",
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0,
            r2 as f64 / 1024.0,
            r1.saturating_sub(r0) as f64 / a.calls.max(1) as f64
        );
    }
    if let (Some(f0), Some(f1), Some(f2)) = (fds0, fds_live, fds_after) {
        println!("daemon_fds base={f0} live={f1} after={f2}");
    }
    if ok != a.calls || (a.agent && (up.is_empty() || down.is_empty())) {
        std::process::exit(1);
    }
}
