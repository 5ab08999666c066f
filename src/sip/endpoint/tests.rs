//! The endpoint on virtual time: every timer is driven by jumping the clock, no
//! sleeps, no sockets.

use super::*;
use crate::sip::tokens::Tokens;

const T1: Duration = Duration::from_millis(500);

pub(super) struct Harness {
    pub(super) ep: Endpoint,
    pub(super) now: Instant,
    flow: Flow,
}

fn udp_flow() -> Flow {
    Flow {
        transport: Transport::Udp,
        remote: "192.0.2.7:5062".parse().unwrap(),
        local: "192.0.2.1:5060".parse().unwrap(),
    }
}

impl Harness {
    fn new() -> Self {
        Self::with_flow(udp_flow())
    }

    fn with_flow(flow: Flow) -> Self {
        Self::with(flow, SessionTimerConfig::default())
    }

    pub(super) fn with_session(session: SessionTimerConfig) -> Self {
        Self::with(udp_flow(), session)
    }

    fn with(flow: Flow, session: SessionTimerConfig) -> Self {
        // Seeded tokens: every run of these tests sends the same bytes.
        let ep = Endpoint::with_tokens(
            EndpointConfig {
                user_agent: "precall-test".into(),
                timers: Timers::default(),
                public_addr: None,
                session,
                auth: None,
            },
            Tokens::from_seed(1),
        );
        Harness {
            ep,
            now: Instant::now(),
            flow,
        }
    }

    pub(super) fn feed(&mut self, msg: &str) {
        self.ep.handle_datagram(self.now, self.flow, msg.as_bytes());
    }

