//! A whole call on fake time: a [`CallMachine`] between a simulated caller
//! (paced RTP out, every packet it hears kept), a scripted clone service, a
//! scripted agent and a well-behaved dialog, with time jumping to the next
//! wake-up of any of them (quinn-proto's `Pair`, str0m's `progress()`). A
//! minute of call runs in milliseconds, and the same inputs give the same call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::machine::{AgentPlan, CallMachine, CallSetup, Finished, Input, MediaEdge, Output, Seeds, SipOut};
use super::{CallInput, CallLimits, EndReason};
use crate::clone::{Outcome, Resolution};
use crate::elevenlabs::ws::{AgentCommand, AgentEvent, Conversation};
use crate::media::format::AudioFormat;
use crate::media::g711::{self, G711};
use crate::media::prompt::{Player, Prompt};
use crate::media::rtp::{RtpHeader, RtpPacket};
use crate::sip::endpoint::ReferProgress;
use crate::sip::sdp::{self, LocalMedia, SessionDescription};
use crate::store::{CallRow, Record};

pub const CALLER_RTP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);
pub const MS: Duration = Duration::from_millis(1);
pub const SEC: Duration = Duration::from_secs(1);
pub const GREETING_HZ: f64 = 400.0;
pub const HOLD_HZ: f64 = 250.0;
pub const APOLOGY_HZ: f64 = 1000.0;
pub const DEFAULT_VOICE: &str = "default-voice";

/// A pure tone, `seconds` long, at 8 kHz.
pub fn tone(hz: f64, seconds: f64) -> Vec<i16> {
    (0..(8000.0 * seconds) as usize)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Frequency of a (near) pure tone by zero crossings.
pub fn pitch(x: &[i16]) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / 8000.0)
}

pub fn offer(payloads: &str, direction: &str) -> String {
    format!(
        "v=0\r\no=caller 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP {payloads}\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
        CALLER_RTP.port()
    )
}

/// How the simulated world behaves.
#[derive(Debug, Clone)]
pub struct World {
    /// The caller's SDP offer in the INVITE; `None` for a delayed offer.
    pub invite_offer: Option<String>,
    /// For a delayed offer: the answer the ACK carries.
    pub ack_answer: String,
    pub ack_after: Duration,
    pub answer_delay: Duration,
    pub limits: CallLimits,
    /// `Some`: a clone service answers with this voice after this long.
    pub clone: Option<(Duration, String)>,
    /// `Some`: an agent that takes and speaks this format.
    pub agent: Option<AudioFormat>,
    pub agent_ready_after: Duration,
    /// The agent's first message, in seconds of speech.
    pub first_message: f64,
    pub greeting_seconds: f64,
    /// RTP (a SIP call) or frames (a Twilio stream).
    pub edge: MediaEdge,
    /// SRTP policy and key for the call's answer (default: plain RTP).
    pub security: crate::sip::sdp::MediaSecurity,
    /// How a DTLS handshake the call asks for ends, and after how long.
    pub dtls: (Duration, Result<crate::media::srtp::SrtpParams, String>),
}

impl Default for World {
    fn default() -> Self {
        World {
            invite_offer: Some(offer("0 101", "sendrecv")),
            ack_answer: offer("0 101", "sendrecv"),
            ack_after: 5 * MS,
            answer_delay: Duration::ZERO,
            limits: CallLimits {
                max_duration: Duration::from_secs(3600),
                rtp_timeout: Duration::from_secs(30),
                hold_timeout: Duration::from_secs(300),
            },
            clone: None,
            agent: Some(AudioFormat::Pcm(16000)),
            agent_ready_after: 150 * MS,
            first_message: 1.0,
            greeting_seconds: 2.0,
            edge: MediaEdge::Rtp,
            security: crate::sip::sdp::MediaSecurity::default(),
            dtls: (300 * MS, Err("no DTLS in this world".into())),
        }
    }
}

/// What happens to the machine at a scheduled instant.
#[derive(Debug)]
pub enum Scheduled {
    Sip(CallInput),
    Ack(String),
    Reoffer(String),
    Refer(ReferProgress),
    Clone(Resolution),
    Agent(AgentEvent),
    Dtls(Result<crate::media::srtp::SrtpParams, String>),
}

/// One RTP packet the caller heard.
#[derive(Debug, Clone)]
pub struct Heard {
    pub at: Instant,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub pcm: Vec<i16>,
}

