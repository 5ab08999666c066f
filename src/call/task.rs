//! The tokio task that runs one call: it owns the call's [`Call`] state machine,
//! its RTP socket and its media clock, and talks to the SIP task through bounded
//! channels. No state is shared with other calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::agent::{AgentLink, LinkAction};
use super::{Call, CallAction, CallInput, CallLimits, EndReason};
use crate::clone::{CloneService, Resolution};
use crate::deadline::SpinGuard;
use crate::elevenlabs::agent::ClientMessage;
use crate::elevenlabs::ws::{self, AgentConfig, AgentEvent, Conversation};
use crate::media::dtmf::DtmfReceiver;
use crate::media::prompt::Player;
use crate::media::prompt::Prompt;
use crate::media::quality;
use crate::media::rtp::RtpPacket;
use crate::media::session::{Latch, MAX_PACKET, RtpReceiver, RtpSender, SourceLatch};
use crate::media::wire::WireCodec;
use crate::sip::endpoint::{CallKey, ReferProgress};
use crate::sip::message::Rejection;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::store::records::{CloneEvent, new_id};
use crate::store::writer::RecordSink;
use crate::store::{CallRow, Record, now_ms};

/// Commands from a call task to the SIP task.
#[derive(Debug)]
pub enum SipCommand {
    Accept {
        call: CallKey,
        sdp: Vec<u8>,
    },
    Hangup {
        call: CallKey,
        reason: EndReason,
    },
    AnswerReoffer {
        call: CallKey,
        answer: Result<Vec<u8>, Rejection>,
    },
    /// Transfer the caller (REFER) to a SIP URI or number.
    Refer {
        call: CallKey,
        target: String,
    },
    Finished {
        call: CallKey,
    },
    /// The call's task panicked: hang up and free its slot.
    Crashed {
        call: CallKey,
    },
}

/// Events from the SIP task to one call task.
#[derive(Debug)]
pub enum CallEvent {
    Input(CallInput),
    /// The ACK of a delayed-offer call, carrying the SDP answer.
    AckBody(Bytes),
    /// A re-INVITE/UPDATE offer to answer.
    Reoffer(Bytes),
    /// The clone service decided the call's voice.
    CloneResolved(Resolution),
    /// The agent's WebSocket task reports.
    Agent(AgentEvent),
    /// How our REFER is going.
    Refer(ReferProgress),
}

/// Everything a call task needs, prepared by the SIP task when it admits a call.
pub struct CallContext {
    pub key: CallKey,
    pub sip_call_id: String,
    pub caller: String,
    pub callee: String,
    pub peer: SocketAddr,
    pub socket: UdpSocket,
    pub local: LocalMedia,
    pub negotiated: Option<Negotiated>,
    pub player: Player,
    pub limits: CallLimits,
    pub events: mpsc::Receiver<CallEvent>,
    pub commands: mpsc::Sender<SipCommand>,
    /// Non-zero: ring this long, then answer with `answer_sdp`.
    pub answer_delay: Duration,
    pub answer_sdp: Vec<u8>,
    /// The call's `call_log` row so far (revision 1, started).
    pub row: CallRow,
    pub records: RecordSink,
    /// Starts on answer; `None` runs the call without cloning.
    pub clone: Option<CloneService>,
    /// This call's own event queue, for the clone and agent tasks to report back on.
    pub self_events: mpsc::Sender<CallEvent>,
    /// Where to bridge the call once its voice is decided; `None` keeps it on the greeting and hold audio.
    pub agent: Option<AgentConfig>,
    /// Played before hanging up when the agent fails.
    pub apology: Prompt,
    /// `rtp.strict_source`: accept RTP only from the SDP address.
    pub strict_rtp_source: bool,
}

/// The outbound media of a call: the paced sender and where it sends.
struct MediaOut {
    sender: Option<RtpSender>,
    dest: Option<SocketAddr>,
    /// Where the SDP says the caller's media is.
    sdp_remote: Option<SocketAddr>,
    latch: SourceLatch,
    buf: [u8; MAX_PACKET],
    skipped: u64,
    ignored: u64,
    started: Option<Instant>,
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
}

impl MediaOut {
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
}

