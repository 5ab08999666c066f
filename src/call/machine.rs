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

use super::agent::{AgentLink, LinkAction};
use super::lifecycle::{CallAction, CallInput, Lifecycle};
use super::{CallLimits, EndReason};
use crate::clone::Resolution;
use crate::elevenlabs::agent::ClientMessage;
use crate::elevenlabs::ws::{AgentCommand, AgentEvent, Conversation};
use crate::media::dtmf::DtmfReceiver;
use crate::media::g711::G711;
use crate::media::prompt::{Player, Prompt};
use crate::media::quality;
use crate::media::receiver::RtpStats;
use crate::media::rtp::RtpPacket;
use crate::media::session::{Latch, MAX_BURST, MAX_PACKET, RtpReceiver, RtpSender, SourceLatch};
use crate::media::wire::WireCodec;
use crate::sip::endpoint::ReferProgress;
use crate::sip::message::Rejection;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::store::records::CloneEvent;
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
    /// The clone service decided the voice.
    Clone(Resolution),
    Agent(AgentEvent),
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
    /// The call is over: take [`CallMachine::finish`].
    Ended(EndReason),
}

/// Frames built by one media-clock tick, waiting for [`CallMachine::poll_transmit`].
struct Burst {
    packets: [[u8; MAX_PACKET]; MAX_BURST as usize],
    lens: [usize; MAX_BURST as usize],
    queued: usize,
    next: usize,
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
    sender: Option<RtpSender>,
    receiver: RtpReceiver,
    /// Where packets go (the SDP address, or the latched source).
    dest: Option<SocketAddr>,
    /// Where the SDP says the caller's media is.
    sdp_remote: Option<SocketAddr>,
    latch: SourceLatch,
    burst: Box<Burst>,
    skipped: u64,
    ignored: u64,
    media_started: Option<Instant>,
    stopped: bool,
    dtmf: DtmfReceiver,
    /// Digits the caller pressed (RFC 4733), first 64 kept.
    digits: String,
    agent: Option<AgentLink>,
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
            sender: None,
            receiver: RtpReceiver::new(rate, now),
            dest: remote,
            sdp_remote: remote,
            latch: SourceLatch::new(remote, strict_rtp_source, now),
            burst: Box::new(Burst {
                packets: [[0; MAX_PACKET]; MAX_BURST as usize],
                lens: [0; MAX_BURST as usize],
                queued: 0,
                next: 0,
            }),
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

    /// The next RTP packet to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, &[u8])> {
        let b = &mut *self.burst;
        if b.next >= b.queued {
            b.queued = 0;
            b.next = 0;
            return None;
        }
        let Some(to) = self.dest else {
            b.queued = 0;
            b.next = 0;
            return None;
        };
        let i = b.next;
        b.next += 1;
        Some((to, &b.packets[i][..b.lens[i]]))
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
            Input::Clone(r) => {
                tracing::info!(call = %self.row.call_id, caller = ?r.caller_id, outcome = r.outcome.as_str(), voice = %r.voice_id, waited_ms = r.waited.as_millis() as u64, "voice resolved");
                crate::clone::record_metrics(&r);
                self.revise(|row| {
                    row.clone_outcome = Some(r.outcome.as_str().to_owned());
                    row.voice_id = Some(r.voice_id.clone());
                });
                self.call.handle(now, CallInput::VoiceDecided(r.voice_id));
            }
            Input::Agent(ev) => self.agent_event(ev),
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

    fn start_media(&mut self, now: Instant) {
        let pt = self.negotiated.map_or(0, |n| n.payload_type);
        let mut sender = RtpSender::new(self.seeds.ssrc, pt, self.seeds.sequence, self.seeds.timestamp, now);
        match WireCodec::new(self.negotiated.is_some_and(|n| n.opus)) {
            Ok(w) => {
                sender.set_clock_rate(w.clock_rate());
                self.wire = Some(w);
            }
            Err(e) => {
                tracing::error!(call = %self.row.call_id, error = %e, "cannot start the call's codec");
                self.call.handle(now, CallInput::End(EndReason::Error(e)));
            }
        }
        self.sender = Some(sender);
        self.media_started = Some(now);
    }

