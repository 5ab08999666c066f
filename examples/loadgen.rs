//! Load generator for docs/PERFORMANCE.md: places calls against a running precall
//! and measures, per call, INVITE→200 latency, when the first RTP packet arrives
//! relative to the ACK, and the pacing of what follows; optionally samples the
//! daemon's CPU time from /proc.
//!
//!     cargo run --release --example loadgen -- --target 127.0.0.1:5070 \
//!         --calls 500 --rate 100 --hold 5 --pid $(pidof precall)
//!
//! With `--rate R --hold H` the steady state holds about R·H concurrent calls.
//! Each caller also sends PCMU every 20 ms, so the daemon does its receive work too.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

#[path = "support/measure.rs"]
mod measure;
use measure::{cpu_ticks, fds, pct, rss_kib};

struct Args {
    target: SocketAddr,
    calls: usize,
    rate: f64,
    hold: Duration,
    pid: Option<u32>,
    send_rtp: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: "127.0.0.1:5070".parse().unwrap(),
        calls: 1,
        rate: 1.0,
        hold: Duration::from_secs(5),
        pid: None,
        send_rtp: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--target" => a.target = v.parse().expect("--target IP:port"),
            "--calls" => a.calls = v.parse().expect("--calls N"),
            "--rate" => a.rate = v.parse().expect("--rate calls/s"),
            "--hold" => a.hold = Duration::from_secs_f64(v.parse().expect("--hold seconds")),
            "--pid" => a.pid = v.parse().ok(),
            "--send-rtp" => a.send_rtp = v != "false",
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

#[derive(Default)]
struct CallResult {
    ok: bool,
    invite_to_200_us: u64,
    first_rtp_after_ack_us: u64,
    packets: u64,
    gap_dev_us: Vec<u32>,
}

async fn one_call(n: usize, a: &Args) -> CallResult {
    let mut r = CallResult::default();
    let sip = UdpSocket::bind("127.0.0.1:0").await.expect("bind sip");
    let rtp = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind rtp"));
    let local = sip.local_addr().unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let call_id = format!("load-{n}-{}@127.0.0.1", std::process::id());
    let sdp = format!(
        "v=0\r\no=load 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    );
    let invite = format!(
        "INVITE sip:+15550001111@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-l{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+1555{n:07}@{local}>;tag=f{n}\r\nTo: <sip:+15550001111@{t}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:load@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        t = a.target
    );
    // Arrival stamps are taken by a dedicated task started before the INVITE.
    let hold = a.hold;
    let rx = {
        let rtp = rtp.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut first = None;
            let mut last: Option<Instant> = None;
            let mut count = 0u64;
            let mut devs = Vec::with_capacity(512);
            let mut from = None;
            let end = Instant::now() + hold + Duration::from_millis(800);
            while let Ok(Ok((_, src))) = tokio::time::timeout_at(end.into(), rtp.recv_from(&mut buf)).await {
                let now = Instant::now();
                first.get_or_insert(now);
                from.get_or_insert(src);
                if let Some(l) = last {
                    devs.push((now.duration_since(l).as_micros() as i64 - 20_000).unsigned_abs() as u32);
                }
                last = Some(now);
                count += 1;
            }
            (first, count, devs, from)
        })
    };
    let t0 = Instant::now();
    sip.send_to(invite.as_bytes(), a.target).await.expect("send INVITE");
    let mut buf = vec![0u8; 65536];
    let to_tag = loop {
        let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(5), sip.recv_from(&mut buf)).await else {
            return r;
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.starts_with("SIP/2.0 200") {
            r.invite_to_200_us = t0.elapsed().as_micros() as u64;
            break text
                .lines()
                .find(|l| l.starts_with("To:"))
                .and_then(|l| l.split(";tag=").nth(1))
                .unwrap_or("")
                .to_owned();
        }
        if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
            return r;
        }
    };
    let dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:precall@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{method}{n}\r\nMax-Forwards: 70\r\nFrom: <sip:+1555{n:07}@{local}>;tag=f{n}\r\nTo: <sip:+15550001111@{t}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            t = a.target
        )
    };
    let t_ack = Instant::now();
    sip.send_to(dialog("ACK", 1).as_bytes(), a.target).await.expect("send ACK");
    // Talk back: PCMU every 20 ms until the hang-up.
    let talk_until = Instant::now() + a.hold;
    if a.send_rtp {
        let mut pkt = [0xFFu8; 172];
        pkt[0] = 0x80;
        pkt[1] = 0; // PCMU, no marker
        pkt[8..12].copy_from_slice(&(n as u32).to_be_bytes());
        let mut seq = 0u16;
        let mut next = Instant::now();
        let daemon_rtp = loop {
            // The daemon's RTP address: where its first packet came from.
            if let Some(from) = peek_source(&rtp).await {
                break Some(from);
            }
            if Instant::now() > t_ack + Duration::from_secs(1) {
                break None;
            }
        };
        if let Some(dest) = daemon_rtp {
            while next < talk_until {
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                let _ = rtp.send_to(&pkt, dest).await;
                seq = seq.wrapping_add(1);
                next += Duration::from_millis(20);
                tokio::time::sleep_until(next.into()).await;
            }
        }
    }
    tokio::time::sleep_until(talk_until.into()).await;
    sip.send_to(dialog("BYE", 2).as_bytes(), a.target).await.expect("send BYE");
    let got_ok = loop {
        let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(5), sip.recv_from(&mut buf)).await else {
            break false;
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        if text.starts_with("SIP/2.0 200") && text.contains(" BYE\r\n") {
            break true;
        }
    };
    let (first, count, devs, _) = rx.await.unwrap_or((None, 0, Vec::new(), None));
    r.first_rtp_after_ack_us = first.map_or(u64::MAX, |f| f.saturating_duration_since(t_ack).as_micros() as u64);
    r.packets = count;
    r.gap_dev_us = devs;
    r.ok = got_ok && first.is_some();
    r
}

