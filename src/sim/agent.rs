//! The simulator's Conversational AI agent: the Agents WebSocket as ElevenLabs
//! speaks it (`docs/protocols.md` §3), with a scripted brain.
//!
//! It waits for `conversation_initiation_client_data` (anything else first: error
//! and close 1008), answers with `conversation_initiation_metadata` in the
//! configured formats, speaks its first message in the requested voice (a tone
//! at [`super::voice_pitch_hz`], sent faster than real time in 250 ms chunks as
//! the real service does), pings, and answers each caller turn. Turns are found
//! by energy: speech then 600 ms of quiet. Caller speech while the agent is still
//! talking is a barge-in: `interruption` with the turn's event id.
//!
//! Like a test IVR, it obeys keypad digits sent as contextual updates: 9 ends the
//! call (`end_call`, close 1000), 8 calls the `transfer_call` client tool, 7 fails
//! with close 1011, 6 interrupts itself. Tests can do the same with
//! [`super::Simulator::agent_do`]. Everything received is recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{SimState, speak};
use crate::elevenlabs::agent::AudioFormat;
use crate::media::g711;

/// The agent id the simulator serves (any id is accepted; this is the default).
pub const AGENT_ID: &str = "sim-agent";
/// The voice when the initiation overrides none.
pub const DEFAULT_VOICE: &str = "sim-default-voice";

/// How the simulated agent is set up (per agent, as at ElevenLabs).
#[derive(Debug, Clone)]
pub struct AgentKnobs {
    pub input_format: AudioFormat,
    pub output_format: AudioFormat,
    pub ping_interval: Duration,
    pub first_message: String,
    pub first_message_seconds: f64,
    pub reply_seconds: f64,
    /// Require a signed URL (`conversation_signature`).
    pub private: bool,
    /// Refuse the WebSocket upgrade with this HTTP status.
    pub refuse: Option<u16>,
    /// Where `transfer_call` sends the caller.
    pub transfer_destination: String,
}

impl Default for AgentKnobs {
    fn default() -> Self {
        AgentKnobs {
            input_format: AudioFormat::Pcm(16000),
            output_format: AudioFormat::Pcm(16000),
            ping_interval: Duration::from_secs(2),
            first_message: "Hello! This is the precall simulator agent. How can I help?".into(),
            first_message_seconds: 2.0,
            reply_seconds: 1.5,
            private: false,
            refuse: None,
            transfer_destination: "sip:operator@127.0.0.1".into(),
        }
    }
}

/// What a test can make every live conversation do.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    Interrupt,
    EndCall,
    Transfer(String),
    /// Send an `error` event and close with this code.
    Close(u16),
    /// Say something for this many seconds.
    Speak(f64),
}

/// One conversation as the simulator saw it.
#[derive(Debug, Clone, Default)]
pub struct ConversationRecord {
    /// The simulator's running number for the conversation.
    pub seq: u64,
    pub id: String,
    pub agent_id: String,
    pub voice_id: String,
    pub initiation: Value,
    /// Caller audio as received, decoded to PCM at `input_rate` (first 120 s).
    pub received: Vec<i16>,
    pub input_rate: u32,
    pub chunks: usize,
    pub contextual_updates: Vec<String>,
    pub tool_results: Vec<Value>,
    pub pongs: Vec<u64>,
    pub interruptions_sent: usize,
    /// Audio the agent sent, seconds.
    pub spoken_seconds: f64,
    /// How it ended: `client <code>` or `agent <code>`.
    pub closed: Option<String>,
    /// When caller speech began arriving (a loud chunk after quiet), for latency measurement.
    pub speech_onsets: Vec<Instant>,
    /// When each agent turn's audio started going out.
    pub turn_starts: Vec<Instant>,
}

struct Turn {
    loud: bool,
    event_id: u64,
    speaking_until: Instant,
    speech_ms: u32,
    quiet_ms: u32,
    started: Vec<Instant>,
}