/// Runs one call to its end, then reports it finished.
pub async fn run(mut ctx: CallContext, created: Instant) {
    let mut call = Call::new(created, ctx.limits);
    let rate = if ctx.negotiated.is_some_and(|n| n.opus) { 48000 } else { 8000 };
    let mut receiver = RtpReceiver::new(rate, created);
    let mut media = MediaOut {
        sender: None,
        dest: ctx.negotiated.map(|n| n.remote),
        sdp_remote: ctx.negotiated.map(|n| n.remote),
        latch: SourceLatch::new(ctx.negotiated.map(|n| n.remote), ctx.strict_rtp_source, created),
        buf: [0u8; MAX_PACKET],
        skipped: 0,
        ignored: 0,
        started: None,
        stopped: false,
        dtmf: DtmfReceiver::default(),
        digits: String::new(),
        agent: None,
        transfer: None,
        wire: None,
        inbound: Vec::with_capacity(480),
    };
    let mut recv_buf = [0u8; 2048];
    tracing::info!(call = %ctx.key, call_id = %ctx.sip_call_id, caller = %ctx.caller, callee = %ctx.callee, peer = %ctx.peer, "call started");

    // An offer in the INVITE settled the media at admission, and maybe a hold
    // from the start (a transfer onto us, a PBX that starts calls inactive).
    if let Some(n) = ctx.negotiated {
        call.handle(created, CallInput::Negotiated);
        set_direction(&mut call, created, n.direction);
    }
    let mut answer_at = None;
    if ctx.answer_delay.is_zero() {
        ctx.row.answered_at = Some(ctx.row.started_at);
        if ctx.negotiated.is_some() {
            call.handle(created, CallInput::Answered);
        }
        start_clone(&ctx, &mut call, created);
    } else {
        answer_at = Some(crate::deadline::after(created, ctx.answer_delay));
    }
    ctx.records.submit(Record::Call(Box::new(ctx.row.clone())));

    let far = Duration::from_secs(86_400);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut spin = SpinGuard::new("call", 64);
    let reason = loop {
        if let Some(reason) = carry_out(&mut ctx, &mut call, &mut media).await {
            break reason;
        }
        let now = Instant::now();
        let mut wake = call.poll_timeout().unwrap_or(now + far);
        if let Some(at) = answer_at {
            wake = wake.min(at);
        }
        if let Some(s) = media.sender.as_ref().filter(|_| !media.stopped) {
            wake = wake.min(s.next_deadline());
        }
        // Already due (the first frame, right after the answer): no trip through
        // the timer wheel, whose millisecond granularity would delay it.
        if wake <= now && !spin.turned() {
            tick(&mut ctx, &mut call, &mut media, &mut answer_at, now).await;
            continue;
        }
        spin.waited();
        // Only a forced pause lands here with a past deadline.
        let wake = if wake <= now { now + Duration::from_millis(1) } else { wake };
        sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
        tokio::select! {
            biased;
            _ = &mut sleep => tick(&mut ctx, &mut call, &mut media, &mut answer_at, Instant::now()).await,
            r = ctx.socket.recv_from(&mut recv_buf) => {
                if let Ok((n, from)) = r {
                    inbound_rtp(&ctx, &mut call, &mut media, &mut receiver, &recv_buf[..n], from, Instant::now());
                }
            }
            ev = ctx.events.recv() => event(&mut ctx, &mut call, &mut media, ev, Instant::now()).await,
        }
    };

    let stats = receiver.stats();
    let mut row = std::mem::take(&mut ctx.row);
    row.ended_at = Some(now_ms());
    row.end_reason = Some(reason.as_str().to_owned());
    if media.started.is_some() {
        row.rtp_in_packets = Some(stats.packets as i64);
        row.rtp_in_lost = Some(stats.lost as i64);
        row.rtp_in_max_jitter_us = Some((stats.max_jitter_ms * 1000.0).round() as i64);
        row.rtp_out_packets = Some(media.sender.as_ref().map_or(0, RtpSender::packets_sent) as i64);
        let codec = if ctx.negotiated.is_some_and(|n| n.opus) {
            quality::OPUS
        } else {
            quality::G711
        };
        if let Some(mos) = quality::estimate(&stats, codec) {
            row.rtp_in_mos_x100 = Some((mos * 100.0).round() as i64);
            metrics::histogram!("precall_call_mos").record(mos);
        }
    }
    if let EndReason::AgentError(code) = reason {
        row.end_status = Some(i64::from(code));
    }
    let row_mos = row.rtp_in_mos_x100.map(|m| m as f64 / 100.0);
    ctx.records.submit_final(row);
    let bridge = media.agent.as_ref().and_then(AgentLink::bridge_stats).unwrap_or_default();
    metrics::counter!("precall_calls_total", "protocol" => "sip", "reason" => reason.as_str().to_owned()).increment(1);
    if let Some(s) = media.sender.as_ref() {
        metrics::counter!("precall_rtp_packets_sent_total").increment(s.packets_sent());
    }
    metrics::counter!("precall_rtp_packets_received_total").increment(stats.packets);
    metrics::counter!("precall_rtp_packets_lost_total").increment(stats.lost);
    metrics::counter!("precall_rtp_packets_ignored_total").increment(media.ignored + stats.malformed);
    tracing::info!(
        call = %ctx.key,
        call_id = %ctx.sip_call_id,
        caller = %ctx.caller,
        reason = %reason,
        duration_ms = created.elapsed().as_millis() as u64,
        media_started_ms = media.started.map(|t| t.duration_since(created).as_millis() as u64),
        confirmed_ms = call.confirmed_at().map(|t| t.duration_since(created).as_millis() as u64),
        rtp_out_packets = media.sender.as_ref().map_or(0, RtpSender::packets_sent),
        rtp_out_skipped = media.skipped,
        rtp_in_packets = stats.packets,
        rtp_in_lost = stats.lost,
        rtp_in_malformed = stats.malformed,
        rtp_in_ignored = media.ignored,
        rtp_in_ssrc_changes = stats.ssrc_changes,
        rtp_in_resyncs = stats.resyncs,
        mos = row_mos,
        rtp_in_max_jitter_ms = format!("{:.1}", stats.max_jitter_ms),
        dtmf = %media.digits,
        agent_frames_out = bridge.frames_from_agent,
        agent_frames_in = bridge.frames_to_agent,
        agent_interruptions = bridge.interruptions,
        agent_chunks_dropped = media.agent.as_ref().map_or(0, |a| a.dropped_chunks),
        hand_off_gap_ms = media.agent.as_ref().and_then(AgentLink::hand_off).map(|h| h.gap_ms),
        "call ended"
    );
    let _ = ctx.commands.send(SipCommand::Finished { call: ctx.key }).await;
}

