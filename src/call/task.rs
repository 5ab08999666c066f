//! The tokio task that runs one call: the IO shell around [`CallMachine`]. It
//! feeds the machine the call's RTP socket, its event channel and its timer,
//! sends the packets and carries out the outputs (SIP commands, records, the
//! clone and agent tasks). No state is shared with other calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::machine::{CallMachine, CallSetup, Finished, Input, Output, SipOut};
use super::{CallInput, EndReason};
use crate::clone::{CloneService, Resolution};
use crate::deadline::SpinGuard;
use crate::elevenlabs::ws::{self, AgentCommand, AgentConfig, AgentEvent};
use crate::sip::endpoint::{CallKey, ReferProgress};
use crate::sip::message::Rejection;
use crate::store::Record;
use crate::store::writer::RecordSink;

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

/// Events from the SIP task (and the call's own clone and agent tasks) to one call task.
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
    /// The DTLS-SRTP handshake finished.
    Dtls(Result<crate::media::srtp::SrtpParams, String>),
}

/// The IO a call task drives, prepared by the SIP task when it admits a call.
pub struct CallContext {
    pub key: CallKey,
    pub sip_call_id: String,
    pub callee: String,
    pub peer: SocketAddr,
    pub socket: UdpSocket,
    pub events: mpsc::Receiver<CallEvent>,
    pub commands: mpsc::Sender<SipCommand>,
    pub records: RecordSink,
    /// Resolves the caller's voice; `None` runs the call without cloning.
    pub clone: Option<CloneService>,
    /// This call's own event queue, for the clone and agent tasks to report back on.
    pub self_events: mpsc::Sender<CallEvent>,
    /// How to reach the agent; `None` keeps the call on the greeting and hold audio.
    pub agent: Option<AgentConfig>,
    pub setup: CallSetup,
}

/// Datagrams taken from the socket before each media-clock tick, at most.
const MAX_QUEUED_READS: usize = 16;