    /// Runs timers until `at` and returns everything produced on the way.
    pub(super) fn advance_to(&mut self, at: Instant) -> (Vec<String>, Vec<SipEvent>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        loop {
            self.collect(&mut sent, &mut events);
            match self.ep.poll_timeout() {
                Some(t) if t <= at => {
                    self.now = self.now.max(t);
                    self.ep.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = at;
        (sent, events)
    }

    pub(super) fn advance(&mut self, by: Duration) -> (Vec<String>, Vec<SipEvent>) {
        let at = self.now + by;
        self.advance_to(at)
    }

    pub(super) fn drain(&mut self) -> (Vec<String>, Vec<SipEvent>) {
        let mut sent = Vec::new();
        let mut events = Vec::new();
        self.collect(&mut sent, &mut events);
        (sent, events)
    }

    fn collect(&mut self, sent: &mut Vec<String>, events: &mut Vec<SipEvent>) {
        while let Some(o) = self.ep.poll_output() {
            match o {
                Output::Transmit(t) => {
                    assert_eq!(t.flow, self.flow, "answers go back on the flow the request came in on");
                    sent.push(String::from_utf8(t.data).unwrap());
                }
                Output::Event(e) => events.push(e),
                Output::Response(_) => {}
            }
        }
    }
}

pub(super) fn invite(branch: &str, extra: &str, body: &str) -> String {
    format!(
        "INVITE sip:+15550001111@192.0.2.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.7:5062;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:+15551234567@192.0.2.7:5062>;tag=alice1\r\n\
         To: <sip:+15550001111@192.0.2.1:5060>\r\n\
         Call-ID: call-1@192.0.2.7\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.0.2.7:5062>\r\n\
         {extra}Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(super) const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

pub(super) fn status(msg: &str) -> u16 {
    msg.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

pub(super) fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    })
}

pub(super) fn to_tag(msg: &str) -> Option<String> {
    header(msg, "To").and_then(|t| t.split(";tag=").nth(1)).map(str::to_owned)
}

pub(super) fn in_dialog(method: &str, cseq: u32, to_tag: &str, branch: &str) -> String {
    format!(
        "{method} sip:precall@192.0.2.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.7:5062;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:+15551234567@192.0.2.7:5062>;tag=alice1\r\n\
         To: <sip:+15550001111@192.0.2.1:5060>;tag={to_tag}\r\n\
         Call-ID: call-1@192.0.2.7\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// INVITE, 100, accept → 200; returns the call and our To tag.
fn answered(h: &mut Harness) -> (CallKey, String) {
    h.feed(&invite("z9hG4bK-inv1", "", OFFER));
    let (sent, events) = h.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(status(&sent[0]), 100);
    assert_eq!(to_tag(&sent[0]), None, "100 Trying carries no tag");
    let call = match &events[..] {
        [SipEvent::Invite { call, request, .. }] => {
            assert_eq!(request.from.uri.user.as_deref(), Some("+15551234567"));
            *call
        }
        other => panic!("expected one Invite event, got {other:?}"),
    };
    h.ep.accept(h.now, call, b"v=0\r\n");
    let (sent, _) = h.drain();
    assert_eq!(status(&sent[0]), 200);
    assert!(sent[0].contains("Content-Type: application/sdp\r\n"));
    assert!(sent[0].contains("Contact: <sip:precall@192.0.2.1:5060>\r\n"));
    assert!(sent[0].contains(";received=192.0.2.7;rport=5062"), "{}", sent[0]);
    (call, to_tag(&sent[0]).expect("200 carries our tag"))
}

#[test]
fn invite_is_answered_and_confirmed_by_ack() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h);
    h.advance(Duration::from_millis(30));
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-ack1"));
    let (sent, events) = h.drain();
    assert!(sent.is_empty(), "an ACK is never answered");
    assert!(matches!(events[..], [SipEvent::Confirmed { call: c, .. }] if c == call));
    let (sent, _) = h.advance(Duration::from_secs(40));
    assert!(sent.is_empty(), "no 200 retransmission after the ACK");
}

#[test]
fn lost_ack_retransmits_200_then_ends_with_bye() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h);
    let start = h.now;
    let mut times = Vec::new();
    let mut sent_all = Vec::new();
    let mut events_all = Vec::new();
    // Step through time collecting when each 200 retransmission goes out.
    while h.now < start + 64 * T1 + Duration::from_millis(1) {
        let (sent, events) = h.advance(Duration::from_millis(10));
        for s in &sent {
            if status(s) == 200 {
                times.push(h.now.duration_since(start).as_millis() / 10 * 10);
            }
        }
        sent_all.extend(sent);
        events_all.extend(events);
    }
    // T1, then doubling to T2 = 4 s: 0.5, 1.5, 3.5, 7.5, 11.5, ...
    assert_eq!(&times[..5], &[500, 1500, 3500, 7500, 11500]);
    assert!(times.windows(2).skip(3).all(|w| w[1] - w[0] == 4000), "capped at T2: {times:?}");
    assert!(
        events_all
            .iter()
            .any(|e| matches!(e, SipEvent::AckTimeout { call: c } if *c == call))
    );
    let bye = sent_all.iter().find(|s| s.starts_with("BYE ")).expect("BYE after Timer H");
    assert!(bye.starts_with("BYE sip:alice@192.0.2.7:5062 SIP/2.0\r\n"), "{bye}");
    assert!(bye.contains(&format!(";tag={tag}")));
    assert!(bye.contains("To: \"Alice\" <sip:+15551234567@192.0.2.7:5062>;tag=alice1\r\n"));
    assert!(bye.contains("Reason: SIP;cause=200;text=\"ack_timeout\""));
    // The caller answers the BYE: the dialog is gone.
    let branch = header(bye, "Via")
        .and_then(|v| v.split("branch=").nth(1))
        .and_then(|b| b.split(';').next())
        .unwrap()
        .to_owned();
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\nFrom: <sip:x@y>;tag={tag}\r\nTo: <sip:a@b>;tag=alice1\r\nCall-ID: call-1@192.0.2.7\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    h.feed(&ok);
    let (_, events) = h.drain();
    assert!(matches!(events[..], [SipEvent::Terminated { call: c }] if c == call));
    assert_eq!(h.ep.dialog_count(), 0);
}

#[test]
fn our_bye_retransmits_and_gives_up_after_timer_f() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h);
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-ack1"));
    h.drain();
    h.ep.hangup(h.now, call, "rtp_timeout");
    let (sent, _) = h.drain();
    assert!(sent[0].starts_with("BYE "));
    let (sent, events) = h.advance(64 * T1 + Duration::from_millis(1));
    assert!(
        sent.iter().all(|s| s.starts_with("BYE ")) && sent.len() >= 6,
        "retransmitted: {}",
        sent.len()
    );
    assert!(matches!(events[..], [SipEvent::Terminated { call: c }] if c == call));
    assert_eq!(h.ep.transaction_count(), 0);
}

