//! One call, from admission to its record, as a sans-IO state machine.
//!
//! [`CallMachine`] owns everything a call decides: the [`Lifecycle`] (timers,
//! end reasons, when the agent may connect), the paced media timeline, the
//! caller's RTP (source latching, statistics, DTMF), the greeting/agent/apology
//! switch ([`AgentLink`]), transfers, re-offers and every revision of the
//! call's `call_log` row. It reads no clock (every input carries `now`; wall
//! time is derived from the row's `started_at` and the elapsed `Instant`), draws
//! no random numbers (the RTP seeds and the hand-off event id come in
//! [`CallSetup`]) and touches no socket: the shell in [`super::task`] feeds it
//! datagrams, channel events and timer expiries, sends the packets
//! [`CallMachine::poll_transmit`] yields and carries out each [`Output`].
//! Tests drive it on fake time with a simulated caller, clone service and
//! agent (`tests/machine.rs`).
//!
//! Reading order is the life of a call: [`CallMachine::new`] (admitted, maybe
//! ringing), [`CallMachine::handle`] (signalling, RTP, the clone's answer, the
//! agent's events), [`CallMachine::handle_timeout`] (answer delay, media clock,
//! call timers), then [`CallMachine::finish`] (the final row).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod conversation;
mod media;
mod offer;

use media::Burst;

use super::agent::AgentLink;
use super::lifecycle::{CallAction, CallInput, Lifecycle};
use super::{CallLimits, EndReason};
use crate::clone::Resolution;
use crate::elevenlabs::ws::{AgentCommand, AgentEvent, Conversation};
use crate::media::dtmf::DtmfReceiver;
use crate::media::prompt::{Player, Prompt};
use crate::media::quality;
use crate::media::receiver::RtpStats;
use crate::media::session::{RtpReceiver, RtpSender, SourceLatch};
use crate::media::wire::WireCodec;
use crate::sip::endpoint::ReferProgress;
use crate::sip::message::Rejection;
use crate::sip::sdp::{LocalMedia, Negotiated};
use crate::store::{CallRow, Record};

/// What admission decided for a call: no sockets, channels or clocks.
#[derive(Debug)]
pub struct CallSetup {
    pub local: LocalMedia,
    /// Settled by an offer in the INVITE; `None` for a delayed offer.
    pub negotiated: Option<Negotiated>,
    pub player: Player,
    /// Played before hanging up when the agent fails.
    pub apology: Prompt,
    pub limits: CallLimits,
    /// Non-zero: ring this long, then answer with `answer_sdp`.
    pub answer_delay: Duration,
    pub answer_sdp: Vec<u8>,
    /// The call's `call_log` row so far (revision 1, started).
    pub row: CallRow,
    /// A clone service resolves the voice; without one the agent speaks in its default voice.
    pub cloning: bool,
    /// The agent to bridge to; `None` keeps the call on the greeting and hold audio.
    pub agent: Option<AgentPlan>,
    /// `rtp.strict_source`: accept RTP only from the SDP address.
    pub strict_rtp_source: bool,
    pub seeds: Seeds,
    pub edge: MediaEdge,
}

/// How the caller's media reaches the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEdge {
    /// RTP on the call's own UDP port (a SIP call): packets are latched,
    /// counted and carry DTMF; the call may be transferred with REFER.
    Rtp,
    /// 20 ms frames on a stream that already framed and authenticated them
    /// (Twilio Media Streams): [`Input::Frame`] in, [`CallMachine::poll_frame`] out.
    Frames,
}

/// The agent side of a call as far as the machine needs it.
#[derive(Debug, Clone)]
pub struct AgentPlan {
    pub default_voice_id: String,
    pub max_queue_seconds: u32,
}

/// The randomness a call needs, drawn by the caller of [`CallMachine::new`].
#[derive(Debug, Clone)]
pub struct Seeds {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    /// The id of the call's `clone_transfer_events` row.
    pub hand_off_event: String,
}