pub struct Harness {
    pub t0: Instant,
    pub now: Instant,
    pub m: CallMachine,
    pub world: World,
    pending: Vec<(Instant, Scheduled)>,
    /// The caller sends RTP (a packet every 20 ms) while set.
    pub caller_sends: bool,
    next_rtp: Instant,
    rtp_seq: u16,
    rtp_ts: u32,
    /// What the caller says next (8 kHz PCM); silence when empty.
    pub talk: VecDeque<i16>,
    pub heard: Vec<Heard>,
    pub sip: Vec<(Instant, SipOut)>,
    pub records: Vec<Record>,
    pub to_agent: Vec<(Instant, String)>,
    /// The caller's audio as the agent received it (the bytes of every `user_audio_chunk`).
    pub agent_received: Vec<u8>,
    pub conversations: Vec<Conversation>,
    pub clones_started: usize,
    pub finished: Option<(Instant, Finished)>,
    /// When the machine asked for a DTLS handshake.
    pub dtls_started: Option<Instant>,
    /// The wire size of every packet the caller heard.
    pub heard_sizes: Vec<usize>,
}

impl Harness {
    pub fn new(world: World) -> Self {
        let t0 = Instant::now();
        let local = LocalMedia {
            addr: [127, 0, 0, 1].into(),
            port: 30000,
            session_id: 7,
            version: 1,
            security: world.security,
        };
        let (negotiated, answer_sdp) = match &world.invite_offer {
            Some(o) => {
                let sd = SessionDescription::parse(o.as_bytes()).expect("test offer parses");
                let (n, body) = sdp::answer(&sd, &local).expect("test offer is acceptable");
                (Some(n), body)
            }
            None => (None, sdp::offer(&local)),
        };
        let greeting = Prompt::from_pcm_8k(tone(GREETING_HZ, world.greeting_seconds));
        let setup = CallSetup {
            local,
            negotiated,
            player: Player::new(greeting, Some(Prompt::from_pcm_8k(tone(HOLD_HZ, 1.0)))),
            apology: Prompt::from_pcm_8k(tone(APOLOGY_HZ, 1.5)),
            limits: world.limits,
            answer_delay: world.answer_delay,
            answer_sdp: answer_sdp.into_bytes(),
            row: CallRow {
                call_id: "call-1".into(),
                revision: 1,
                protocol: "sip".into(),
                caller: Some("+15551234567".into()),
                started_at: 1_700_000_000_000,
                ..CallRow::default()
            },
            cloning: world.clone.is_some(),
            agent: world.agent.map(|_| AgentPlan {
                default_voice_id: DEFAULT_VOICE.into(),
                max_queue_seconds: 30,
            }),
            strict_rtp_source: false,
            seeds: Seeds {
                ssrc: 0x1234_5678,
                sequence: 65_000,
                timestamp: 4_000_000_000,
                hand_off_event: "event-1".into(),
            },
            edge: world.edge,
        };
        let mut h = Harness {
            t0,
            now: t0,
            m: CallMachine::new(t0, setup),
            pending: Vec::new(),
            caller_sends: true,
            next_rtp: t0 + 20 * MS,
            rtp_seq: 1,
            rtp_ts: 0,
            talk: VecDeque::new(),
            heard: Vec::new(),
            sip: Vec::new(),
            records: Vec::new(),
            to_agent: Vec::new(),
            agent_received: Vec::new(),
            conversations: Vec::new(),
            clones_started: 0,
            dtls_started: None,
            heard_sizes: Vec::new(),
            finished: None,
            world,
        };
        // The caller's ACK to our 200 (sent at once unless ringing).
        if h.world.answer_delay.is_zero() {
            h.schedule_ack(h.world.ack_after);
        }
        h.drain();
        h
    }

    fn schedule_ack(&mut self, after: Duration) {
        let ack = if self.world.invite_offer.is_some() {
            Scheduled::Sip(CallInput::Confirmed)
        } else {
            Scheduled::Ack(self.world.ack_answer.clone())
        };
        self.at(after, ack);
    }

    /// Schedules an input `after` from now.
    pub fn at(&mut self, after: Duration, what: Scheduled) {
        self.pending.push((self.now + after, what));
    }

    pub fn ended(&self) -> Option<&EndReason> {
        self.finished.as_ref().map(|(_, f)| &f.reason)
    }