#[test]
fn caller_bye_is_answered_once_and_retransmissions_absorbed() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h);
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-ack1"));
    h.drain();
    let bye = in_dialog("BYE", 2, &tag, "z9hG4bK-bye1");
    h.feed(&bye);
    let (sent, events) = h.drain();
    assert_eq!(status(&sent[0]), 200);
    assert!(matches!(events[..], [SipEvent::ByeReceived { call: c }] if c == call));
    h.feed(&bye);
    let (sent, events) = h.drain();
    assert_eq!(sent.len(), 1, "the retransmitted BYE gets the same 200");
    assert!(events.is_empty());
    // Timer J cleans the transaction up.
    h.advance(64 * T1);
    assert_eq!(h.ep.transaction_count(), 0);
    // A BYE for the ended dialog is now unknown.
    h.feed(&in_dialog("BYE", 3, &tag, "z9hG4bK-bye2"));
    assert_eq!(status(&h.drain().0[0]), 481);
}

#[test]
fn cancel_before_answer_gets_200_and_487_with_the_ringing_tag() {
    let mut h = Harness::new();
    h.feed(&invite("z9hG4bK-inv1", "", OFFER));
    let (_, events) = h.drain();
    let SipEvent::Invite { call, .. } = events[0] else { panic!() };
    h.ep.ring(call);
    let ringing = h.drain().0.remove(0);
    assert_eq!(status(&ringing), 180);
    let tag = to_tag(&ringing).expect("180 carries a To tag (RFC 3261 §8.2.6.2)");
    let cancel = "CANCEL sip:+15550001111@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-inv1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15551234567@192.0.2.7:5062>;tag=alice1\r\nTo: <sip:+15550001111@192.0.2.1:5060>\r\nCall-ID: call-1@192.0.2.7\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    h.feed(cancel);
    let (sent, events) = h.drain();
    let codes: Vec<u16> = sent.iter().map(|s| status(s)).collect();
    assert_eq!(codes, vec![200, 487]);
    assert!(sent[0].contains("CSeq: 1 CANCEL"));
    assert_eq!(to_tag(&sent[1]).as_deref(), Some(tag.as_str()), "487 keeps the dialog's tag");
    assert!(matches!(events[..], [SipEvent::Cancelled { call: c }] if c == call));
    // The 487 is retransmitted (Timer G) until the ACK, which has the INVITE's branch.
    let (sent, _) = h.advance(T1 + Duration::from_millis(1));
    assert_eq!(sent.iter().map(|s| status(s)).collect::<Vec<_>>(), vec![487]);
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-inv1").replace("ACK sip:precall@192.0.2.1:5060", "ACK sip:+15550001111@192.0.2.1:5060"));
    let (sent, _) = h.advance(Duration::from_secs(40));
    assert!(sent.is_empty(), "ACK stops the 487 retransmissions: {sent:?}");
    assert_eq!(h.ep.dialog_count(), 0);
    assert_eq!(h.ep.transaction_count(), 0);
    // A CANCEL for nothing gets 481.
    h.feed(&cancel.replace("z9hG4bK-inv1", "z9hG4bK-none"));
    assert_eq!(status(&h.drain().0[0]), 481);
}

#[test]
fn retransmitted_invite_gets_the_last_response() {
    let mut h = Harness::new();
    let inv = invite("z9hG4bK-inv1", "", OFFER);
    h.feed(&inv);
    let (_, events) = h.drain();
    let SipEvent::Invite { call, .. } = events[0] else { panic!() };
    h.feed(&inv);
    let (sent, events) = h.drain();
    assert_eq!((sent.len(), status(&sent[0]), events.len()), (1, 100, 0));
    h.ep.accept(h.now, call, b"v=0\r\n");
    let ok = h.drain().0.remove(0);
    h.feed(&inv);
    let (sent, events) = h.drain();
    assert_eq!(sent, vec![ok], "after the 2xx, a retransmitted INVITE gets the same 2xx");
    assert!(events.is_empty());
    // The same INVITE by another path (different branch) is a merged request.
    h.feed(&invite("z9hG4bK-other", "", OFFER));
    assert_eq!(status(&h.drain().0[0]), 482);
}