/// Carries out the state machine's actions; `Some` when the call has ended.
async fn carry_out(ctx: &mut CallContext, call: &mut Call, media: &mut MediaOut) -> Option<EndReason> {
    let mut ended = None;
    while let Some(action) = call.poll_action() {
        match action {
            CallAction::StartMedia => {
                let now = Instant::now();
                let mut rng = rand::rng();
                let pt = ctx.negotiated.map_or(0, |n| n.payload_type);
                let mut sender = RtpSender::new(rng.random(), pt, rng.random(), rng.random(), now);
                match WireCodec::new(ctx.negotiated.is_some_and(|n| n.opus)) {
                    Ok(w) => {
                        sender.set_clock_rate(w.clock_rate());
                        media.wire = Some(w);
                    }
                    Err(e) => {
                        tracing::error!(call = %ctx.key, error = %e, "cannot start the call's codec");
                        call.handle(now, CallInput::End(EndReason::Error(e)));
                    }
                }
                media.sender = Some(sender);
                media.started = Some(now);
            }
            // Keep the sender for its counters; the clock stops.
            CallAction::StopMedia => media.stopped = true,
            CallAction::Hangup(reason) => {
                let _ = ctx.commands.send(SipCommand::Hangup { call: ctx.key, reason }).await;
            }
            CallAction::ConnectAgent(voice) => connect_agent(ctx, media, voice),
            CallAction::Ended(reason) => ended = Some(reason),
        }
    }
    ended
}

