//! Regression tests for what a fuzzing and abuse campaign found (issue 12), over
//! real sockets against an in-process daemon. Each test replays one attack and
//! asserts that the attacked call behaves, and that SIP keeps answering.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Caller, Msg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SEC: Duration = Duration::from_secs(1);

/// OPTIONS from a fresh client must be answered 200 within `within`.
async fn sip_answers(daemon: SocketAddr, within: Duration) -> bool {
    let mut probe = Caller::udp(daemon).await;
    let text = probe.in_dialog("OPTIONS", 1, &format!("z9hG4bK-opt{}", common::rand_u64()), "", "");
    probe.send(&text).await;
    probe
        .recv_until(within, |m| m.status().is_some())
        .await
        .is_some_and(|m| m.status() == Some(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_session_expires_is_clamped_and_sip_stays_up() {
    let daemon = common::start_daemon(|_| {}).await;
    for (header, value) in [
        ("Session-Expires", "18446744073709551615"),
        ("x", "18446744073709551615;refresher=uac"),
        ("Session-Expires", "99999999999999999999999999999;refresher=uas"),
    ] {
        let mut c = Caller::udp(daemon.sip_addr).await;
        let body = common::offer(c.rtp_port(), "0", "sendrecv");
        let text = c.invite_text(
            &body,
            &format!("Supported: timer\r\nMin-SE: 18446744073709551615\r\n{header}: {value}\r\n"),
        );
        c.send(&text).await;
        let (_, ok) = c.final_response(3 * SEC).await;
        assert_eq!(ok.status(), Some(200), "{header}: {value}");
        let granted: u64 = ok
            .header("Session-Expires")
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse().ok())
            .expect("a Session-Expires in the 2xx");
        assert!(granted <= 86_400, "interval lowered to a day at most, got {granted}");
        c.ack("").await;
        assert!(sip_answers(daemon.sip_addr, SEC).await, "SIP still answers after {header}: {value}");
        assert_eq!(c.bye().await.status(), Some(200));
    }
    assert!(daemon.stats.sip_live(Duration::from_secs(5)));
}

/// A delayed offer answered by an ACK without SDP: the call must end with BYE
/// and a recorded reason, and must not spin (four at once froze the daemon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_without_the_answer_ends_the_call_and_nothing_spins() {
    let daemon = common::start_daemon(|_| {}).await;
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut c = Caller::udp(daemon.sip_addr).await;
        c.invite("").await;
        let (_, ok) = c.final_response(3 * SEC).await;
        assert_eq!(ok.status(), Some(200));
        assert!(ok.body().contains("m=audio"), "our offer is in the 200");
        callers.push(c);
    }
    let cpu_before = process_cpu();
    let wall = Instant::now();
    for c in &mut callers {
        c.ack("").await;
    }
    // A full second with four such calls: a spinning call task would burn a
    // whole worker thread each (this process has two).
    tokio::time::sleep(SEC).await;
    for c in &mut callers {
        let bye = c
            .recv_until(3 * SEC, |m| m.method() == Some("BYE"))
            .await
            .expect("precall hangs up a call whose ACK has no answer");
        c.ok_to(&bye).await;
    }
    assert!(sip_answers(daemon.sip_addr, SEC).await);
    let cpu = process_cpu() - cpu_before;
    let elapsed = wall.elapsed();
    assert!(cpu < elapsed.mul_f64(0.8), "no worker thread spins: {cpu:?} of CPU in {elapsed:?}");
    assert!(daemon.records.flush(5 * SEC).await);
    for c in &callers {
        let row = daemon.store.call_by_external_id(&c.call_id).await.unwrap().expect("recorded").row;
        assert_eq!(row.end_reason.as_deref(), Some("no_sdp_answer"));
    }
}

/// CPU time this process has used (user + system), from /proc.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

fn rtp_packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xffu8, 160));
    p
}