    /// Runs until `pred` holds or `limit` of fake time passed; whether it held.
    pub fn run_until(&mut self, limit: Duration, mut pred: impl FnMut(&Harness) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if pred(self) {
                return true;
            }
            if self.finished.is_some() || !self.step(end) {
                return pred(self);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.finished.is_none() && self.step(end) {}
    }

    /// Advances to the next wake-up of anyone (not past `end`) and delivers it.
    fn step(&mut self, end: Instant) -> bool {
        let mut next = self.m.poll_timeout();
        if self.caller_sends {
            next = Some(next.map_or(self.next_rtp, |n| n.min(self.next_rtp)));
        }
        if let Some(p) = self.pending.iter().map(|(at, _)| *at).min() {
            next = Some(next.map_or(p, |n| n.min(p)));
        }
        let Some(next) = next.filter(|n| *n <= end) else {
            self.now = end;
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        while let Some(i) = self.pending.iter().position(|(at, _)| *at <= now) {
            let (_, what) = self.pending.remove(i);
            self.deliver(what);
            self.drain();
        }
        if self.caller_sends && self.next_rtp <= now {
            self.send_rtp();
            self.next_rtp += 20 * MS;
            self.drain();
        }
        if self.m.poll_timeout().is_some_and(|t| t <= now) {
            self.m.handle_timeout(now);
            self.drain();
        }
        true
    }

    fn deliver(&mut self, what: Scheduled) {
        let now = self.now;
        match what {
            Scheduled::Sip(i) => self.m.handle(now, Input::Sip(i)),
            Scheduled::Ack(body) => self.m.handle(now, Input::AckBody(body.as_bytes())),
            Scheduled::Reoffer(body) => self.m.handle(now, Input::Reoffer(body.as_bytes())),
            Scheduled::Refer(p) => self.m.handle(now, Input::Refer(p)),
            Scheduled::Clone(r) => self.m.handle(now, Input::Clone(r)),
            Scheduled::Agent(ev) => self.m.handle(now, Input::Agent(ev)),
            Scheduled::Dtls(keys) => self.m.handle(now, Input::Dtls(keys)),
        }
    }

    /// One 20 ms packet of the caller's speech (or silence).
    pub fn send_rtp(&mut self) {
        let mut pcm = [0i16; 160];
        for s in pcm.iter_mut() {
            *s = self.talk.pop_front().unwrap_or(0);
        }
        let mut packet = [0u8; 12 + 160];
        RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: self.rtp_seq,
            timestamp: self.rtp_ts,
            ssrc: 0xCA11_E500,
        }
        .write(&mut packet)
        .expect("room for the header");
        G711::Ulaw.encode(&pcm, &mut packet[12..]);
        let input = match self.world.edge {
            MediaEdge::Rtp => Input::Rtp {
                data: &packet,
                from: CALLER_RTP,
            },
            MediaEdge::Frames => Input::Frame {
                seq: self.rtp_seq,
                payload: &packet[12..],
            },
        };
        self.m.handle(self.now, input);
        self.rtp_seq = self.rtp_seq.wrapping_add(1);
        self.rtp_ts = self.rtp_ts.wrapping_add(160);
    }

    /// The caller's next packet numbers jump ahead (a packet lost or delayed).
    pub fn skip_rtp(&mut self, packets: u16) {
        self.rtp_seq = self.rtp_seq.wrapping_add(packets);
        self.rtp_ts = self.rtp_ts.wrapping_add(160 * u32::from(packets));
    }

    /// The caller's next packet numbers go back (a delayed packet arriving).
    pub fn rewind_rtp(&mut self, packets: u16) {
        self.rtp_seq = self.rtp_seq.wrapping_sub(packets);
        self.rtp_ts = self.rtp_ts.wrapping_sub(160 * u32::from(packets));
    }

    /// Carries out what the machine produced for inputs given by hand.
    pub fn drain_now(&mut self) {
        self.drain();
    }

    /// Takes everything the machine wants done and plays the other parties' part.
    fn drain(&mut self) {
        let now = self.now;
        while self.world.edge == MediaEdge::Frames
            && let Some(payload) = self.m.poll_frame()
        {
            let n = self.heard.len();
            self.heard.push(Heard {
                at: now,
                seq: n as u16,
                ts: n as u32 * 160,
                marker: false,
                pcm: payload.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
            });
        }
        while let Some((to, packet)) = self.m.poll_transmit() {
            assert_eq!(to, CALLER_RTP, "media goes to the caller");
            let p = RtpPacket::parse(packet).expect("we send valid RTP");
            self.heard_sizes.push(packet.len());
            self.heard.push(Heard {
                at: now,
                seq: p.header.sequence,
                ts: p.header.timestamp,
                marker: p.header.marker,
                pcm: p.payload.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
            });
        }
        while let Some(out) = self.m.poll_output() {
            match out {
                Output::Sip(cmd) => {
                    match &cmd {
                        // A phone answers our BYE.
                        SipOut::Hangup(_) => self.at(10 * MS, Scheduled::Sip(CallInput::Terminated)),
                        SipOut::Accept(_) => self.schedule_ack(self.world.ack_after),
                        _ => {}
                    }
                    self.sip.push((now, cmd));
                }
                Output::Agent(AgentCommand::Text(json)) => {
                    let json = String::from_utf8(json.to_vec()).expect("UTF-8 JSON");
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json)
                        && let Some(b64) = v["user_audio_chunk"].as_str()
                    {
                        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("valid base64");
                        self.agent_received.extend_from_slice(&bytes);
                    } else {
                        self.to_agent.push((now, json));
                    }
                }
                Output::Agent(AgentCommand::Close) => self.to_agent.push((now, "close".into())),
                Output::Record(r) => self.records.push(r),
                Output::StartClone => {
                    self.clones_started += 1;
                    if let Some((after, voice)) = self.world.clone.clone() {
                        let r = Resolution {
                            voice_id: voice,
                            outcome: Outcome::Cloned,
                            waited: after,
                            caller_id: Some("+15551234567".into()),
                        };
                        self.at(after, Scheduled::Clone(r));
                    }
                }
                Output::StartDtls { .. } => {
                    let (after, result) = self.world.dtls.clone();
                    self.dtls_started = Some(now);
                    self.at(after, Scheduled::Dtls(result));
                }
                Output::ConnectAgent(conv) => {
                    if let Some(format) = self.world.agent {
                        let ready = self.world.agent_ready_after;
                        self.at(
                            ready,
                            Scheduled::Agent(AgentEvent::Ready {
                                conversation_id: "conv-1".into(),
                                input: format,
                                output: format,
                            }),
                        );
                        let first = self.world.first_message;
                        if first > 0.0 {
                            self.agent_says(ready + MS, &conv.voice_id, first, 1);
                        }
                    }
                    self.conversations.push(conv);
                }
                Output::Ended(_) => {
                    let f = self.m.finish(now);
                    self.finished = Some((now, f));
                }
            }
        }
    }

