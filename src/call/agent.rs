//! The call's side of the agent bridge: which audio the media clock plays
//! (greeting, agent, apology), the hand-off from greeting to agent, and what the
//! call does when the agent ends or fails. Plain logic over the [`Bridge`] and
//! the [`Forwarder`]; the WebSocket task ([`crate::elevenlabs::ws`]) does the IO.
//!
//! The hand-off happens at a frame boundary once the greeting has played through
//! and agent audio is already queued, so the caller hears no gap and no overlap:
//! the first agent frame goes out on the very tick after the last greeting/hold
//! frame. The number of silent frames between them is recorded (`gap_ms`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use super::EndReason;
use crate::elevenlabs::agent::{AudioFormat, ClientMessage};
use crate::elevenlabs::ws::{AgentCommand, AgentEvent};
use crate::media::bridge::{Bridge, BridgeError, BridgeStats};
use crate::media::forward::{ForwardStats, Forwarder};
use crate::media::g711::G711;
use crate::media::prompt::{FRAME_SAMPLES, Player, Prompt};

/// Cap on the transcript kept for `call_log` (the post-call webhook has the full one).
const MAX_TRANSCRIPT: usize = 64 * 1024;

/// What the media clock is playing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Playing {
    Greeting,
    Agent,
    /// The apology before hanging up on an agent failure (frame index).
    Apology(usize),
}

/// What the call task must do after feeding the link an agent event.
#[derive(Debug, PartialEq)]
pub enum LinkAction {
    None,
    /// Record the conversation id on the call.
    Conversation(String),
    /// The agent asked to transfer the caller here.
    Transfer {
        tool_call_id: String,
        destination: String,
    },
}

/// The hand-off, for `clone_transfer_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOff {
    pub at: Instant,
    /// Silent frames between the last greeting frame and the first agent frame, in ms.
    pub gap_ms: u64,
}

/// Messages for the agent not yet taken by the call's shell; beyond this the
/// WebSocket is not keeping up and caller audio is dropped, not queued.
const MAX_OUTBOX: usize = 64;

pub struct AgentLink {
    outbox: VecDeque<AgentCommand>,
    codec: G711,
    max_queue_seconds: u32,
    bridge: Option<Bridge>,
    /// Caller audio goes to the agent as it arrives ([`Forwarder`]).
    forward: Forwarder,
    /// Since when caller audio flows to the agent, and how many frames went:
    /// a caller who goes quiet is filled in with silence so the agent's input
    /// never starves.
    upstream_since: Option<Instant>,
    frames_up: u64,
    playing: Playing,
    /// Agent audio arrived while nothing of the agent's was queued.
    turn_pending: bool,
    /// Set once the agent has closed: play out what is queued, then end.
    closed: Option<u16>,
    end_call: bool,
    silent_frames_before_agent: u64,
    switched_at: Option<Instant>,
    hand_off: Option<HandOff>,
    transcript: String,
    chunk: Vec<u8>,
    /// The upstream JSON is written here and split off per message; once the
    /// WebSocket task has written a message and dropped it, the next reserve
    /// takes the same memory back, so steady state allocates nothing.
    encoded: BytesMut,
    /// Caller audio not sent because the WebSocket could not keep up.
    pub dropped_chunks: u64,
    silence: [u8; FRAME_SAMPLES],
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLink")
            .field("playing", &self.playing)
            .field("closed", &self.closed)
            .finish()
    }
}

impl AgentLink {
    pub fn new(codec: G711, max_queue_seconds: u32) -> Self {
        AgentLink {
            outbox: VecDeque::with_capacity(8),
            codec,
            max_queue_seconds,
            bridge: None,
            forward: Forwarder::new(codec.silence()),
            upstream_since: None,
            frames_up: 0,
            playing: Playing::Greeting,
            turn_pending: false,
            closed: None,
            end_call: false,
            silent_frames_before_agent: 0,
            switched_at: None,
            hand_off: None,
            transcript: String::new(),
            chunk: Vec::with_capacity(2048),
            encoded: BytesMut::with_capacity(4096),
            dropped_chunks: 0,
            silence: [codec.silence(); FRAME_SAMPLES],
        }
    }

    pub fn hand_off(&self) -> Option<HandOff> {
        self.hand_off
    }

    pub fn bridge_stats(&self) -> Option<BridgeStats> {
        self.bridge.as_ref().map(Bridge::stats)
    }

    pub fn formats(&self) -> Option<(AudioFormat, AudioFormat)> {
        self.bridge.as_ref().map(Bridge::formats)
    }

    pub fn take_transcript(&mut self) -> Option<String> {
        (!self.transcript.is_empty()).then(|| std::mem::take(&mut self.transcript))
    }