/// The media clock ticked (or a call timer is due): send every frame that is due.
async fn tick(ctx: &mut CallContext, call: &mut Call, media: &mut MediaOut, answer_at: &mut Option<Instant>, now: Instant) {
    if answer_at.is_some_and(|at| now >= at) {
        *answer_at = None;
        let sdp = std::mem::take(&mut ctx.answer_sdp);
        let _ = ctx.commands.send(SipCommand::Accept { call: ctx.key, sdp }).await;
        ctx.records.revise(&mut ctx.row, |row| row.answered_at = Some(now_ms()));
        start_clone(ctx, call, now);
        if ctx.negotiated.is_some() {
            call.handle(now, CallInput::Answered);
        }
    }
    // Whenever the clock runs it advances, negotiated or not: a deadline that
    // stays in the past would turn the call loop without ever waiting.
    if let (Some(s), false) = (media.sender.as_mut(), media.stopped) {
        let (due, skipped) = s.due(now);
        media.skipped += skipped;
        for _ in 0..skipped {
            ctx.player.skip();
        }
        let codec = ctx.negotiated.map(|n| n.codec);
        let sending = call.sending() && ctx.negotiated.is_some_and(|n| n.direction.sends());
        let mut end = None;
        for _ in 0..due {
            if let Some(link) = media.agent.as_mut() {
                link.upstream_tick();
            }
            if sending {
                let frame = match media.agent.as_mut() {
                    Some(link) => {
                        let (payload, ends) = link.frame(now, &mut ctx.player, &ctx.apology);
                        end = end.or(ends);
                        payload
                    }
                    None => ctx.player.next_frame(codec.unwrap_or(crate::media::g711::G711::Ulaw)),
                };
                let payload = match media.wire.as_mut() {
                    Some(w) => w.outbound(frame),
                    None => frame,
                };
                let len = s.write_next(payload, &mut media.buf);
                if let Some(to) = media.dest {
                    let _ = ctx.socket.send_to(&media.buf[..len], to).await;
                }
            } else {
                // On hold the clock still runs, so the timeline resumes in step.
                ctx.player.skip();
                s.skip_one();
            }
        }
        if let Some(link) = media.agent.as_ref()
            && let Some(h) = link.hand_off()
            && ctx.row.bridged_at.is_none()
        {
            record_hand_off(ctx, h.gap_ms);
        }
        if let Some(reason) = end {
            call.handle(now, CallInput::End(reason));
        }
    }
    call.handle_timeout(now);
}

fn inbound_rtp(
    ctx: &CallContext,
    call: &mut Call,
    media: &mut MediaOut,
    receiver: &mut RtpReceiver,
    data: &[u8],
    from: SocketAddr,
    now: Instant,
) {
    let Ok(packet) = RtpPacket::parse(data) else {
        receiver.count_malformed();
        return;
    };
    let header = packet.header;
    let payload_ok = ctx
        .negotiated
        .is_some_and(|n| header.payload_type == n.payload_type || Some(header.payload_type) == n.telephone_event);
    match media.latch.on_packet(now, from, &header, payload_ok) {
        Latch::Accept { send_to } => {
            // Symmetric RTP (comedia): answer where the caller's media comes from.
            if media.dest != Some(send_to) {
                tracing::debug!(call = %ctx.key, sdp = ?media.dest, actual = %send_to, "latching RTP to the caller's source address");
                media.dest = Some(send_to);
            }
            receiver.on_packet(now, &packet);
            call.on_rtp(now);
            let is_event = ctx.negotiated.is_some_and(|n| Some(header.payload_type) == n.telephone_event);
            if is_event {
                if let Some(digit) = media.dtmf.on_packet(header.timestamp, packet.payload) {
                    tracing::debug!(call = %ctx.key, %digit, "DTMF");
                    if media.digits.len() < 64 {
                        media.digits.push(digit);
                    }
                    if let Some(link) = media.agent.as_mut() {
                        link.digit(digit);
                    }
                }
            } else if let Some(link) = media.agent.as_mut() {
                let payload = match media.wire.as_mut().and_then(|w| w.inbound(packet.payload, &mut media.inbound)) {
                    Some(transcoded) => transcoded,
                    None => packet.payload,
                };
                link.caller_packet(header.sequence, payload);
            }
        }
        Latch::Ignore => media.ignored += 1,
    }
}

async fn event(ctx: &mut CallContext, call: &mut Call, media: &mut MediaOut, ev: Option<CallEvent>, now: Instant) {
    match ev {
        // The SIP task is gone: the daemon is stopping.
        None => call.handle(now, CallInput::SignallingLost),
        // A delayed offer (we offered in the 200) needs the answer in the ACK.
        Some(CallEvent::Input(CallInput::Confirmed)) if ctx.negotiated.is_none() => {
            tracing::info!(call = %ctx.key, "ACK carried no SDP answer to our offer; ending the call");
            call.handle(now, CallInput::ConfirmedWithoutAnswer);
        }
        Some(CallEvent::Input(input)) => call.handle(now, input),
        Some(CallEvent::AckBody(body)) => ack_answer(ctx, call, media, &body, now),
        Some(CallEvent::CloneResolved(r)) => {
            tracing::info!(call = %ctx.key, caller = ?r.caller_id, outcome = r.outcome.as_str(), voice = %r.voice_id, waited_ms = r.waited.as_millis() as u64, "voice resolved");
            crate::clone::record_metrics(&r);
            ctx.records.revise(&mut ctx.row, |row| {
                row.clone_outcome = Some(r.outcome.as_str().to_owned());
                row.voice_id = Some(r.voice_id.clone());
            });
            call.handle(now, CallInput::VoiceDecided(r.voice_id));
        }
        Some(CallEvent::Agent(ev)) => agent_event(ctx, media, ev).await,
        Some(CallEvent::Refer(progress)) => refer_progress(ctx, call, media, progress, now),
        Some(CallEvent::Reoffer(body)) => {
            let answer = reoffer(ctx, &body);
            if let Ok((n, _)) = &answer {
                media.renegotiated(n, now);
                set_direction(call, now, n.direction);
            }
            let answer = answer.map(|(_, body)| body.into_bytes());
            let _ = ctx.commands.send(SipCommand::AnswerReoffer { call: ctx.key, answer }).await;
        }
    }
}