/// Streams `count` valid PCMU packets at 20 ms from `sock` to `to`.
async fn stream(sock: &UdpSocket, to: SocketAddr, first_seq: u16, count: u16, ssrc: u32) {
    for i in 0..count {
        let seq = first_seq.wrapping_add(i);
        sock.send_to(&rtp_packet(seq, u32::from(seq) * 160, ssrc), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many datagrams arrive on `sock` within `window`.
async fn count_arrivals(sock: &UdpSocket, window: Duration) -> usize {
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Ok(Ok(_)) => n += 1,
            _ => break,
        }
    }
    n
}

async fn answered_call(daemon: SocketAddr) -> (Caller, SocketAddr) {
    let mut c = Caller::udp(daemon).await;
    c.invite(&common::offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, ok) = c.final_response(3 * SEC).await;
    assert_eq!(ok.status(), Some(200));
    c.ack("").await;
    let port = ok.sdp_port().expect("an SDP answer");
    (c, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// RTP bleed: a third party streaming valid-looking RTP to the call's port
/// while the caller is silent, or after the caller paused, must get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_from_a_third_address_never_takes_the_call() {
    let daemon = common::start_daemon(|_| {}).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // 1. The caller sends nothing at all.
    let (c, media) = answered_call(daemon.sip_addr).await;
    stream(&attacker, media, 1000, 25, 0xbad).await;
    assert_eq!(
        count_arrivals(&attacker, Duration::from_millis(300)).await,
        0,
        "silent caller hijacked"
    );
    assert!(c.recv_rtp(SEC).await.is_some(), "the caller still hears the call");

    // 2. The caller talks, pauses for 2.2 s (mute), then the attacker streams.
    let (c, media) = answered_call(daemon.sip_addr).await;
    stream(&c.rtp, media, 1, 10, 0x1234).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    stream(&attacker, media, 5000, 25, 0xbad).await;
    assert_eq!(
        count_arrivals(&attacker, Duration::from_millis(300)).await,
        0,
        "paused caller hijacked"
    );
    // Our media still goes to the caller.
    let mut buf = [0u8; 2048];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(5), c.rtp.recv_from(&mut buf)).await {}
    assert!(c.recv_rtp(SEC).await.is_some());
}

/// A TCP connection that trickles one byte at a time is closed once its
/// message is older than `sip.tcp_message_timeout_seconds`, although every
/// byte arrived well within the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_tcp_message_is_cut_off() {
    let daemon = common::start_daemon(|raw| raw.sip.tcp_message_timeout_seconds = 2).await;
    let mut s = TcpStream::connect(daemon.sip_addr).await.unwrap();
    let started = Instant::now();
    let msg = b"OPTIONS sip:precall@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK-slow\r\n";
    let mut closed = None;
    for b in msg.iter().cycle().take(200) {
        if s.write_all(&[*b]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
            && matches!(r, Ok(0) | Err(_))
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("the daemon closed the trickling connection");
    assert!(closed >= Duration::from_millis(1900) && closed < 4 * SEC, "closed after {closed:?}");
    // Other TCP callers are unaffected.
    let mut c = Caller::tcp(daemon.sip_addr).await;
    let text = c.in_dialog("OPTIONS", 1, "z9hG4bK-tcp-ok", "", "");
    c.send(&text).await;
    let m: Msg = c.recv_until(SEC, |m| m.status().is_some()).await.expect("answer over TCP");
    assert_eq!(m.status(), Some(200));
}

/// A header sent a byte at a time is framed once it is complete, and the
/// endpoint answers it (the framer resumes its search rather than rescanning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_header_sent_bytewise_over_tcp_still_works() {
    let daemon = common::start_daemon(|_| {}).await;
    let mut c = Caller::tcp(daemon.sip_addr).await;
    let padding = format!("X-Padding: {}\r\n", "a".repeat(20_000));
    let text = c.in_dialog("OPTIONS", 1, "z9hG4bK-long", "", &padding);
    let bytes = text.as_bytes();
    for chunk in bytes.chunks(64) {
        c.send_raw(chunk).await;
    }
    let m = c.recv_until(3 * SEC, |m| m.status().is_some()).await.expect("answered");
    assert_eq!(m.status(), Some(200));
}