/// The SIP side of what the call decided.
#[derive(Debug, Clone, PartialEq)]
pub enum SipOut {
    /// The ringing is over: send the 200 with this SDP.
    Accept(Vec<u8>),
    Hangup(EndReason),
    AnswerReoffer(Result<Vec<u8>, Rejection>),
    /// Transfer the caller (REFER) to a SIP URI or number.
    Refer(String),
}

/// Everything that happens to a call.
#[derive(Debug)]
pub enum Input<'a> {
    /// A signalling event from the dialog.
    Sip(CallInput),
    /// The ACK of a 200 that carried our offer (delayed offer, or an offerless re-INVITE).
    AckBody(&'a [u8]),
    /// A re-INVITE/UPDATE offer (empty: an offerless re-INVITE).
    Reoffer(&'a [u8]),
    Refer(ReferProgress),
    /// A datagram on the call's RTP port.
    Rtp {
        data: &'a [u8],
        from: SocketAddr,
    },
    /// A caller frame on a [`MediaEdge::Frames`] edge, numbered in arrival order.
    Frame {
        seq: u16,
        payload: &'a [u8],
    },
    /// A keypad digit signalled out of band (Twilio's `dtmf` event).
    Digit(char),
    /// The clone service decided the voice.
    Clone(Resolution),
    Agent(AgentEvent),
    /// The DTLS handshake [`Output::StartDtls`] asked for finished: the SRTP
    /// keys, or why there are none.
    Dtls(Result<crate::media::srtp::SrtpParams, String>),
}

/// What the shell must do.
#[derive(Debug)]
pub enum Output {
    Sip(SipOut),
    /// A message for the agent's WebSocket.
    Agent(AgentCommand),
    Record(Record),
    /// Resolve the caller's voice (the answer comes back as [`Input::Clone`]).
    StartClone,
    /// Open the agent conversation.
    ConnectAgent(Conversation),
    /// Run a DTLS-SRTP handshake on the call's RTP socket (first towards
    /// `remote`); the keys come back as [`Input::Dtls`]. Until then no media
    /// is sent or accepted.
    StartDtls {
        params: crate::media::dtls::DtlsParams,
        remote: SocketAddr,
    },
    /// The call is over: take [`CallMachine::finish`].
    Ended(EndReason),
}

pub struct CallMachine {
    call: Lifecycle,
    created: Instant,
    row: CallRow,
    local: LocalMedia,
    negotiated: Option<Negotiated>,
    player: Player,
    apology: Prompt,
    answer_at: Option<Instant>,
    answer_sdp: Vec<u8>,
    cloning: bool,
    plan: Option<AgentPlan>,
    seeds: Seeds,
    edge: MediaEdge,
    /// The caller's frames on a [`MediaEdge::Frames`] edge: count, and losses
    /// from gaps in their numbers.
    frames_in: RtpStats,
    last_frame: Option<u16>,
    sender: Option<RtpSender>,
    receiver: RtpReceiver,
    /// Where packets go (the SDP address, or the latched source).
    dest: Option<SocketAddr>,
    /// Where the SDP says the caller's media is.
    sdp_remote: Option<SocketAddr>,
    latch: SourceLatch,
    burst: Box<Burst>,
    /// The call's SRTP contexts, when the stream is RTP/SAVP(F).
    srtp: Option<crate::media::srtp::SrtpSession>,
    /// Where an SRTP packet is decrypted to (sized once; reused per packet).
    plain: Vec<u8>,
    /// The DTLS handshake asked for and not yet finished: no media meanwhile.
    dtls: Option<crate::media::dtls::DtlsParams>,
    /// The DTLS parameters the current SRTP keys came from.
    dtls_done_for: Option<crate::media::dtls::DtlsParams>,
    skipped: u64,
    ignored: u64,
    media_started: Option<Instant>,
    stopped: bool,
    dtmf: DtmfReceiver,
    /// Digits the caller pressed (RFC 4733), first 64 kept.
    digits: String,
    /// Boxed: most of a call is spent on the greeting, and a link (its
    /// forwarder's reorder slots, its buffers) is about 7 KB.
    agent: Option<Box<AgentLink>>,
    /// The agent's transfer tool call waiting for the REFER's outcome.
    transfer: Option<String>,
    /// The codec on the wire (G.711 as is, Opus transcoded).
    wire: Option<WireCodec>,
    inbound: Vec<u8>,
    outputs: VecDeque<Output>,
    ended: Option<EndReason>,
}

impl std::fmt::Debug for CallMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMachine")
            .field("call_id", &self.row.call_id)
            .field("state", &self.call.state())
            .finish()
    }
}