/// The answer an ACK carries: to our offer in the 200 of a delayed-offer INVITE
/// (the call starts here), or of an offerless re-INVITE mid-call (the session
/// stays as it is unless the answer is a valid echo of what we offered).
fn ack_answer(ctx: &mut CallContext, call: &mut Call, media: &mut MediaOut, body: &[u8], now: Instant) {
    let mid_call = call.confirmed_at().is_some();
    let answer = SessionDescription::parse(body).and_then(|sd| sdp::accept_answer(&sd));
    let n = match (answer, ctx.negotiated) {
        (Ok(n), Some(old)) if mid_call && (n.codec, n.opus) != (old.codec, old.opus) => {
            tracing::info!(call = %ctx.key, "re-INVITE answer names a codec we did not offer; keeping the session");
            return;
        }
        (Ok(n), _) => n,
        (Err(e), _) if mid_call => {
            tracing::info!(call = %ctx.key, error = %e, "re-INVITE's ACK carried no usable answer; keeping the session");
            return;
        }
        (Err(e), _) => {
            tracing::info!(call = %ctx.key, error = %e, "ACK carried no usable SDP answer; ending the call");
            call.handle(now, CallInput::ConfirmedWithoutAnswer);
            return;
        }
    };
    ctx.negotiated = Some(n);
    media.renegotiated(&n, now);
    call.handle(now, CallInput::Negotiated);
    call.handle(now, CallInput::Confirmed);
    set_direction(call, now, n.direction);
}

/// Opens the agent conversation in `voice_id` ([`CallAction::ConnectAgent`]:
/// the call machine decides when); the greeting keeps playing until the
/// agent's first audio is queued.
fn connect_agent(ctx: &CallContext, media: &mut MediaOut, voice_id: String) {
    let (Some(config), Some(n)) = (ctx.agent.clone(), ctx.negotiated) else {
        return;
    };
    if media.agent.is_some() {
        return;
    }
    let (tx, rx) = mpsc::channel(64);
    media.agent = Some(AgentLink::new(tx, n.codec, config.max_queue_seconds));
    let conv = Conversation {
        call_id: ctx.row.call_id.clone(),
        caller: ctx.row.caller.clone(),
        voice_id,
    };
    tokio::spawn(ws::run(config, conv, rx, ctx.self_events.clone(), CallEvent::Agent));
}