pub(super) async fn session(mut socket: WebSocket, state: Arc<SimState>, agent_id: String, mut actions: broadcast::Receiver<AgentAction>) {
    let knobs = state.inner().agent.clone();
    let first = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let init: Value = match first {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if init["type"] != "conversation_initiation_client_data" {
        let _ = send(&mut socket, json!({"type": "error", "error_event": {"code": 1008, "message": "first message must be conversation_initiation_client_data", "error_type": "invalid_message"}})).await;
        let _ = socket.send(close(1008, "invalid_message")).await;
        return;
    }
    let voice = init["conversation_config_override"]["tts"]["voice_id"]
        .as_str()
        .unwrap_or(DEFAULT_VOICE)
        .to_owned();
    let first_message = init["conversation_config_override"]["agent"]["first_message"]
        .as_str()
        .map_or_else(|| knobs.first_message.clone(), str::to_owned);
    let index = {
        let mut inner = state.inner();
        inner.next += 1;
        let seq = inner.next;
        let id = format!("conv_sim{seq:012}");
        let record = ConversationRecord {
            seq,
            id,
            agent_id,
            voice_id: voice.clone(),
            initiation: init,
            input_rate: knobs.input_format.rate(),
            ..ConversationRecord::default()
        };
        super::bounded_push(&mut inner.conversations, record, super::KEEP_CONVERSATIONS);
        seq
    };
    let record = |f: &mut dyn FnMut(&mut ConversationRecord)| {
        if let Some(c) = state.inner().conversations.iter_mut().find(|c| c.seq == index) {
            f(c);
        }
    };
    let mut conversation_id = String::new();
    record(&mut |c| conversation_id = c.id.clone());
    let meta = json!({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": conversation_id,
        "agent_output_audio_format": knobs.output_format.to_string(),
        "user_input_audio_format": knobs.input_format.to_string(),
    }});
    if send(&mut socket, meta).await.is_err() {
        return;
    }
    let mut turn = Turn {
        loud: false,
        event_id: 1,
        speaking_until: Instant::now(),
        speech_ms: 0,
        quiet_ms: 0,
        started: Vec::new(),
    };
    if say(&mut socket, &knobs, &voice, &first_message, knobs.first_message_seconds, &mut turn)
        .await
        .is_err()
    {
        return;
    }
    let started = std::mem::take(&mut turn.started);
    record(&mut |c| {
        c.spoken_seconds += knobs.first_message_seconds;
        c.turn_starts.extend_from_slice(&started);
    });
    let mut ping = tokio::time::interval(knobs.ping_interval);
    ping.tick().await;
    let mut ping_id = 0u64;
    let ended = loop {
        let action = tokio::select! {
            _ = ping.tick() => {
                ping_id += 1;
                if send(&mut socket, json!({"type": "ping", "ping_event": {"event_id": ping_id, "ping_ms": null}})).await.is_err() {
                    break "agent 1006".to_owned();
                }
                continue;
            }
            a = actions.recv() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => break format!("client {}", f.map_or(1005, |f| f.code)),
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => break "client 1006".to_owned(),
                };
                let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                match on_message(&msg, &knobs, &mut turn, index, &state) {
                    Some(a) => a,
                    None => continue,
                }
            }
        };
        match action {
            AgentAction::Interrupt => {
                turn.speaking_until = Instant::now();
                record(&mut |c| c.interruptions_sent += 1);
                let _ = send(
                    &mut socket,
                    json!({"type": "interruption", "interruption_event": {"event_id": turn.event_id}}),
                )
                .await;
            }
            AgentAction::Speak(secs) => {
                turn.event_id += 1;
                let _ = say(&mut socket, &knobs, &voice, "Let me tell you more.", secs, &mut turn).await;
                record(&mut |c| c.spoken_seconds += secs);
            }
            AgentAction::EndCall => {
                turn.event_id += 1;
                let _ = say(&mut socket, &knobs, &voice, "Thank you for calling. Goodbye!", 1.0, &mut turn).await;
                record(&mut |c| c.spoken_seconds += 1.0);
                let _ = send(&mut socket, json!({"type": "agent_tool_response", "agent_tool_response": {"tool_name": "end_call", "tool_call_id": "end_call_1", "tool_type": "system", "is_error": false, "is_called": true, "event_id": turn.event_id}})).await;
                let _ = socket.send(close(1000, "end_call")).await;
                break "agent 1000".to_owned();
            }
            AgentAction::Transfer(destination) => {
                turn.event_id += 1;
                let _ = send(&mut socket, json!({"type": "client_tool_call", "client_tool_call": {"tool_name": "transfer_call", "tool_call_id": format!("tool_{}", turn.event_id), "parameters": {"destination": destination}, "event_id": turn.event_id}})).await;
            }
            AgentAction::Close(code) => {
                let _ = send(
                    &mut socket,
                    json!({"type": "error", "error_event": {"code": code, "message": "simulated failure", "error_type": "internal_error"}}),
                )
                .await;
                let _ = socket.send(close(code, "simulated failure")).await;
                break format!("agent {code}");
            }
        }
        let started = std::mem::take(&mut turn.started);
        record(&mut |c| c.turn_starts.extend_from_slice(&started));
    };
    record(&mut |c| c.closed = Some(ended.clone()));
}