    /// A caller RTP payload in the call's codec: to the agent now, unless a
    /// sequence gap before it is open (then within one frame time).
    pub fn caller_packet(&mut self, now: Instant, seq: u16, payload: &[u8]) {
        if self.bridge.is_none() || self.closed.is_some() {
            return;
        }
        let (forward, mut up) = self.upstream();
        forward.push(now, seq, payload, |f| up.send(Some(f)));
    }

    /// The forwarder and the caller → agent half it feeds, borrowed apart.
    fn upstream(&mut self) -> (&mut Forwarder, Upstream<'_>) {
        let up = Upstream {
            bridge: &mut self.bridge,
            chunk: &mut self.chunk,
            encoded: &mut self.encoded,
            outbox: &mut self.outbox,
            dropped: &mut self.dropped_chunks,
            frames_up: &mut self.frames_up,
        };
        (&mut self.forward, up)
    }

    /// When an open sequence gap stops holding caller audio back.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.forward.poll_timeout()
    }

    pub fn forward_stats(&self) -> ForwardStats {
        self.forward.stats()
    }

    /// A DTMF digit becomes background context for the agent.
    pub fn digit(&mut self, digit: char) {
        if self.bridge.is_some() {
            let text = format!("The caller pressed the key {digit} on their phone keypad.");
            self.send(ClientMessage::ContextualUpdate { text }.to_json());
        }
    }

    pub fn reply(&mut self, json: String) {
        self.send(json);
    }

    fn send(&mut self, json: String) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.dropped_chunks += 1;
        } else {
            self.outbox.push_back(AgentCommand::Text(Bytes::from(json)));
        }
    }

    /// The next message for the agent's WebSocket.
    pub fn poll_command(&mut self) -> Option<AgentCommand> {
        self.outbox.pop_front()
    }

    /// An event from the WebSocket task.
    pub fn on_event(&mut self, ev: AgentEvent) -> Result<LinkAction, BridgeError> {
        match ev {
            AgentEvent::Ready {
                conversation_id,
                input,
                output,
            } => {
                self.bridge = Some(Bridge::new(self.codec, input, output, self.max_queue_seconds)?);
                // What the caller said before the agent was there is not for it.
                self.forward = Forwarder::new(self.codec.silence());
                self.frames_up = 0;
                return Ok(LinkAction::Conversation(conversation_id));
            }
            AgentEvent::Audio { event_id, audio } => {
                if let Some(b) = self.bridge.as_mut()
                    && self.closed.is_none_or(|code| code == 1000)
                {
                    let idle = b.queued_frames() == 0;
                    b.agent_audio(event_id, &audio);
                    self.turn_pending |= idle && b.queued_frames() > 0;
                }
            }
            AgentEvent::Interruption { event_id } => {
                if let Some(b) = self.bridge.as_mut() {
                    b.interruption(event_id);
                }
            }
            AgentEvent::Transcript { role, text } => {
                if self.transcript.len() + text.len() < MAX_TRANSCRIPT {
                    self.transcript.push_str(role);
                    self.transcript.push_str(": ");
                    self.transcript.push_str(&text);
                    self.transcript.push('\n');
                }
            }
            AgentEvent::Transfer { tool_call_id, destination } => return Ok(LinkAction::Transfer { tool_call_id, destination }),
            AgentEvent::EndCall => self.end_call = true,
            AgentEvent::Closed { code, reason } => {
                let code = if code == 1000 || self.end_call { 1000 } else { code };
                tracing::debug!(code, %reason, "agent closed");
                self.closed = Some(code);
                if code != 1000 {
                    // Nothing more will come: say sorry rather than leave the caller in silence.
                    if let Some(b) = self.bridge.as_mut() {
                        b.interruption(u64::MAX);
                    }
                    self.playing = Playing::Apology(0);
                }
            }
        }
        Ok(LinkAction::None)
    }

    /// Time passed, caller → agent: a sequence gap whose frame time is over
    /// is filled; a caller whose audio runs more than [`SILENCE_SLACK`] frames
    /// behind the clock (silent, on hold, or gone) is filled in with silence,
    /// one frame per frame time.
    pub fn upstream_tick(&mut self, now: Instant) {
        if self.bridge.is_none() || self.closed.is_some() {
            return;
        }
        let since = *self.upstream_since.get_or_insert(now);
        let (forward, mut up) = self.upstream();
        forward.handle_timeout(now, |f| up.send(Some(f)));
        let elapsed = (now.saturating_duration_since(since).as_millis() / FRAME.as_millis()) as u64;
        while *up.frames_up + SILENCE_SLACK < elapsed {
            up.send(None);
        }
    }

    /// Whether the agent's audio should start now rather than on the next
    /// tick: a turn that begins while the agent was quiet, or the first turn
    /// once the greeting is over.
    pub fn take_turn_start(&mut self, greeting_done: bool) -> bool {
        let pending = std::mem::take(&mut self.turn_pending);
        match self.playing {
            Playing::Agent => pending,
            Playing::Greeting => greeting_done && self.bridge.as_ref().is_some_and(|b| b.queued_frames() >= 2),
            Playing::Apology(_) => false,
        }
    }

    /// One tick of the media clock, → caller: the frame to send, and whether the
    /// call should now end (and why).
    pub fn frame<'a>(&'a mut self, now: Instant, player: &'a mut Player, apology: &'a Prompt) -> (&'a [u8], Option<EndReason>) {
        match self.playing {
            Playing::Apology(i) => {
                if i >= apology.frames() {
                    let code = self.closed.unwrap_or(1006);
                    return (&self.silence, Some(EndReason::AgentError(code)));
                }
                self.playing = Playing::Apology(i + 1);
                (apology.frame(self.codec, i as u64), None)
            }
            Playing::Greeting => {
                // At least one whole frame queued, so the first agent tick cannot come up short.
                let ready = self.bridge.as_ref().is_some_and(|b| b.queued_frames() >= 2);
                if ready && player.greeting_done() {
                    self.playing = Playing::Agent;
                    self.switched_at = Some(now);
                    return self.agent_frame();
                }
                if self.closed == Some(1000) && self.bridge.as_ref().is_none_or(|b| b.queued_frames() == 0) {
                    // The agent ended before it said anything.
                    return (&self.silence, Some(EndReason::AgentEnded));
                }
                (player.next_frame(self.codec), None)
            }
            Playing::Agent => self.agent_frame(),
        }
    }

    fn agent_frame(&mut self) -> (&[u8], Option<EndReason>) {
        let closed = self.closed;
        match self.bridge.as_mut().and_then(Bridge::next_frame) {
            Some(f) => {
                if let Some(at) = self.switched_at.take() {
                    // Measured, not assumed: silent ticks between the last greeting
                    // frame and the first agent frame.
                    self.hand_off = Some(HandOff {
                        at,
                        gap_ms: self.silent_frames_before_agent * 20,
                    });
                }
                (f, None)
            }
            None if closed == Some(1000) => (&self.silence, Some(EndReason::AgentEnded)),
            None => {
                if self.switched_at.is_some() {
                    self.silent_frames_before_agent += 1;
                }
                (&self.silence, None)
            }
        }
    }
}

