//! Digest authentication of incoming INVITEs over real UDP: challenged, answered
//! (with the digest_auth crate, as a PBX would), accepted; a wrong password is
//! challenged again; an old nonce comes back `stale=true`.

use crate::common;

use std::time::Duration;

use common::{Caller, offer, start_daemon};
use precall::config::AuthUserSection;

const SEC: Duration = Duration::from_secs(1);

fn answer(challenge: &str, password: &str, uri: &str) -> String {
    let mut prompt = digest_auth::parse(challenge).unwrap();
    let ctx =
        digest_auth::AuthContext::new_with_method("pbx", password, uri, Option::<&[u8]>::None, digest_auth::HttpMethod::from("INVITE"));
    prompt.respond(&ctx).unwrap().to_header_string()
}

/// The ACK for a non-2xx final response belongs to the INVITE's transaction
/// (same branch, same CSeq number), which stops the 401's retransmissions.
async fn ack_failure(c: &mut Caller, r: &common::Msg) {
    let via = format!("SIP/2.0/UDP {};branch={};rport", c.local, c.invite_branch);
    let text = format!(
        "ACK sip:+15550001111@{d} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {n} ACK\r\nContent-Length: 0\r\n\r\n",
        d = c.daemon,
        from = r.header("From").unwrap(),
        to = r.header("To").unwrap(),
        cid = c.call_id,
        n = c.cseq,
    );
    c.send(&text).await;
}

async fn challenged(c: &mut Caller) -> String {
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(401), "{}", r.text);
    ack_failure(c, &r).await;
    r.header("WWW-Authenticate").expect("a challenge").to_owned()
}

async fn retry(c: &mut Caller, authorization: &str) -> common::Msg {
    c.cseq += 1;
    c.invite_branch = format!("z9hG4bK-auth{}", common::rand_u64());
    c.to_tag = None;
    let text = c.invite_text(
        &offer(c.rtp_port(), "0", "sendrecv"),
        &format!("Authorization: {authorization}\r\n"),
    );
    c.send(&text).await;
    c.final_response(SEC).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_must_answer_the_digest_challenge() {
    let daemon = start_daemon(|r| {
        r.sip.auth_realm = "precall-test".into();
        r.sip.auth_users = vec![AuthUserSection {
            username: "pbx".into(),
            password: "s3cret".into(),
            ..AuthUserSection::default()
        }];
        r.sip.auth_nonce_seconds = 1;
    })
    .await;
    let uri = format!("sip:+15550001111@{}", daemon.sip_addr);
    let mut c = Caller::udp(daemon.sip_addr).await;
    let challenge = challenged(&mut c).await;
    assert!(
        challenge.contains(r#"realm="precall-test""#) && challenge.contains("qop=\"auth\""),
        "{challenge}"
    );
    // Wrong password: challenged again.
    let r = retry(&mut c, &answer(&challenge, "guess", &uri)).await;
    assert_eq!(r.status(), Some(401));
    ack_failure(&mut c, &r).await;
    // Right password: the call is answered.
    let ok = retry(&mut c, &answer(&challenge, "s3cret", &uri)).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    c.ack("").await;
    assert_eq!(c.bye().await.status(), Some(200));
    // An old nonce is stale, not wrong.
    let mut late = Caller::udp(daemon.sip_addr).await;
    let challenge = challenged(&mut late).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = retry(&mut late, &answer(&challenge, "s3cret", &uri)).await;
    assert_eq!(r.status(), Some(401));
    assert!(r.header("WWW-Authenticate").is_some_and(|h| h.contains("stale=true")), "{}", r.text);
}
