//! The SIP endpoint and the call state machine on fake time, fed sequences of
//! INVITE/ACK/BYE/CANCEL/UPDATE/re-INVITE with arbitrary header values (the
//! structure a mutation of raw bytes rarely reaches), raw datagrams and clock
//! jumps. Besides "never panics", two properties: every timer, once handled,
//! moves on (no loop can turn without waiting), and the call machine never
//! asks to be woken in the past.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use precall::call::{CallAction, CallInput, CallLimits, Lifecycle};
use precall::sip::endpoint::{CallKey, Endpoint, EndpointConfig, Output, SipEvent};
use precall::sip::{Flow, Transport};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Name {
    SessionExpires,
    CompactSessionExpires,
    MinSe,
    Supported,
    Require,
    ContentLength,
    MaxForwards,
    Expires,
    RetryAfter,
    Cseq,
    Via,
    Contact,
    RecordRoute,
}

impl Name {
    fn as_str(self) -> &'static str {
        match self {
            Name::SessionExpires => "Session-Expires",
            Name::CompactSessionExpires => "x",
            Name::MinSe => "Min-SE",
            Name::Supported => "Supported",
            Name::Require => "Require",
            Name::ContentLength => "Content-Length",
            Name::MaxForwards => "Max-Forwards",
            Name::Expires => "Expires",
            Name::RetryAfter => "Retry-After",
            Name::Cseq => "CSeq",
            Name::Via => "Via",
            Name::Contact => "Contact",
            Name::RecordRoute => "Record-Route",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    Number(u64),
    Huge,
    Text(String),
    WithParam(u64, String),
}

impl Value {
    fn render(&self) -> String {
        let clean = |s: &str| s.chars().filter(|c| !matches!(c, '\r' | '\n')).take(100).collect::<String>();
        match self {
            Value::Number(n) => n.to_string(),
            Value::Huge => "184467440737095516159999".into(),
            Value::Text(s) => clean(s),
            Value::WithParam(n, p) => format!("{n};{}", clean(p)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Invite { call: u8, offer: bool, extra: Vec<(Name, Value)> },
    Ack { call: u8, answer: bool, extra: Vec<(Name, Value)> },
    Bye { call: u8 },
    Cancel { call: u8 },
    Update { call: u8, extra: Vec<(Name, Value)> },
    ReInvite { call: u8, offer: bool, extra: Vec<(Name, Value)> },
    Respond { call: u8, status: u16, method: u8 },
    Advance { ms: u32 },
    Raw(Vec<u8>),
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

struct Sim {
    ep: Endpoint,
    now: Instant,
    flow: Flow,
    calls: HashMap<CallKey, Lifecycle>,
    to_tags: HashMap<String, String>,
    cseq: u32,
}

impl Sim {
    fn message(&mut self, method: &str, call: u8, cseq_method: &str, body: &str, extra: &[(Name, Value)]) -> Vec<u8> {
        self.cseq = self.cseq.wrapping_add(1);
        let cid = format!("fuzz-{}", call % 4);
        let to_tag = self.to_tags.get(&cid).map(|t| format!(";tag={t}")).unwrap_or_default();
        let mut m = format!(
            "{method} sip:precall@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+15551234567@192.0.2.7>;tag=f{}\r\nTo: <sip:precall@192.0.2.1>{to_tag}\r\n\
             Call-ID: {cid}\r\nCSeq: {} {cseq_method}\r\nContact: <sip:caller@192.0.2.7>\r\n",
            if method == "ACK" || method == "CANCEL" { 0 } else { self.cseq },
            call % 4,
            self.cseq,
        );
        for (name, value) in extra.iter().take(8) {
            m.push_str(&format!("{}: {}\r\n", name.as_str(), value.render()));
        }
        if !body.is_empty() {
            m.push_str("Content-Type: application/sdp\r\n");
        }
        m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        m.into_bytes()
    }

    fn pump(&mut self) {
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10_000, "outputs never run dry");
            let mut hangups = Vec::new();
            while let Some(out) = self.ep.poll_output() {
                match out {
                    Output::Transmit(t) => self.learn_tag(&t.data),
                    Output::Event(ev) => self.event(ev),
                    Output::Response(_) => {}
                }
            }
            for (key, call) in self.calls.iter_mut() {
                while let Some(action) = call.poll_action() {
                    if let CallAction::Hangup(reason) = action {
                        hangups.push((*key, reason));
                    }
                }
            }
            if hangups.is_empty() {
                break;
            }
            for (key, reason) in hangups {
                self.ep.hangup(self.now, key, reason.as_str());
            }
        }
        self.calls.retain(|_, c| c.state() != precall::call::CallState::Ended);
    }

    fn learn_tag(&mut self, data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        if !text.starts_with("SIP/2.0 2") {
            return;
        }
        let header = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        if let (Some(cid), Some(to)) = (header("Call-ID:"), header("To:"))
            && let Some(tag) = to.split(";tag=").nth(1)
        {
            self.to_tags.insert(cid.to_owned(), tag.split(';').next().unwrap_or(tag).to_owned());
        }
    }

    fn event(&mut self, ev: SipEvent) {
        let now = self.now;
        let limits = CallLimits {
            max_duration: Duration::from_secs(3600),
            rtp_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(300),
        };
        match ev {
            SipEvent::Invite { call, request, .. } => {
                let mut c = Lifecycle::new(now, limits);
                if request.body.is_empty() {
                    self.ep.accept(now, call, SDP.as_bytes());
                } else {
                    self.ep.accept(now, call, SDP.as_bytes());
                    c.handle(now, CallInput::Answered);
                }
                self.calls.insert(call, c);
            }
            SipEvent::Confirmed { call, body } => {
                if let Some(c) = self.calls.get_mut(&call) {
                    let input = if body.is_empty() {
                        CallInput::ConfirmedWithoutAnswer
                    } else {
                        CallInput::Confirmed
                    };
                    c.handle(now, input);
                }
            }
            SipEvent::Cancelled { call } => self.input(call, CallInput::Cancelled),
            SipEvent::ByeReceived { call } => self.input(call, CallInput::ByeReceived),
            SipEvent::AckTimeout { call } => self.input(call, CallInput::AckTimeout),
            SipEvent::SessionExpired { call } => self.input(call, CallInput::SessionExpired),
            SipEvent::Terminated { call } => self.input(call, CallInput::Terminated),
            SipEvent::Reoffer { call, .. } => self.ep.answer_reoffer(now, call, Ok(SDP.as_bytes().to_vec())),
            _ => {}
        }
    }

    fn input(&mut self, call: CallKey, input: CallInput) {
        if let Some(c) = self.calls.get_mut(&call) {
            c.handle(self.now, input);
        }
    }

    /// Runs every timer due by `now`; each must move on once handled.
    fn timers(&mut self) {
        let mut turns = 0;
        while let Some(at) = self.ep.poll_timeout() {
            if at > self.now {
                break;
            }
            self.ep.handle_timeout(self.now);
            self.pump();
            turns += 1;
            assert!(turns < 10_000, "an endpoint timer does not advance");
        }
        for c in self.calls.values_mut() {
            if c.poll_timeout().is_some_and(|t| t <= self.now) {
                c.handle_timeout(self.now);
                assert!(
                    c.poll_timeout().is_none_or(|t| t > self.now),
                    "the call asks to be woken in the past after handling its timeout"
                );
            }
        }
        self.pump();
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut sim = Sim {
        ep: Endpoint::new(EndpointConfig {
            user_agent: "fuzz".into(),
            timers: Default::default(),
            public_addr: None,
            session: Default::default(),
            auth: None,
        }),
        now: Instant::now(),
        flow: Flow {
            transport: Transport::Udp,
            remote: SocketAddr::from(([192, 0, 2, 7], 5060)),
            local: SocketAddr::from(([192, 0, 2, 1], 5060)),
        },
        calls: HashMap::new(),
        to_tags: HashMap::new(),
        cseq: 0,
    };
    for op in ops.into_iter().take(64) {
        let data = match op {
            Op::Invite { call, offer, extra } => sim.message("INVITE", call, "INVITE", if offer { SDP } else { "" }, &extra),
            Op::Ack { call, answer, extra } => sim.message("ACK", call, "ACK", if answer { SDP } else { "" }, &extra),
            Op::Bye { call } => sim.message("BYE", call, "BYE", "", &[]),
            Op::Cancel { call } => sim.message("CANCEL", call, "CANCEL", "", &[]),
            Op::Update { call, extra } => sim.message("UPDATE", call, "UPDATE", "", &extra),
            Op::ReInvite { call, offer, extra } => sim.message("INVITE", call, "INVITE", if offer { SDP } else { "" }, &extra),
            Op::Respond { call, status, method } => {
                let method = ["BYE", "UPDATE", "INVITE", "REFER"][usize::from(method % 4)];
                let mut m = sim.message("X", call, method, "", &[]);
                let text = String::from_utf8_lossy(&m).replacen(
                    "X sip:precall@192.0.2.1 SIP/2.0",
                    &format!("SIP/2.0 {} Whatever", status % 700),
                    1,
                );
                m = text.into_bytes();
                m
            }
            Op::Advance { ms } => {
                sim.now += Duration::from_millis(u64::from(ms % 120_000));
                sim.timers();
                continue;
            }
            Op::Raw(bytes) => bytes,
        };
        let (now, flow) = (sim.now, sim.flow);
        sim.ep.handle_datagram(now, flow, &data);
        sim.pump();
        sim.timers();
    }
});
