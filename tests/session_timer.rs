//! Session timers (RFC 4028) over real UDP, in both roles, with short intervals
//! (`sip.session_min_se_seconds` lowered for the test): the call outlives
//! several intervals while refreshes flow, and ends `session_expired` only when
//! the caller stops refreshing.

mod common;

use std::time::{Duration, Instant};

use common::{Caller, offer, rand_u64, start_daemon};

const SEC: Duration = Duration::from_secs(1);

async fn invite_with(c: &mut Caller, headers: &str) -> common::Msg {
    let text = c.invite_text(&offer(c.rtp_port(), "0", "sendrecv"), headers);
    c.send(&text).await;
    c.final_response(SEC * 2).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_refreshes_and_the_call_ends_only_when_it_stops() {
    let daemon = start_daemon(|r| r.sip.session_min_se_seconds = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    let ok = invite_with(&mut c, "Supported: timer\r\nSession-Expires: 3;refresher=uac\r\nMin-SE: 1\r\n").await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Session-Expires"), Some("3;refresher=uac"));
    assert_eq!(ok.header("Require"), Some("timer"));
    c.ack("").await;
    // Refresh every 1.5 s for 6 s: two full intervals and more.
    let started = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.cseq += 1;
        let update = c.in_dialog(
            "UPDATE",
            c.cseq,
            &format!("z9hG4bK-up{}", rand_u64()),
            "",
            "Session-Expires: 3;refresher=uac\r\nSupported: timer\r\n",
        );
        c.send(&update).await;
        let r = c
            .recv_until(SEC, |m| m.header("CSeq").is_some_and(|v| v.ends_with("UPDATE")))
            .await
            .expect("200 to the refresh");
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.header("Session-Expires"), Some("3;refresher=uac"));
    }
    assert!(started.elapsed() >= SEC * 6);
    // Stop refreshing: precall gives up at 3 s − min(32, 1) = 2 s and hangs up.
    let quiet = Instant::now();
    let bye = c
        .recv_until(SEC * 4, |m| m.method() == Some("BYE"))
        .await
        .expect("BYE after the session lapsed");
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(1500), "not before the deadline: {waited:?}");
    c.ok_to(&bye).await;
    for _ in 0..100 {
        if daemon.stats.live_calls.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(daemon.records.flush(SEC * 5).await);
    let row = daemon.store.call_by_external_id(&c.call_id).await.unwrap().unwrap().row;
    assert_eq!(row.end_reason.as_deref(), Some("session_expired"), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precall_refreshes_when_asked_to() {
    let daemon = start_daemon(|r| r.sip.session_min_se_seconds = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    let ok = invite_with(&mut c, "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\n").await;
    assert_eq!(ok.header("Session-Expires"), Some("2;refresher=uas"));
    c.ack("").await;
    // precall refreshes at half the interval; answer three UPDATEs.
    let started = Instant::now();
    for n in 0..3 {
        let up = c
            .recv_until(SEC * 2, |m| m.method() == Some("UPDATE"))
            .await
            .unwrap_or_else(|| panic!("refresh {n}"));
        assert_eq!(up.header("Session-Expires"), Some("2;refresher=uas"));
        c.ok_to(&up).await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < SEC * 5,
        "refreshes about every second: {elapsed:?}"
    );
    // The call is still up: it ends on our BYE, not on a timer.
    assert_eq!(c.bye().await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_below_min_se_gets_422() {
    let daemon = start_daemon(|r| r.sip.session_min_se_seconds = 120).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    let r = invite_with(&mut c, "Supported: timer\r\nSession-Expires: 60\r\n").await;
    assert_eq!(r.status(), Some(422));
    assert_eq!(r.header("Min-SE"), Some("120"));
    // Retried with the minimum, as a UAC must: accepted.
    let mut c2 = Caller::udp(daemon.sip_addr).await;
    let ok = invite_with(&mut c2, "Supported: timer\r\nSession-Expires: 120\r\nMin-SE: 120\r\n").await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Session-Expires"), Some("120;refresher=uac"));
    c2.ack("").await;
    assert_eq!(c2.bye().await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_update_is_refreshed_by_re_invite() {
    let daemon = start_daemon(|r| r.sip.session_min_se_seconds = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    let ok = invite_with(
        &mut c,
        "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n",
    )
    .await;
    assert_eq!(ok.header("Session-Expires"), Some("2;refresher=uas"));
    let our_sdp = ok.body().to_owned();
    c.ack("").await;
    for n in 0..2 {
        let reinvite = c
            .recv_until(SEC * 2, |m| m.method() == Some("INVITE"))
            .await
            .unwrap_or_else(|| panic!("re-INVITE refresh {n}"));
        assert_eq!(reinvite.header("Session-Expires"), Some("2;refresher=uas"));
        assert_eq!(reinvite.body(), our_sdp, "the refresh re-offers the same session");
        let cseq = reinvite.header("CSeq").unwrap().to_owned();
        // Answer 200 with our SDP; precall must ACK it.
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            resp.push_str(&format!("{name}: {}\r\n", reinvite.header(name).unwrap()));
        }
        let sdp = offer(c.rtp_port(), "0", "sendrecv");
        resp.push_str(&format!(
            "Contact: <sip:caller@{}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            c.local,
            sdp.len()
        ));
        c.send(&resp).await;
        let ack = c.recv_until(SEC, |m| m.method() == Some("ACK")).await.expect("ACK for the 200");
        assert_eq!(
            ack.header("CSeq").map(|v| v.split(' ').next().unwrap_or("").to_owned()),
            cseq.split(' ').next().map(str::to_owned)
        );
    }
    assert_eq!(c.bye().await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_refused_with_405_falls_back_to_re_invite() {
    let daemon = start_daemon(|r| r.sip.session_min_se_seconds = 1).await;
    let mut c = Caller::udp(daemon.sip_addr).await;
    let ok = invite_with(&mut c, "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\n").await;
    assert_eq!(ok.status(), Some(200));
    c.ack("").await;
    let update = c
        .recv_until(SEC * 2, |m| m.method() == Some("UPDATE"))
        .await
        .expect("an UPDATE refresh");
    let mut resp = String::from("SIP/2.0 405 Method Not Allowed\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        resp.push_str(&format!("{name}: {}\r\n", update.header(name).unwrap()));
    }
    resp.push_str("Allow: INVITE, ACK, BYE\r\nContent-Length: 0\r\n\r\n");
    c.send(&resp).await;
    let reinvite = c
        .recv_until(SEC, |m| m.method() == Some("INVITE"))
        .await
        .expect("a re-INVITE at once");
    assert!(reinvite.body().contains("m=audio"));
}