/// Handles one client message; an action when the message asks the agent to act.
fn on_message(msg: &Value, knobs: &AgentKnobs, turn: &mut Turn, index: u64, state: &SimState) -> Option<AgentAction> {
    let mut inner = state.inner();
    let conv = inner.conversations.iter_mut().find(|c| c.seq == index)?;
    if let Some(b64) = msg.get("user_audio_chunk").and_then(Value::as_str) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let pcm: Vec<i16> = match knobs.input_format {
            AudioFormat::Ulaw8000 => bytes.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
            AudioFormat::Pcm(_) => bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(),
        };
        conv.chunks += 1;
        let room = (conv.input_rate as usize * 120).saturating_sub(conv.received.len());
        conv.received.extend_from_slice(&pcm[..pcm.len().min(room)]);
        let loud = rms(&pcm) > 1000.0;
        if loud && !turn.loud {
            conv.speech_onsets.push(Instant::now());
        }
        turn.loud = loud;
        drop(inner);
        return hear(&pcm, knobs, turn);
    }
    match msg["type"].as_str()? {
        "pong" => conv.pongs.push(msg["event_id"].as_u64().unwrap_or(0)),
        "client_tool_result" => conv.tool_results.push(msg.clone()),
        "contextual_update" => {
            let text = msg["text"].as_str().unwrap_or_default().to_owned();
            conv.contextual_updates.push(text.clone());
            let digit = text.strip_prefix("The caller pressed the key ").and_then(|r| r.chars().next());
            return match digit {
                Some('9') => Some(AgentAction::EndCall),
                Some('8') => Some(AgentAction::Transfer(knobs.transfer_destination.clone())),
                Some('7') => Some(AgentAction::Close(1011)),
                Some('6') => Some(AgentAction::Interrupt),
                _ => None,
            };
        }
        _ => {}
    }
    None
}

/// Energy-based turn taking on one chunk of caller audio.
fn hear(pcm: &[i16], knobs: &AgentKnobs, turn: &mut Turn) -> Option<AgentAction> {
    if pcm.is_empty() {
        return None;
    }
    let ms = (pcm.len() as u64 * 1000 / u64::from(knobs.input_format.rate())) as u32;
    let speaking = Instant::now() < turn.speaking_until;
    if rms(pcm) > 1000.0 {
        turn.speech_ms += ms;
        turn.quiet_ms = 0;
        if speaking && turn.speech_ms >= 200 {
            turn.speech_ms = 0;
            return Some(AgentAction::Interrupt);
        }
    } else {
        turn.quiet_ms += ms;
        if turn.speech_ms >= 300 && turn.quiet_ms >= 600 && !speaking {
            turn.speech_ms = 0;
            return Some(AgentAction::Speak(knobs.reply_seconds));
        }
    }
    None
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

async fn say(
    socket: &mut WebSocket,
    knobs: &AgentKnobs,
    voice: &str,
    text: &str,
    seconds: f64,
    turn: &mut Turn,
) -> Result<(), axum::Error> {
    let event_id = turn.event_id;
    turn.started.push(Instant::now());
    send(
        socket,
        json!({"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": event_id}}),
    )
    .await?;
    let rate = knobs.output_format.rate();
    let pcm = speak(voice, rate, seconds);
    for chunk in pcm.chunks(rate as usize / 4) {
        let bytes: Vec<u8> = match knobs.output_format {
            AudioFormat::Ulaw8000 => chunk.iter().map(|&s| g711::ulaw_encode(s)).collect(),
            AudioFormat::Pcm(_) => chunk.iter().flat_map(|s| s.to_le_bytes()).collect(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        send(
            socket,
            json!({"type": "audio", "audio_event": {"audio_base_64": b64, "event_id": event_id}}),
        )
        .await?;
    }
    let now = Instant::now();
    turn.speaking_until = turn.speaking_until.max(now) + Duration::from_secs_f64(seconds);
    Ok(())
}

async fn send(socket: &mut WebSocket, v: Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(v.to_string().into())).await
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}