async fn agent_event(ctx: &mut CallContext, media: &mut MediaOut, ev: AgentEvent) {
    let Some(link) = media.agent.as_mut() else { return };
    if let AgentEvent::Closed { code, reason } = &ev {
        tracing::info!(call = %ctx.key, code, reason = %reason, "agent conversation closed");
    }
    match link.on_event(ev) {
        Ok(LinkAction::None) => {}
        Ok(LinkAction::Conversation(id)) => {
            let (input, output) = link.formats().unzip();
            tracing::info!(call = %ctx.key, conversation = %id, input = ?input, output = ?output, "agent conversation started");
            ctx.records.revise(&mut ctx.row, |row| row.conversation_id = Some(id));
        }
        Ok(LinkAction::Transfer { tool_call_id, destination }) => {
            if destination.trim().is_empty() || media.transfer.is_some() {
                let why = if media.transfer.is_some() {
                    "a transfer is already in progress"
                } else {
                    "no destination given"
                };
                link.reply(tool_result(&tool_call_id, why, true));
                return;
            }
            tracing::info!(call = %ctx.key, %destination, "agent transfers the call (REFER)");
            media.transfer = Some(tool_call_id);
            let command = SipCommand::Refer {
                call: ctx.key,
                target: destination,
            };
            let _ = ctx.commands.send(command).await;
        }
        Err(e) => {
            tracing::warn!(call = %ctx.key, error = %e, "cannot bridge the agent's audio formats");
            let _ = link.on_event(AgentEvent::Closed {
                code: 1003,
                reason: e.to_string(),
            });
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

/// The transfer succeeded once the transferee's NOTIFY reports a 2xx: the
/// caller has left us, so hang up (`transferred`). A failure goes back to the
/// agent as the tool's error result and the conversation carries on.
fn refer_progress(ctx: &mut CallContext, call: &mut Call, media: &mut MediaOut, progress: ReferProgress, now: Instant) {
    let Some(tool_call_id) = media.transfer.clone() else { return };
    tracing::info!(call = %ctx.key, ?progress, "transfer progress");
    let failed = match progress {
        ReferProgress::Answered(s) if s >= 300 => Some(format!("the caller's phone refused the transfer ({s})")),
        ReferProgress::Answered(_) => None,
        ReferProgress::Notified { status, .. } if (200..300).contains(&status) => {
            if let Some(link) = media.agent.as_mut() {
                link.reply(tool_result(&tool_call_id, "The call was transferred.", false));
            }
            media.transfer = None;
            call.handle(now, CallInput::End(EndReason::Transferred));
            return;
        }
        ReferProgress::Notified { status, .. } if status >= 300 => Some(format!("the transfer target did not answer ({status})")),
        ReferProgress::Notified { terminated: true, status } => Some(format!("the transfer ended without an answer ({status})")),
        ReferProgress::Notified { .. } => None,
    };
    if let Some(why) = failed {
        media.transfer = None;
        if let Some(link) = media.agent.as_mut() {
            link.reply(tool_result(&tool_call_id, &why, true));
        }
    }
}

/// The caller now hears the agent: `bridged_at` and a `clone_transfer_events` row.
fn record_hand_off(ctx: &mut CallContext, gap_ms: u64) {
    let waited_ms = ctx.row.answered_at.map_or(0, |a| (now_ms() - a).max(0));
    ctx.records.revise(&mut ctx.row, |row| row.bridged_at = Some(now_ms()));
    ctx.records.submit(Record::CloneEvent(CloneEvent::Transfer {
        event_id: new_id(),
        call_id: ctx.row.call_id.clone(),
        voice_id: ctx.row.voice_id.clone().unwrap_or_default(),
        waited_ms,
        gap_ms: gap_ms as i64,
        created_at: now_ms(),
    }));
    tracing::info!(call = %ctx.key, waited_ms, gap_ms, "caller handed from the greeting to the agent");
}

/// Starts resolving the call's voice in the background; the greeting keeps
/// playing meanwhile, and the answer comes back as [`CallEvent::CloneResolved`].
/// Without a clone service the agent starts at once in its default voice.
fn start_clone(ctx: &CallContext, call: &mut Call, started: Instant) {
    let Some(service) = ctx.clone.clone() else {
        if let Some(voice) = ctx.agent.as_ref().map(|a| a.default_voice_id.clone()) {
            call.handle(started, CallInput::VoiceDecided(voice));
        }
        return;
    };
    let events = ctx.self_events.clone();
    let call_id = ctx.row.call_id.clone();
    let caller = ctx.row.caller.clone();
    tokio::spawn(async move {
        let resolution = service.resolve(&call_id, caller.as_deref(), started).await;
        let _ = events.send(CallEvent::CloneResolved(resolution)).await;
    });
}

fn set_direction(call: &mut Call, now: Instant, ours: Direction) {
    let caller_sends = matches!(ours, Direction::SendRecv | Direction::RecvOnly);
    call.handle(
        now,
        CallInput::Direction {
            we_send: ours.sends(),
            caller_sends,
        },
    );
}

fn reoffer(ctx: &mut CallContext, body: &[u8]) -> Result<(Negotiated, String), Rejection> {
    ctx.local.version += 1;
    if body.is_empty() {
        // An offerless re-INVITE: offer the session as it stands (the answer
        // comes in the ACK).
        let n = ctx
            .negotiated
            .ok_or_else(|| Rejection::new(488, "Not Acceptable Here: no media yet"))?;
        return Ok((n, sdp::reoffer(&ctx.local, &n)));
    }
    let sd = SessionDescription::parse(body).map_err(|e| e.rejection())?;
    let (n, answer) = sdp::answer(&sd, &ctx.local).map_err(|e| e.rejection())?;
    ctx.negotiated = Some(n);
    Ok((n, answer))
}
