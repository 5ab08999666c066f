//! The SIP guard over real sockets: a source allowlist (403 or silence) and a
//! flood of INVITEs from one address that leaves a call from another address
//! unharmed. Loopback has the whole 127/8, so 127.0.0.2 is "another machine".

use crate::common;

use std::time::{Duration, Instant};

use common::{Caller, offer, start_daemon};
use tokio::net::UdpSocket;

const SEC: Duration = Duration::from_secs(1);

async fn caller_from(ip: &str, daemon: std::net::SocketAddr) -> (UdpSocket, std::net::SocketAddr) {
    let s = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
    let local = s.local_addr().unwrap();
    let _ = daemon;
    (s, local)
}

fn invite(daemon: std::net::SocketAddr, local: std::net::SocketAddr, n: u32) -> String {
    let sdp = offer(4000, "0", "sendrecv");
    format!(
        "INVITE sip:+15550001111@{daemon} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-fl{n};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+1555{n:07}@{local}>;tag=f{n}\r\nTo: <sip:+15550001111@{daemon}>\r\nCall-ID: flood-{n}@x\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

async fn status_of(sock: &UdpSocket, timeout: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (n, _) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        let status: u16 = text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
        if status >= 200 {
            return Some(status);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_sources_may_call() {
    let daemon = start_daemon(|r| r.sip.allow_cidrs = "127.0.0.1/32".into()).await;
    let (stranger, local) = caller_from("127.0.0.2", daemon.sip_addr).await;
    stranger
        .send_to(invite(daemon.sip_addr, local, 1).as_bytes(), daemon.sip_addr)
        .await
        .unwrap();
    assert_eq!(status_of(&stranger, SEC).await, Some(403), "a stranger is refused");
    let mut trunk = Caller::udp(daemon.sip_addr).await;
    trunk.invite(&offer(trunk.rtp_port(), "0", "sendrecv")).await;
    assert_eq!(trunk.final_response(SEC).await.1.status(), Some(200), "the trunk calls");
    trunk.ack("").await;
    assert_eq!(trunk.bye().await.status(), Some(200));

    let quiet = start_daemon(|r| {
        r.sip.allow_cidrs = "127.0.0.1".into();
        r.sip.drop_unknown = true;
    })
    .await;
    stranger
        .send_to(invite(quiet.sip_addr, local, 2).as_bytes(), quiet.sip_addr)
        .await
        .unwrap();
    assert_eq!(status_of(&stranger, SEC).await, None, "a scanner gets no answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_leaves_another_callers_media_on_time() {
    // Its own RTP range: the calls the flood gets admitted must not starve the other tests.
    let daemon = start_daemon(|r| {
        r.limits.max_calls = 2000;
        r.rtp.port_min = 46000;
        r.rtp.port_max = 46998;
    })
    .await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    assert_eq!(c.final_response(SEC).await.1.status(), Some(200));
    c.ack("").await;
    // Collect the legitimate call's RTP arrivals while the flood runs.
    let rtp = std::mem::replace(&mut c.rtp, UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let collector = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        let mut arrivals = Vec::new();
        let end = Instant::now() + Duration::from_millis(2500);
        while let Ok(Ok(_)) = tokio::time::timeout_at(end.into(), rtp.recv_from(&mut buf)).await {
            arrivals.push(Instant::now());
        }
        arrivals
    });
    // 500 INVITEs in one second from 127.0.0.2.
    let (flood, sender_local) = caller_from("127.0.0.2", daemon.sip_addr).await;
    let flood = std::sync::Arc::new(flood);
    let sender = flood.clone();
    let counter = tokio::spawn(async move {
        let mut statuses = std::collections::HashMap::<u16, u32>::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok((n, _))) = tokio::time::timeout(SEC * 2, flood.recv_from(&mut buf)).await {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(s) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
                && s >= 200
            {
                *statuses.entry(s).or_default() += 1;
            }
        }
        statuses
    });
    let started = Instant::now();
    for n in 0..500u32 {
        sender
            .send_to(invite(daemon.sip_addr, sender_local, n).as_bytes(), daemon.sip_addr)
            .await
            .unwrap();
        tokio::time::sleep_until((started + Duration::from_millis(2 * u64::from(n))).into()).await;
    }
    let arrivals = collector.await.unwrap();
    let statuses = counter.await.unwrap();
    let limited = statuses.get(&503).copied().unwrap_or(0);
    assert!(limited >= 400, "most of the flood got 503 Retry-After: {statuses:?}");
    let gaps: Vec<u64> = arrivals.windows(2).map(|w| w[1].duration_since(w[0]).as_micros() as u64).collect();
    let late = gaps.iter().filter(|g| **g > 60_000).count();
    assert!(
        arrivals.len() >= 110,
        "the call kept its media: {} packets in 2.5 s",
        arrivals.len()
    );
    assert_eq!(
        late,
        0,
        "no RTP gap over 60 ms during the flood (gaps: max {:?} us)",
        gaps.iter().max()
    );
    // The flood got at most its burst of calls; the daemon still answers the legitimate caller.
    let live = daemon.stats.live_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(live <= 1 + 40 + 25, "the flood was rate-limited: {live} live calls");
    assert_eq!(c.bye().await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_tcp_connections() {
    use tokio::io::AsyncReadExt;
    let daemon = start_daemon(|_| {}).await;
    let mut held = Vec::new();
    for _ in 0..precall::sip::transport::MAX_CONNECTIONS_PER_SOURCE {
        held.push(tokio::net::TcpStream::connect(daemon.sip_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(daemon.sip_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(SEC, extra.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection over the per-source limit is closed");
    // Another address still gets in.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut ok = other.connect(daemon.sip_addr).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ok.read(&mut buf)).await.is_err(),
        "kept open"
    );
    drop(held);
}