    /// Builds every frame due at `now`. Whenever the clock runs it advances,
    /// negotiated or not: a deadline that stays in the past would turn the call
    /// loop without ever waiting.
    fn media_tick(&mut self, now: Instant) {
        let Some(s) = self.sender.as_mut().filter(|_| !self.stopped) else {
            return;
        };
        let (due, skipped) = s.due(now);
        self.skipped += skipped;
        for _ in 0..skipped {
            self.player.skip();
        }
        let codec = self.negotiated.map_or(G711::Ulaw, |n| n.codec);
        let sending = self.call.sending() && self.negotiated.is_some_and(|n| n.direction.sends());
        let mut end = None;
        let burst = &mut *self.burst;
        for _ in 0..due {
            if let Some(link) = self.agent.as_mut() {
                link.upstream_tick();
            }
            if !sending || burst.queued >= burst.packets.len() {
                // On hold the clock still runs, so the timeline resumes in step.
                self.player.skip();
                s.skip_one();
                continue;
            }
            let frame = match self.agent.as_mut() {
                Some(link) => {
                    let (payload, ends) = link.frame(now, &mut self.player, &self.apology);
                    end = end.or(ends);
                    payload
                }
                None => self.player.next_frame(codec),
            };
            let payload = match self.wire.as_mut() {
                Some(w) => w.outbound(frame),
                None => frame,
            };
            let i = burst.queued;
            burst.lens[i] = s.write_next(payload, &mut burst.packets[i]);
            burst.queued += 1;
        }
        self.drain_agent();
        if let Some(gap_ms) = self.agent.as_ref().and_then(AgentLink::hand_off).map(|h| h.gap_ms)
            && self.row.bridged_at.is_none()
        {
            self.record_hand_off(now, gap_ms);
        }
        if let Some(reason) = end {
            self.call.handle(now, CallInput::End(reason));
        }
    }

    fn drain_agent(&mut self) {
        if let Some(link) = self.agent.as_mut() {
            while let Some(cmd) = link.poll_command() {
                self.outputs.push_back(Output::Agent(cmd));
            }
        }
    }

    fn inbound_rtp(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let Ok(packet) = RtpPacket::parse(data) else {
            self.receiver.count_malformed();
            return;
        };
        let header = packet.header;
        let event_pt = self.negotiated.and_then(|n| n.telephone_event);
        let payload_ok = self
            .negotiated
            .is_some_and(|n| header.payload_type == n.payload_type || Some(header.payload_type) == event_pt);
        let Latch::Accept { send_to } = self.latch.on_packet(now, from, &header, payload_ok) else {
            self.ignored += 1;
            return;
        };
        // Symmetric RTP (comedia): answer where the caller's media comes from.
        if self.dest != Some(send_to) {
            tracing::debug!(call = %self.row.call_id, sdp = ?self.dest, actual = %send_to, "latching RTP to the caller's source address");
            self.dest = Some(send_to);
        }
        self.receiver.on_packet(now, &packet);
        self.call.on_rtp(now);
        if Some(header.payload_type) == event_pt {
            if let Some(digit) = self.dtmf.on_packet(header.timestamp, packet.payload) {
                tracing::debug!(call = %self.row.call_id, %digit, "DTMF");
                if self.digits.len() < 64 {
                    self.digits.push(digit);
                }
                if let Some(link) = self.agent.as_mut() {
                    link.digit(digit);
                }
                self.drain_agent();
            }
        } else if let Some(link) = self.agent.as_mut() {
            let payload = match self.wire.as_mut().and_then(|w| w.inbound(packet.payload, &mut self.inbound)) {
                Some(transcoded) => transcoded,
                None => packet.payload,
            };
            link.caller_packet(header.sequence, payload);
        }
    }