/// The source address of the next datagram, without consuming it.
async fn peek_source(sock: &UdpSocket) -> Option<SocketAddr> {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), sock.peek_from(&mut b))
        .await
        .ok()?
        .ok()
        .map(|(_, a)| a)
}

#[tokio::main]
async fn main() {
    let a = std::sync::Arc::new(parse_args());
    let cpu0 = a.pid.and_then(cpu_ticks);
    let base = a.pid.and_then(|p| rss_kib(p).zip(fds(p)));
    let wall0 = Instant::now();
    let mut tasks = Vec::with_capacity(a.calls);
    let gap = Duration::from_secs_f64(1.0 / a.rate);
    let mut next = Instant::now();
    for n in 0..a.calls {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        let a = a.clone();
        tasks.push(tokio::spawn(async move { one_call(n, &a).await }));
    }
    // Every call has started; most are live (the peak for hold ≥ calls/rate).
    let peak = a.pid.and_then(|p| rss_kib(p).zip(fds(p)));
    let mut results = Vec::with_capacity(a.calls);
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    let wall = wall0.elapsed();
    let cpu = match (a.pid, cpu0) {
        (Some(pid), Some(c0)) => cpu_ticks(pid).map(|c1| (c1 - c0) as f64 / 100.0),
        _ => None,
    };
    let ok = results.iter().filter(|r| r.ok).count();
    let mut inv: Vec<u64> = results
        .iter()
        .filter(|r| r.invite_to_200_us > 0)
        .map(|r| r.invite_to_200_us)
        .collect();
    let mut first: Vec<u64> = results.iter().map(|r| r.first_rtp_after_ack_us).collect();
    let mut devs: Vec<u64> = results.iter().flat_map(|r| r.gap_dev_us.iter().map(|d| u64::from(*d))).collect();
    let packets: u64 = results.iter().map(|r| r.packets).sum();
    // A packet is late when it arrives a whole frame (20 ms) or more off its
    // 20 ms gap: a caller's jitter buffer would have played silence for it.
    let late = devs.iter().filter(|d| **d >= 20_000).count();
    println!(
        "calls={} ok={} failed={} rate={}/s hold={:?} peak_concurrent~{:.0}",
        a.calls,
        ok,
        a.calls - ok,
        a.rate,
        a.hold,
        (a.rate * a.hold.as_secs_f64()).min(a.calls as f64)
    );
    println!(
        "invite_to_200_us p50={} p99={} max={}",
        pct(&mut inv, 0.5),
        pct(&mut inv, 0.99),
        pct(&mut inv, 1.0)
    );
    println!(
        "first_rtp_after_ack_us p50={} p99={} max={}",
        pct(&mut first, 0.5),
        pct(&mut first, 0.99),
        pct(&mut first, 1.0)
    );
    println!(
        "rtp_gap_deviation_us p50={} p99={} max={} packets={} late={} ({:.3} %)",
        pct(&mut devs, 0.5),
        pct(&mut devs, 0.99),
        pct(&mut devs, 1.0),
        packets,
        late,
        100.0 * late as f64 / devs.len().max(1) as f64
    );
    if let Some(cpu) = cpu {
        println!(
            "daemon_cpu_seconds={cpu:.2} over {:.1}s wall = {:.1}% of one core",
            wall.as_secs_f64(),
            100.0 * cpu / wall.as_secs_f64()
        );
    }
    if let (Some((r0, f0)), Some((r1, f1))) = (base, peak) {
        println!(
            "daemon_rss_mib base={:.1} at_last_start={:.1} (fds {f0} -> {f1})",
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0
        );
    }
    if ok != a.calls {
        std::process::exit(1);
    }
}