/// Runs one call to its end, then reports it finished.
pub async fn run(ctx: CallContext, created: Instant) {
    let CallContext {
        key,
        sip_call_id,
        callee,
        peer,
        socket,
        mut events,
        commands,
        records,
        clone,
        self_events,
        agent,
        setup,
    } = ctx;
    let socket = std::sync::Arc::new(socket);
    // DTLS datagrams for a running handshake (RFC 7983 demultiplexing).
    let mut dtls_tx: Option<mpsc::Sender<(Vec<u8>, SocketAddr)>> = None;
    let mut m = CallMachine::new(created, setup);
    let caller = m.caller().unwrap_or("anonymous");
    tracing::info!(call = %key, call_id = %sip_call_id, %caller, %callee, %peer, "call started");
    let mut agent_tx: Option<mpsc::Sender<AgentCommand>> = None;
    let mut recv_buf = [0u8; crate::media::rtp::MAX_DATAGRAM];
    let far = Duration::from_secs(86_400);
    let sleep = tokio::time::sleep(far);
    tokio::pin!(sleep);
    let mut spin = SpinGuard::new("call", 64);
    loop {
        while let Some((to, packet)) = m.poll_transmit() {
            let _ = socket.send_to(packet, to).await;
        }
        let mut ended = false;
        while let Some(out) = m.poll_output() {
            match out {
                Output::Sip(cmd) => {
                    let cmd = match cmd {
                        SipOut::Accept(sdp) => SipCommand::Accept { call: key, sdp },
                        SipOut::Hangup(reason) => SipCommand::Hangup { call: key, reason },
                        SipOut::AnswerReoffer(answer) => SipCommand::AnswerReoffer { call: key, answer },
                        SipOut::Refer(target) => SipCommand::Refer { call: key, target },
                    };
                    let _ = commands.send(cmd).await;
                }
                Output::Agent(cmd) => {
                    if agent_tx.as_ref().is_some_and(|tx| tx.try_send(cmd).is_err()) {
                        m.agent_backlogged();
                    }
                }
                Output::Record(r) => records.submit(r),
                Output::StartClone => start_clone(&m, clone.clone(), &self_events, Instant::now()),
                Output::ConnectAgent(conv) => {
                    if let Some(config) = agent.clone() {
                        let (tx, rx) = mpsc::channel(64);
                        agent_tx = Some(tx);
                        tokio::spawn(ws::run(config, conv, rx, self_events.clone(), CallEvent::Agent));
                    }
                }
                Output::StartDtls { params, remote } => {
                    let (tx, rx) = mpsc::channel(crate::media::dtls::QUEUE);
                    dtls_tx = Some(tx);
                    tokio::spawn(run_dtls(params, socket.clone(), remote, rx, self_events.clone()));
                }
                Output::Ended(_) => ended = true,
            }
        }
        if ended {
            break;
        }
        let now = Instant::now();
        let wake = m.poll_timeout().unwrap_or(now + far);
        // Already due (the first frame, right after the answer): no trip through
        // the timer wheel, whose millisecond granularity would delay it.
        if wake <= now && !spin.turned() {
            m.handle_timeout(now);
            continue;
        }
        spin.waited();
        // Only a forced pause lands here with a past deadline.
        let wake = if wake <= now { now + Duration::from_millis(1) } else { wake };
        sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
        tokio::select! {
            biased;
            _ = &mut sleep => {
                // What the network already delivered goes first (bounded, so a
                // flood cannot hold the clock back): after a stall, the caller's
                // queued packets must reach the agent before the clock decides
                // the caller went quiet.
                let now = Instant::now();
                for _ in 0..MAX_QUEUED_READS {
                    let Ok((n, from)) = socket.try_recv_from(&mut recv_buf) else { break };
                    datagram(&mut m, &dtls_tx, now, &recv_buf[..n], from);
                }
                m.handle_timeout(now);
            }
            r = socket.recv_from(&mut recv_buf) => {
                if let Ok((n, from)) = r {
                    datagram(&mut m, &dtls_tx, Instant::now(), &recv_buf[..n], from);
                }
            }
            ev = events.recv() => {
                let now = Instant::now();
                match ev {
                    // The SIP task is gone: the daemon is stopping.
                    None => m.handle(now, Input::Sip(CallInput::SignallingLost)),
                    Some(CallEvent::Input(input)) => m.handle(now, Input::Sip(input)),
                    Some(CallEvent::AckBody(body)) => m.handle(now, Input::AckBody(&body)),
                    Some(CallEvent::Reoffer(body)) => m.handle(now, Input::Reoffer(&body)),
                    Some(CallEvent::CloneResolved(r)) => m.handle(now, Input::Clone(r)),
                    Some(CallEvent::Agent(ev)) => m.handle(now, Input::Agent(ev)),
                    Some(CallEvent::Refer(p)) => m.handle(now, Input::Refer(p)),
                    Some(CallEvent::Dtls(keys)) => m.handle(now, Input::Dtls(keys)),
                }
            }
        }
    }
    // Dropping the sender closes the agent conversation.
    drop(agent_tx);
    let done = m.finish(Instant::now());
    report("sip", &format!("{key} {sip_call_id}"), &done);
    records.submit(Record::Call(Box::new(done.row)));
    let _ = commands.send(SipCommand::Finished { call: key }).await;
}

/// One datagram from the media socket: DTLS to the handshake when one runs
/// (a full queue drops it; the peer retransmits), everything else to the machine.
fn datagram(m: &mut CallMachine, dtls: &Option<mpsc::Sender<(Vec<u8>, SocketAddr)>>, now: Instant, data: &[u8], from: SocketAddr) {
    match dtls {
        Some(tx) if crate::media::dtls::is_dtls(data) => {
            let _ = tx.try_send((data.to_vec(), from));
        }
        _ => m.handle(now, Input::Rtp { data, from }),
    }
}