/// One frame time.
const FRAME: Duration = Duration::from_millis(20);
/// Frame times the caller's audio may run behind our clock before silence
/// fills in: enough for a gap to close and for the jitter of a loaded network
/// (a late burst must not find silence already inserted before it), far less
/// than anything that would starve the agent's input.
const SILENCE_SLACK: u64 = 5;

/// The caller → agent half, borrowed from the link so the forwarder can hand
/// frames straight to it.
struct Upstream<'a> {
    bridge: &'a mut Option<Bridge>,
    chunk: &'a mut Vec<u8>,
    encoded: &'a mut BytesMut,
    outbox: &'a mut VecDeque<AgentCommand>,
    dropped: &'a mut u64,
    frames_up: &'a mut u64,
}

impl Upstream<'_> {
    /// One frame to the agent as a `user_audio_chunk` (silence for `None`).
    fn send(&mut self, frame: Option<&[u8]>) {
        let Some(bridge) = self.bridge.as_mut() else { return };
        *self.frames_up += 1;
        self.chunk.clear();
        bridge.caller_frame(frame, self.chunk);
        if self.chunk.is_empty() {
            return; // the resampler is still priming
        }
        if self.outbox.len() >= MAX_OUTBOX {
            *self.dropped += 1;
            return;
        }
        const HEAD: &[u8] = b"{\"user_audio_chunk\":\"";
        const TAIL: &[u8] = b"\"}";
        let b64 = base64::encoded_len(self.chunk.len(), true).unwrap_or(0);
        self.encoded.clear();
        self.encoded.reserve(HEAD.len() + b64 + TAIL.len());
        self.encoded.extend_from_slice(HEAD);
        let at = self.encoded.len();
        self.encoded.resize(at + b64, 0);
        if base64::engine::general_purpose::STANDARD
            .encode_slice(&*self.chunk, &mut self.encoded[at..])
            .is_err()
        {
            self.encoded.clear();
            return;
        }
        self.encoded.extend_from_slice(TAIL);
        self.outbox.push_back(AgentCommand::Text(self.encoded.split().freeze()));
    }
}