    /// The answer an ACK carries: to our offer in the 200 of a delayed-offer
    /// INVITE (the call starts here), or of an offerless re-INVITE mid-call (the
    /// session stays as it is unless the answer is a valid echo of our offer).
    fn ack_answer(&mut self, body: &[u8], now: Instant) {
        let mid_call = self.call.confirmed_at().is_some();
        let answer = SessionDescription::parse(body).and_then(|sd| sdp::accept_answer(&sd));
        let n = match (answer, self.negotiated) {
            (Ok(n), Some(old)) if mid_call && (n.codec, n.opus) != (old.codec, old.opus) => {
                tracing::info!(call = %self.row.call_id, "re-INVITE answer names a codec we did not offer; keeping the session");
                return;
            }
            (Ok(n), _) => n,
            (Err(e), _) if mid_call => {
                tracing::info!(call = %self.row.call_id, error = %e, "re-INVITE's ACK carried no usable answer; keeping the session");
                return;
            }
            (Err(e), _) => {
                tracing::info!(call = %self.row.call_id, error = %e, "ACK carried no usable SDP answer; ending the call");
                self.call.handle(now, CallInput::ConfirmedWithoutAnswer);
                return;
            }
        };
        self.negotiated = Some(n);
        self.renegotiated(&n, now);
        self.call.handle(now, CallInput::Negotiated);
        self.call.handle(now, CallInput::Confirmed);
        self.set_direction(now, n.direction);
    }

    fn reoffer(&mut self, body: &[u8]) -> Result<(Negotiated, String), Rejection> {
        self.local.version += 1;
        if body.is_empty() {
            // An offerless re-INVITE: offer the session as it stands (the answer
            // comes in the ACK).
            let n = self
                .negotiated
                .ok_or_else(|| Rejection::new(488, "Not Acceptable Here: no media yet"))?;
            return Ok((n, sdp::reoffer(&self.local, &n)));
        }
        let sd = SessionDescription::parse(body).map_err(|e| e.rejection())?;
        let (n, answer) = sdp::answer(&sd, &self.local).map_err(|e| e.rejection())?;
        self.negotiated = Some(n);
        Ok((n, answer))
    }

    /// A new SDP exchange settled the session. Learning reopens only when it
    /// moves the media: a session refresh with the same address gives no one a
    /// window to hijack.
    fn renegotiated(&mut self, n: &Negotiated, now: Instant) {
        if self.sdp_remote != Some(n.remote) {
            self.sdp_remote = Some(n.remote);
            self.dest = Some(n.remote);
            self.latch.reset(n.remote, now);
        }
        if let Some(s) = self.sender.as_mut() {
            s.set_payload_type(n.payload_type);
        }
    }

    fn set_direction(&mut self, now: Instant, ours: Direction) {
        let caller_sends = matches!(ours, Direction::SendRecv | Direction::RecvOnly);
        self.call.handle(
            now,
            CallInput::Direction {
                we_send: ours.sends(),
                caller_sends,
            },
        );
    }

    /// Opens the agent conversation in `voice_id` (the lifecycle decides when);
    /// the greeting keeps playing until the agent's first audio is queued.
    fn connect_agent(&mut self, voice_id: String) {
        let (Some(plan), Some(n)) = (self.plan.as_ref(), self.negotiated) else {
            return;
        };
        if self.agent.is_some() {
            return;
        }
        self.agent = Some(AgentLink::new(n.codec, plan.max_queue_seconds));
        self.outputs.push_back(Output::ConnectAgent(Conversation {
            call_id: self.row.call_id.clone(),
            caller: self.row.caller.clone(),
            voice_id,
        }));
    }

    fn agent_event(&mut self, ev: AgentEvent) {
        let Some(link) = self.agent.as_mut() else { return };
        if let AgentEvent::Closed { code, reason } = &ev {
            tracing::info!(call = %self.row.call_id, code, reason = %reason, "agent conversation closed");
        }
        match link.on_event(ev) {
            Ok(LinkAction::None) => {}
            Ok(LinkAction::Conversation(id)) => {
                let (input, output) = link.formats().unzip();
                tracing::info!(call = %self.row.call_id, conversation = %id, input = ?input, output = ?output, "agent conversation started");
                self.revise(|row| row.conversation_id = Some(id));
            }
            Ok(LinkAction::Transfer { tool_call_id, destination }) => {
                if destination.trim().is_empty() || self.transfer.is_some() {
                    let why = if self.transfer.is_some() {
                        "a transfer is already in progress"
                    } else {
                        "no destination given"
                    };
                    link.reply(tool_result(&tool_call_id, why, true));
                } else {
                    tracing::info!(call = %self.row.call_id, %destination, "agent transfers the call (REFER)");
                    self.transfer = Some(tool_call_id);
                    self.outputs.push_back(Output::Sip(SipOut::Refer(destination)));
                }
            }
            Err(e) => {
                tracing::warn!(call = %self.row.call_id, error = %e, "cannot bridge the agent's audio formats");
                let _ = link.on_event(AgentEvent::Closed {
                    code: 1003,
                    reason: e.to_string(),
                });
            }
        }
        self.drain_agent();
    }