/// Runs a DTLS-SRTP handshake beside the call and reports its keys; then keeps
/// the session up (the peer may retransmit its last flight) until the call
/// drops its end of the datagram queue.
async fn run_dtls(
    params: crate::media::dtls::DtlsParams,
    socket: std::sync::Arc<UdpSocket>,
    remote: SocketAddr,
    rx: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    events: mpsc::Sender<CallEvent>,
) {
    match crate::media::dtls::handshake(params, socket, remote, rx).await {
        Ok(done) => {
            let _ = events.send(CallEvent::Dtls(Ok(done.keys))).await;
            let mut buf = [0u8; 1500];
            // Application data is not expected; this ends when the queue closes.
            while done.session.read(&mut buf, None).await.is_ok() {}
        }
        Err(e) => {
            let _ = events.send(CallEvent::Dtls(Err(e.to_string()))).await;
        }
    }
}

/// Starts resolving the call's voice in the background; the greeting keeps
/// playing meanwhile, and the answer comes back as [`CallEvent::CloneResolved`].
fn start_clone(m: &CallMachine, service: Option<CloneService>, events: &mpsc::Sender<CallEvent>, started: Instant) {
    let Some(service) = service else { return };
    let events = events.clone();
    let call_id = m.call_id().to_owned();
    let caller = m.caller().map(str::to_owned);
    tokio::spawn(async move {
        let resolution = service.resolve(&call_id, caller.as_deref(), started).await;
        let _ = events.send(CallEvent::CloneResolved(resolution)).await;
    });
}

/// A finished call's metrics and its "call ended" log line (`protocol`: `sip`
/// or `twilio`; `external`: the SIP dialog or the Twilio CallSid).
pub fn report(protocol: &'static str, external: &str, f: &Finished) {
    let s = &f.stats;
    metrics::counter!("precall_calls_total", "protocol" => protocol, "reason" => f.reason.as_str().to_owned()).increment(1);
    if protocol == "sip" {
        if let Some(mos) = f.mos {
            metrics::histogram!("precall_call_mos").record(mos);
        }
        metrics::counter!("precall_rtp_packets_sent_total").increment(f.rtp_out_packets);
        metrics::counter!("precall_rtp_packets_received_total").increment(s.packets);
        metrics::counter!("precall_rtp_packets_lost_total").increment(s.lost);
        metrics::counter!("precall_rtp_packets_ignored_total").increment(f.rtp_in_ignored + s.malformed);
        if f.srtp_suite.is_some() {
            metrics::counter!("precall_srtp_calls_total").increment(1);
            metrics::counter!("precall_srtp_auth_failures_total").increment(f.srtp_auth_failures);
            metrics::counter!("precall_srtp_replays_total").increment(f.srtp_replays);
        }
    }
    let duration_ms = f.row.ended_at.map(|e| (e - f.row.started_at).max(0) as u64);
    tracing::info!(
        call = %f.row.call_id,
        %protocol,
        %external,
        caller = %f.row.caller.as_deref().unwrap_or("anonymous"),
        reason = %f.reason,
        duration_ms,
        media_started_ms = f.media_started_ms,
        confirmed_ms = f.confirmed_ms,
        rtp_out_packets = f.rtp_out_packets,
        rtp_out_skipped = f.rtp_out_skipped,
        rtp_in_packets = s.packets,
        rtp_in_lost = s.lost,
        rtp_in_malformed = s.malformed,
        rtp_in_ignored = f.rtp_in_ignored,
        rtp_in_ssrc_changes = s.ssrc_changes,
        rtp_in_resyncs = s.resyncs,
        mos = f.mos.map(|m| (m * 100.0).round() / 100.0),
        rtp_in_max_jitter_ms = format!("{:.1}", s.max_jitter_ms),
        dtmf = %f.digits,
        agent_frames_out = f.agent_frames_out,
        agent_frames_in = f.agent_frames_in,
        agent_interruptions = f.agent_interruptions,
        agent_chunks_dropped = f.agent_chunks_dropped,
        hand_off_gap_ms = f.hand_off_gap_ms,
        srtp = %f.srtp_suite.unwrap_or("off"),
        srtp_auth_failures = f.srtp_auth_failures,
        srtp_replays = f.srtp_replays,
        "call ended"
    );
}