/// The end of a call: its final row and what the log line and metrics report.
#[derive(Debug)]
pub struct Finished {
    pub row: CallRow,
    pub reason: EndReason,
    pub stats: RtpStats,
    pub mos: Option<f64>,
    pub rtp_out_packets: u64,
    pub rtp_out_skipped: u64,
    pub rtp_in_ignored: u64,
    pub media_started_ms: Option<u64>,
    pub confirmed_ms: Option<u64>,
    pub digits: String,
    pub agent_frames_out: u64,
    pub agent_frames_in: u64,
    pub agent_interruptions: u64,
    pub agent_chunks_dropped: u64,
    pub hand_off_gap_ms: Option<u64>,
    /// The SRTP suite, when the call's media were encrypted.
    pub srtp_suite: Option<&'static str>,
    /// SRTP packets dropped for a bad authentication tag, and as replays.
    pub srtp_auth_failures: u64,
    pub srtp_replays: u64,
}

impl CallMachine {
    /// An admitted call: answered at once (the 200 is already on its way), or
    /// ringing for `answer_delay`.
    pub fn new(now: Instant, setup: CallSetup) -> Self {
        let CallSetup {
            local,
            negotiated,
            player,
            apology,
            limits,
            answer_delay,
            answer_sdp,
            row,
            cloning,
            agent,
            strict_rtp_source,
            seeds,
            edge,
        } = setup;
        let rate = if negotiated.is_some_and(|n| n.opus) { 48000 } else { 8000 };
        let remote = negotiated.map(|n| n.remote);
        let mut m = CallMachine {
            call: Lifecycle::new(now, limits),
            created: now,
            row,
            local,
            negotiated,
            player,
            apology,
            answer_at: None,
            answer_sdp,
            cloning,
            plan: agent,
            seeds,
            edge,
            frames_in: RtpStats::default(),
            last_frame: None,
            sender: None,
            receiver: RtpReceiver::new(rate, now),
            dest: remote,
            sdp_remote: remote,
            latch: SourceLatch::new(remote, strict_rtp_source, now),
            burst: Box::new(Burst::new()),
            srtp: None,
            plain: Vec::new(),
            dtls: None,
            dtls_done_for: None,
            skipped: 0,
            ignored: 0,
            media_started: None,
            stopped: false,
            dtmf: DtmfReceiver::default(),
            digits: String::new(),
            agent: None,
            transfer: None,
            wire: None,
            inbound: Vec::with_capacity(480),
            outputs: VecDeque::new(),
            ended: None,
        };
        // An offer in the INVITE settled the media at admission, and maybe a hold
        // from the start (a transfer onto us, a PBX that starts calls inactive).
        if let Some(n) = negotiated {
            m.install_srtp(now, &n);
            m.call.handle(now, CallInput::Negotiated);
            m.set_direction(now, n.direction);
        }
        if answer_delay.is_zero() {
            m.row.answered_at = Some(m.row.started_at);
            m.answered(now);
        } else {
            m.answer_at = Some(crate::deadline::after(now, answer_delay));
        }
        m.outputs.push_back(Output::Record(Record::Call(Box::new(m.row.clone()))));
        m.pump(now);
        m
    }

    pub fn call_id(&self) -> &str {
        &self.row.call_id
    }

    pub fn caller(&self) -> Option<&str> {
        self.row.caller.as_deref()
    }