    /// The agent speaks `seconds` in `voice`, arriving `after` from now in
    /// 250 ms chunks as the event `event_id`.
    pub fn agent_says(&mut self, after: Duration, voice: &str, seconds: f64, event_id: u64) {
        let format = self.world.agent.unwrap_or(AudioFormat::Pcm(16000));
        let pcm = crate::sim::speak(voice, format.rate(), seconds);
        for chunk in pcm.chunks(format.rate() as usize / 4) {
            let audio = match format {
                AudioFormat::Pcm(_) => chunk.iter().flat_map(|s| s.to_le_bytes()).collect(),
                AudioFormat::Ulaw8000 => chunk.iter().map(|&s| g711::ulaw_encode(s)).collect(),
            };
            self.at(after, Scheduled::Agent(AgentEvent::Audio { event_id, audio }));
        }
    }

    /// The caller's audio heard in `[from, to)`, as 8 kHz PCM.
    pub fn heard_between(&self, from: Instant, to: Instant) -> Vec<i16> {
        self.heard
            .iter()
            .filter(|h| h.at >= from && h.at < to)
            .flat_map(|h| h.pcm.iter().copied())
            .collect()
    }

    /// When the caller first heard 200 ms of a tone within 15 Hz of `hz`.
    pub fn first_heard(&self, hz: f64) -> Option<Instant> {
        self.heard.windows(10).find_map(|w| {
            let pcm: Vec<i16> = w.iter().flat_map(|h| h.pcm.iter().copied()).collect();
            ((pitch(&pcm) - hz).abs() < 15.0).then_some(w[0].at)
        })
    }

    /// The last `call_log` revision recorded so far (the final one once finished).
    pub fn last_row(&self) -> CallRow {
        if let Some((_, f)) = &self.finished {
            return f.row.clone();
        }
        self.records
            .iter()
            .rev()
            .find_map(|r| match r {
                Record::Call(row) => Some((**row).clone()),
                _ => None,
            })
            .expect("a call row was recorded")
    }

    pub fn hangups(&self) -> Vec<EndReason> {
        self.sip
            .iter()
            .filter_map(|(_, c)| match c {
                SipOut::Hangup(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}