    /// The transfer succeeded once the transferee's NOTIFY reports a 2xx: the
    /// caller has left us, so hang up (`transferred`). A failure goes back to the
    /// agent as the tool's error result and the conversation carries on.
    fn refer_progress(&mut self, progress: ReferProgress, now: Instant) {
        let Some(tool_call_id) = self.transfer.clone() else { return };
        tracing::info!(call = %self.row.call_id, ?progress, "transfer progress");
        let failed = match progress {
            ReferProgress::Answered(s) if s >= 300 => Some(format!("the caller's phone refused the transfer ({s})")),
            ReferProgress::Answered(_) => None,
            ReferProgress::Notified { status, .. } if (200..300).contains(&status) => {
                if let Some(link) = self.agent.as_mut() {
                    link.reply(tool_result(&tool_call_id, "The call was transferred.", false));
                }
                self.transfer = None;
                self.drain_agent();
                self.call.handle(now, CallInput::End(EndReason::Transferred));
                return;
            }
            ReferProgress::Notified { status, .. } if status >= 300 => Some(format!("the transfer target did not answer ({status})")),
            ReferProgress::Notified { terminated: true, status } => Some(format!("the transfer ended without an answer ({status})")),
            ReferProgress::Notified { .. } => None,
        };
        if let Some(why) = failed {
            self.transfer = None;
            if let Some(link) = self.agent.as_mut() {
                link.reply(tool_result(&tool_call_id, &why, true));
            }
            self.drain_agent();
        }
    }

    /// The caller now hears the agent: `bridged_at` and a `clone_transfer_events` row.
    fn record_hand_off(&mut self, now: Instant, gap_ms: u64) {
        let at = self.wall_ms(now);
        let waited_ms = self.row.answered_at.map_or(0, |a| (at - a).max(0));
        self.revise(|row| row.bridged_at = Some(at));
        self.outputs.push_back(Output::Record(Record::CloneEvent(CloneEvent::Transfer {
            event_id: self.seeds.hand_off_event.clone(),
            call_id: self.row.call_id.clone(),
            voice_id: self.row.voice_id.clone().unwrap_or_default(),
            waited_ms,
            gap_ms: gap_ms as i64,
            created_at: at,
        })));
        tracing::info!(call = %self.row.call_id, waited_ms, gap_ms, "caller handed from the greeting to the agent");
    }

    /// The call's last revision and its summary, once [`Output::Ended`] came out.
    pub fn finish(&mut self, now: Instant) -> Finished {
        let reason = self.ended.clone().unwrap_or(EndReason::Error("finished early".into()));
        let stats = self.receiver.stats();
        let mut row = std::mem::take(&mut self.row);
        row.revision += 1;
        row.ended_at = Some(row.started_at + now.saturating_duration_since(self.created).as_millis() as i64);
        row.end_reason = Some(reason.as_str().to_owned());
        let mut mos = None;
        if self.media_started.is_some() {
            row.rtp_in_packets = Some(stats.packets as i64);
            row.rtp_in_lost = Some(stats.lost as i64);
            row.rtp_in_max_jitter_us = Some((stats.max_jitter_ms * 1000.0).round() as i64);
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
        let bridge = self.agent.as_ref().and_then(AgentLink::bridge_stats).unwrap_or_default();
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
            hand_off_gap_ms: self.agent.as_ref().and_then(AgentLink::hand_off).map(|h| h.gap_ms),
        }
    }
}

fn tool_result(tool_call_id: &str, result: &str, is_error: bool) -> String {
    ClientMessage::ClientToolResult {
        tool_call_id: tool_call_id.to_owned(),
        result: result.to_owned(),
        is_error,
    }
    .to_json()
}