#[test]
fn rejections_carry_codes_reasons_and_headers() {
    let mut h = Harness::new();
    h.feed(&invite("z9hG4bK-r1", "Require: 100rel, foo\r\n", OFFER));
    let r = h.drain().0.remove(0);
    assert_eq!(status(&r), 420);
    assert_eq!(header(&r, "Unsupported"), Some("100rel, foo"));
    h.feed(&invite("z9hG4bK-r2", "", OFFER).replace("application/sdp", "text/plain"));
    let r = h.drain().0.remove(0);
    assert_eq!(status(&r), 415);
    assert_eq!(header(&r, "Accept"), Some("application/sdp"));
    h.feed(&invite("z9hG4bK-r3", "Accept: text/html\r\n", OFFER));
    assert_eq!(status(&h.drain().0[0]), 406);

    let mut h = Harness::new();
    h.feed(&invite("z9hG4bK-r4", "", OFFER));
    let SipEvent::Invite { call, .. } = h.drain().1[0].clone() else {
        panic!()
    };
    h.ep.reject(
        h.now,
        call,
        Rejection::new(503, "Service Unavailable: at capacity (1 calls)").with_header("Retry-After", "30"),
    );
    let r = h.drain().0.remove(0);
    assert!(r.starts_with("SIP/2.0 503 Service Unavailable: at capacity (1 calls)\r\n"));
    assert_eq!(header(&r, "Retry-After"), Some("30"));
    assert!(to_tag(&r).is_some());

    for (method, code) in [("REGISTER", 405), ("MESSAGE", 405), ("FOO", 501), ("BYE", 481)] {
        let msg = format!(
            "{method} sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-{method}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x{method}\r\nCSeq: 5 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        h.feed(&msg);
        let r = h.drain().0.remove(0);
        assert_eq!(status(&r), code, "{method}: {r}");
        if code == 405 || code == 501 {
            assert_eq!(header(&r, "Allow"), Some(ALLOW));
        }
    }
    let refusals: Vec<Refusal> = std::iter::from_fn(|| h.ep.poll_refusal()).collect();
    assert_eq!(refusals.len(), 5, "each refusal is reported once for logging");
    assert!(refusals.iter().all(|r| r.peer == udp_flow().remote));
}

#[test]
fn options_is_answered_in_and_out_of_dialogs() {
    let mut h = Harness::new();
    let options = "OPTIONS sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-o1\r\nFrom: <sip:lb@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n";
    h.feed(options);
    let r = h.drain().0.remove(0);
    assert_eq!(status(&r), 200);
    assert_eq!(header(&r, "Allow"), Some(ALLOW));
    assert_eq!(header(&r, "Accept"), Some("application/sdp"));
    let (_, tag) = answered(&mut h);
    h.feed(&in_dialog("OPTIONS", 2, &tag, "z9hG4bK-o2"));
    assert_eq!(status(&h.drain().0[0]), 200);
    h.feed(&in_dialog("INFO", 3, &tag, "z9hG4bK-i1"));
    assert_eq!(status(&h.drain().0[0]), 200);
    // CSeq going backwards inside a dialog.
    h.feed(&in_dialog("INFO", 2, &tag, "z9hG4bK-i2"));
    assert_eq!(status(&h.drain().0[0]), 500);
}

#[test]
fn reinvite_is_passed_up_and_answered() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h);
    h.feed(&in_dialog("ACK", 1, &tag, "z9hG4bK-ack1"));
    h.drain();
    let hold = OFFER.replace("a=rtpmap", "a=sendonly\r\na=rtpmap");
    let reinvite = in_dialog("INVITE", 2, &tag, "z9hG4bK-re1").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{hold}", hold.len()),
    );
    h.feed(&reinvite);
    let (sent, events) = h.drain();
    assert_eq!(status(&sent[0]), 100);
    assert!(matches!(&events[..], [SipEvent::Reoffer { call: c, body }] if *c == call && body.len() == hold.len()));
    // A second re-INVITE while the first is pending: 491.
    h.feed(&in_dialog("INVITE", 3, &tag, "z9hG4bK-re2"));
    assert_eq!(status(&h.drain().0[0]), 491);
    h.feed(&in_dialog("ACK", 3, &tag, "z9hG4bK-re2"));
    h.ep.answer_reoffer(h.now, call, Ok(b"v=0\r\na=recvonly\r\n".to_vec()));
    let ok = h.drain().0.remove(0);
    assert_eq!(status(&ok), 200);
    assert!(ok.contains("CSeq: 2 INVITE"));
    assert_eq!(to_tag(&ok), Some(tag.clone()));
    h.feed(&in_dialog("ACK", 2, &tag, "z9hG4bK-ack2"));
    let (_, events) = h.drain();
    assert!(events.is_empty(), "the re-INVITE's ACK confirms nothing new");
    let (sent, _) = h.advance(Duration::from_secs(40));
    assert!(sent.is_empty(), "re-INVITE 200 stops on ACK: {sent:?}");
}