    pub fn row(&self) -> &CallRow {
        &self.row
    }

    /// The next output to carry out (after the packets of [`Self::poll_transmit`]).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Self::handle_timeout`] must run next: the media clock, the answer
    /// delay or a call timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let mut wake = self.call.poll_timeout();
        if let Some(at) = self.answer_at {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        if let Some(s) = self.sender.as_ref().filter(|_| !self.stopped) {
            let at = s.next_deadline();
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        if let Some(at) = self.agent.as_deref().and_then(AgentLink::poll_timeout) {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake
    }

    /// The caller's side went quiet on the agent's WebSocket queue: a message was dropped.
    pub fn agent_backlogged(&mut self) {
        if let Some(link) = self.agent.as_mut() {
            link.dropped_chunks += 1;
        }
    }

    pub fn handle(&mut self, now: Instant, input: Input<'_>) {
        if self.ended.is_some() {
            return;
        }
        match input {
            // A delayed offer (we offered in the 200) needs the answer in the ACK.
            Input::Sip(CallInput::Confirmed) if self.negotiated.is_none() => {
                tracing::info!(call = %self.row.call_id, "ACK carried no SDP answer to our offer; ending the call");
                self.call.handle(now, CallInput::ConfirmedWithoutAnswer);
            }
            Input::Sip(input) => self.call.handle(now, input),
            Input::AckBody(body) => self.ack_answer(body, now),
            Input::Reoffer(body) => {
                let answer = self.reoffer(body);
                if let Ok((n, _)) = &answer {
                    self.renegotiated(n, now);
                    self.set_direction(now, n.direction);
                }
                let answer = answer.map(|(_, body)| body.into_bytes());
                self.outputs.push_back(Output::Sip(SipOut::AnswerReoffer(answer)));
            }
            Input::Refer(progress) => self.refer_progress(progress, now),
            Input::Rtp { data, from } => self.inbound_rtp(data, from, now),
            Input::Frame { seq, payload } => self.inbound_frame(seq, payload, now),
            Input::Digit(digit) => self.digit(digit),
            Input::Clone(r) => {
                tracing::info!(call = %self.row.call_id, caller = ?r.caller_id, outcome = r.outcome.as_str(), voice = %r.voice_id, waited_ms = r.waited.as_millis() as u64, "voice resolved");
                crate::clone::record_metrics(&r);
                self.revise(|row| {
                    row.clone_outcome = Some(r.outcome.as_str().to_owned());
                    row.voice_id = Some(r.voice_id.clone());
                });
                self.call.handle(now, CallInput::VoiceDecided(r.voice_id));
            }
            Input::Agent(ev) => self.agent_event(ev, now),
            Input::Dtls(keys) => self.dtls_done(now, keys),
        }
        self.pump(now);
    }

    /// Time passed: the answer delay, the media clock, the call's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        if self.answer_at.is_some_and(|at| now >= at) {
            self.answer_at = None;
            let sdp = std::mem::take(&mut self.answer_sdp);
            self.outputs.push_back(Output::Sip(SipOut::Accept(sdp)));
            let at = self.wall_ms(now);
            self.revise(|row| row.answered_at = Some(at));
            self.answered(now);
        }
        self.media_tick(now);
        if let Some(link) = self.agent.as_mut() {
            link.upstream_tick(now);
        }
        self.drain_agent();
        self.call.handle_timeout(now);
        self.pump(now);
    }

    /// Wall-clock milliseconds at `now`, from the row's start: records stay
    /// consistent with the monotonic clock the call runs on.
    fn wall_ms(&self, now: Instant) -> i64 {
        self.row.started_at + now.saturating_duration_since(self.created).as_millis() as i64
    }

    fn revise(&mut self, change: impl FnOnce(&mut CallRow)) {
        self.row.revision += 1;
        change(&mut self.row);
        self.outputs.push_back(Output::Record(Record::Call(Box::new(self.row.clone()))));
    }

