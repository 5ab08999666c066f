//! Session timers (RFC 4028) over real UDP: the daemon's configuration reaches
//! the endpoint (422 with our Min-SE) and a refresh crosses real sockets. The
//! timer behaviour itself (refreshes in both roles, the lapse, the re-INVITE
//! fallback) is tested on virtual time in `src/sip/endpoint/session_tests.rs`.

use crate::common;

use std::time::Duration;

use common::{Caller, offer, start_daemon};

const SEC: Duration = Duration::from_secs(1);

async fn invite_with(c: &mut Caller, headers: &str) -> common::Msg {
    let text = c.invite_text(&offer(c.rtp_port(), "0", "sendrecv"), headers);
    c.send(&text).await;
    c.final_response(SEC * 2).await.1
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