#[test]
fn delayed_offer_answer_arrives_in_the_ack() {
    let mut h = Harness::new();
    h.feed(&invite("z9hG4bK-d1", "", ""));
    let SipEvent::Invite { call, .. } = h.drain().1[0].clone() else {
        panic!()
    };
    h.ep.accept(h.now, call, b"v=0\r\n");
    let tag = to_tag(&h.drain().0[0]).unwrap();
    let ack = in_dialog("ACK", 1, &tag, "z9hG4bK-ack").replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{OFFER}", OFFER.len()),
    );
    h.feed(&ack);
    let (_, events) = h.drain();
    assert!(matches!(&events[..], [SipEvent::Confirmed { body, .. }] if body.len() == OFFER.len()));
}

#[test]
fn tcp_final_responses_are_not_retransmitted() {
    let flow = Flow {
        transport: Transport::Tcp(9),
        ..udp_flow()
    };
    let mut h = Harness::with_flow(flow);
    h.feed(&invite("z9hG4bK-t1", "", OFFER).replace("UDP", "TCP"));
    let SipEvent::Invite { call, .. } = h.drain().1[0].clone() else {
        panic!()
    };
    h.ep.reject(h.now, call, Rejection::new(486, "Busy Here"));
    assert_eq!(status(&h.drain().0[0]), 486);
    let (sent, _) = h.advance(Duration::from_secs(40));
    assert!(sent.is_empty());
    assert_eq!(h.ep.dialog_count(), 0);
    // Contact says TCP on an accepted call.
    h.feed(&invite("z9hG4bK-t2", "", OFFER).replace("UDP", "TCP").replace("call-1@", "call-2@"));
    let SipEvent::Invite { call, .. } = h.drain().1[0].clone() else {
        panic!()
    };
    h.ep.accept(h.now, call, b"v=0\r\n");
    assert!(h.drain().0[0].contains("Contact: <sip:precall@192.0.2.1:5060;transport=tcp>"));
}

#[test]
fn garbage_never_panics() {
    let mut h = Harness::new();
    let base = invite("z9hG4bK-g", "", OFFER).into_bytes();
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for i in 0..20_000usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut msg = base.clone();
        match i % 4 {
            0 => msg.truncate((x as usize) % base.len()),
            1 => {
                for _ in 0..(x % 8) {
                    let at = (x as usize).wrapping_mul(31) % msg.len();
                    msg[at] = (x >> 8) as u8;
                    x = x.rotate_left(7);
                }
            }
            2 => msg = (0..(x % 300)).map(|k| (x.rotate_left(k as u32) & 0xFF) as u8).collect(),
            _ => {
                let at = (x as usize) % msg.len();
                msg.insert(at, b"\r\n:;<>\"\0,"[(x % 9) as usize]);
            }
        }
        h.ep.handle_datagram(h.now, h.flow, &msg);
        h.drain();
    }
}
