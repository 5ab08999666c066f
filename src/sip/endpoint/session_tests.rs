//! Session timers (RFC 4028) on virtual time, in both roles: the call outlives
//! many intervals while refreshes flow and ends only when the caller stops;
//! we refresh with UPDATE, or with re-INVITE when the caller has no UPDATE.

use super::tests::*;
use super::*;

fn short() -> SessionTimerConfig {
    SessionTimerConfig {
        default: Duration::from_secs(1800),
        min_se: Duration::from_secs(1),
    }
}

/// An in-dialog request from the caller with extra headers.
fn from_caller(method: &str, cseq: u32, tag: &str, branch: &str, extra: &str) -> String {
    in_dialog(method, cseq, tag, branch).replace("Content-Length: 0\r\n", &format!("{extra}Content-Length: 0\r\n"))
}

/// The caller's answer to one of our requests.
fn reply(req: &str, status_line: &str, extra: &str) -> String {
    let mut r = format!("SIP/2.0 {status_line}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        r.push_str(&format!("{name}: {}\r\n", header(req, name).unwrap()));
    }
    r.push_str(extra);
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

fn method(msg: &str) -> &str {
    msg.split(' ').next().unwrap_or("")
}

/// INVITE with these session headers, answered and ACKed; our 200 and To tag.
fn timed_call(h: &mut Harness, session: &str) -> (CallKey, String, String) {
    h.feed(&invite("z9hG4bK-st1", session, OFFER));
    let (_, events) = h.drain();
    let call = match &events[..] {
        [SipEvent::Invite { call, .. }] => *call,
        other => panic!("{other:?}"),
    };
    h.ep.accept(h.now, call, b"v=0\r\n");
    let (sent, _) = h.drain();
    let ok = sent.into_iter().find(|m| status(m) == 200).expect("200");
    let tag = to_tag(&ok).unwrap();
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-ack"));
    h.drain();
    (call, tag, ok)
}

#[test]
fn the_caller_refreshes_and_the_call_ends_only_when_it_stops() {
    let mut h = Harness::with_session(short());
    let (call, tag, ok) = timed_call(&mut h, "Supported: timer\r\nSession-Expires: 3;refresher=uac\r\nMin-SE: 1\r\n");
    assert_eq!(header(&ok, "Session-Expires"), Some("3;refresher=uac"));
    assert_eq!(header(&ok, "Require"), Some("timer"));
    // Refresh every 1.5 s for a minute: twenty intervals.
    for n in 0..40u32 {
        let (sent, events) = h.advance(Duration::from_millis(1500));
        assert!(
            sent.is_empty() && events.is_empty(),
            "refresh {n}: nothing lapses: {sent:?} {events:?}"
        );
        let extra = "Session-Expires: 3;refresher=uac\r\nSupported: timer\r\n";
        h.feed(&from_caller("UPDATE", 2 + n, &tag, &format!("z9hG4bK-up{n}"), extra));
        let (sent, _) = h.drain();
        assert_eq!(status(&sent[0]), 200);
        assert_eq!(header(&sent[0], "Session-Expires"), Some("3;refresher=uac"));
    }
    // Silence: we give up at 3 s − min(32 s, 1 s) = 2 s, to the millisecond.
    let (sent, events) = h.advance(Duration::from_millis(1999));
    assert!(sent.is_empty() && events.is_empty());
    let (sent, events) = h.advance(Duration::from_millis(1));
    assert_eq!(method(&sent[0]), "BYE", "{sent:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SipEvent::SessionExpired { call: c } if *c == call))
    );
}

#[test]
fn precall_refreshes_with_update_at_half_the_interval() {
    let mut h = Harness::with_session(short());
    let (_, _, ok) = timed_call(&mut h, "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\n");
    assert_eq!(header(&ok, "Session-Expires"), Some("2;refresher=uas"));
    for n in 0..30 {
        let (sent, events) = h.advance(Duration::from_secs(1));
        let update = sent
            .iter()
            .find(|m| method(m) == "UPDATE")
            .unwrap_or_else(|| panic!("refresh {n}: {sent:?}"));
        // We are the UAC of our own refresh (RFC 4028 §7.4), and it refreshes the target.
        assert_eq!(header(update, "Session-Expires"), Some("2;refresher=uac"));
        assert_eq!(header(update, "Contact"), Some("<sip:precall@192.0.2.1:5060>"));
        assert!(events.is_empty(), "{events:?}");
        h.feed(&reply(update, "200 OK", "Session-Expires: 2;refresher=uac\r\n"));
        let (sent, events) = h.drain();
        assert!(sent.is_empty() && events.is_empty(), "the refresh completes quietly");
    }
}

#[test]
fn a_caller_without_update_is_refreshed_by_re_invite_and_we_ack_it() {
    let mut h = Harness::with_session(short());
    let extra = "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n";
    let (_, _, ok) = timed_call(&mut h, extra);
    let ours = ok.split("\r\n\r\n").nth(1).unwrap().to_owned();
    for n in 0..5 {
        let (sent, _) = h.advance(Duration::from_secs(1));
        let reinvite = sent
            .iter()
            .find(|m| method(m) == "INVITE")
            .unwrap_or_else(|| panic!("refresh {n}: {sent:?}"));
        assert_eq!(header(reinvite, "Session-Expires"), Some("2;refresher=uac"));
        assert_eq!(header(reinvite, "Contact"), Some("<sip:precall@192.0.2.1:5060>"));
        assert_eq!(
            reinvite.split("\r\n\r\n").nth(1),
            Some(ours.as_str()),
            "the same session re-offered"
        );
        h.feed(&reply(reinvite, "200 OK", ""));
        let (sent, _) = h.drain();
        let ack = sent.iter().find(|m| method(m) == "ACK").expect("we ACK the 200");
        let cseq = |m: &str| header(m, "CSeq").and_then(|v| v.split(' ').next()).map(str::to_owned);
        assert_eq!(cseq(ack), cseq(reinvite));
    }
}

#[test]
fn an_update_refused_with_405_falls_back_to_re_invite_at_once() {
    let mut h = Harness::with_session(short());
    timed_call(&mut h, "Supported: timer\r\nSession-Expires: 2;refresher=uas\r\n");
    let (sent, _) = h.advance(Duration::from_secs(1));
    let update = sent.iter().find(|m| method(m) == "UPDATE").expect("an UPDATE refresh");
    h.feed(&reply(update, "405 Method Not Allowed", "Allow: INVITE, ACK, BYE\r\n"));
    let (sent, _) = h.drain();
    let reinvite = sent.iter().find(|m| method(m) == "INVITE").expect("a re-INVITE at once");
    assert!(reinvite.contains("v=0"), "{reinvite}");
}

/// Issue 17 #2, table-driven: every in-dialog request precall sends carries
/// exactly the Contact its RFC asks for.
#[test]
fn in_dialog_requests_carry_contact_exactly_where_required() {
    for (method, want) in [
        ("INVITE", true),
        ("UPDATE", true),
        ("REFER", true),
        ("SUBSCRIBE", true),
        ("NOTIFY", true),
        ("BYE", false),
        ("ACK", false),
        ("CANCEL", false),
        ("INFO", false),
    ] {
        assert_eq!(super::dialog::carries_contact(method), want, "{method}");
    }
    // And on the wire: a REFER and a BYE from a live dialog.
    let mut h = Harness::with_session(short());
    let (call, _, _) = timed_call(&mut h, "");
    assert!(h.ep.refer(h.now, call, "+15550009999"));
    let (sent, _) = h.drain();
    let refer = sent.iter().find(|m| method(m) == "REFER").expect("REFER");
    assert_eq!(refer.matches("\r\nContact:").count(), 1, "{refer}");
    h.ep.hangup(h.now, call, "done");
    let (sent, _) = h.drain();
    let bye = sent.iter().find(|m| method(m) == "BYE").expect("BYE");
    assert!(!bye.contains("\r\nContact:"), "{bye}");
}