    /// The 200 is out: start resolving the voice (the greeting plays meanwhile);
    /// without a clone service the agent speaks in its default voice.
    fn answered(&mut self, now: Instant) {
        if self.cloning {
            self.outputs.push_back(Output::StartClone);
        } else if let Some(voice) = self.plan.as_ref().map(|a| a.default_voice_id.clone()) {
            self.call.handle(now, CallInput::VoiceDecided(voice));
        }
        if self.negotiated.is_some() {
            self.call.handle(now, CallInput::Answered);
        }
    }

    /// Carries out what the lifecycle decided.
    fn pump(&mut self, now: Instant) {
        while let Some(action) = self.call.poll_action() {
            match action {
                CallAction::StartMedia => self.start_media(now),
                // Keep the sender for its counters; the clock stops.
                CallAction::StopMedia => self.stopped = true,
                CallAction::Hangup(reason) => self.outputs.push_back(Output::Sip(SipOut::Hangup(reason))),
                CallAction::ConnectAgent(voice) => self.connect_agent(voice),
                CallAction::Ended(reason) => {
                    self.ended = Some(reason.clone());
                    self.outputs.push_back(Output::Ended(reason));
                }
            }
        }
    }

    /// The call's last revision and its summary, once [`Output::Ended`] came out.
    pub fn finish(&mut self, now: Instant) -> Finished {
        let reason = self.ended.clone().unwrap_or(EndReason::Error("finished early".into()));
        // A frames edge has no RTP, but its frames are counted the same way.
        let stats = match self.edge {
            MediaEdge::Rtp => self.receiver.stats(),
            MediaEdge::Frames => self.frames_in,
        };
        let mut row = std::mem::take(&mut self.row);
        row.revision += 1;
        row.ended_at = Some(row.started_at + now.saturating_duration_since(self.created).as_millis() as i64);
        row.end_reason = Some(reason.as_str().to_owned());
        let mut mos = None;
        if self.media_started.is_some() {
            row.rtp_in_packets = Some(stats.packets as i64);
            row.rtp_in_lost = Some(stats.lost as i64);
            // Frames on a stream carry no send time: no jitter to report.
            row.rtp_in_max_jitter_us = (self.edge == MediaEdge::Rtp).then(|| (stats.max_jitter_ms * 1000.0).round() as i64);
            row.rtp_out_packets = Some(self.sender.as_ref().map_or(0, RtpSender::packets_sent) as i64);
            let codec = if self.negotiated.is_some_and(|n| n.opus) {
                quality::OPUS
            } else {
                quality::G711
            };
            mos = quality::estimate(&stats, codec);
            row.rtp_in_mos_x100 = mos.map(|m| (m * 100.0).round() as i64);
        }
        if let EndReason::AgentError(code) = reason {
            row.end_status = Some(i64::from(code));
        }
        let bridge = self.agent.as_deref().and_then(AgentLink::bridge_stats).unwrap_or_default();
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.created).as_millis() as u64);
        Finished {
            row,
            reason,
            stats,
            mos,
            rtp_out_packets: self.sender.as_ref().map_or(0, RtpSender::packets_sent),
            rtp_out_skipped: self.skipped,
            rtp_in_ignored: self.ignored,
            media_started_ms: since(self.media_started),
            confirmed_ms: since(self.call.confirmed_at()),
            digits: std::mem::take(&mut self.digits),
            agent_frames_out: bridge.frames_from_agent,
            agent_frames_in: bridge.frames_to_agent,
            agent_interruptions: bridge.interruptions,
            agent_chunks_dropped: self.agent.as_ref().map_or(0, |a| a.dropped_chunks),
            hand_off_gap_ms: self.agent.as_deref().and_then(AgentLink::hand_off).map(|h| h.gap_ms),
            srtp_suite: self.srtp.as_ref().map(|s| s.params().suite.name()),
            srtp_auth_failures: self.srtp.as_ref().map_or(0, |s| s.auth_failures),
            srtp_replays: self.srtp.as_ref().map_or(0, |s| s.replays),
        }
    }
}
