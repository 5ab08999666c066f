//! The Agents WebSocket connection of one call: a thin tokio task that connects,
//! sends the initiation, answers pings at once, and turns the agent's messages
//! into [`AgentEvent`]s for the call task, which owns every decision (what to
//! play, when to hang up). The call task's [`AgentCommand`]s go out unchanged.
//!
//! Every wait is bounded: the connect (and signed-URL fetch) by
//! `connect_timeout`, a silent server by `idle_timeout` (reported as 1006, a
//! lost connection), and the call task's queue by its capacity.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::agent::{AudioFormat, ClientMessage, Initiation, ServerMessage};
use super::rest::Client;

/// How to reach the agent, from `[elevenlabs]`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `ws(s)://host[:port]`, without a path.
    pub ws_base: String,
    pub agent_id: String,
    /// Fetch a signed URL first (agents with authentication enabled).
    pub private: bool,
    /// For the signed URL.
    pub client: Option<Client>,
    pub first_message: Option<String>,
    pub prompt: Option<String>,
    pub language: Option<String>,
    /// The client tool that transfers the call.
    pub transfer_tool: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How far ahead of playback agent audio may queue per call.
    pub max_queue_seconds: u32,
    /// The voice when no clone service decides one.
    pub default_voice_id: String,
}

impl AgentConfig {
    /// From `[elevenlabs]`; `None` when no agent is configured. `http_base` is
    /// the REST base actually used (the simulator's when running offline).
    pub fn from_section(e: &crate::config::ElevenLabsSection, http_base: &str, agent_id: &str, client: Option<Client>) -> Option<Self> {
        if agent_id.is_empty() {
            return None;
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(AgentConfig {
            ws_base: opt(&e.ws_url).unwrap_or_else(|| Self::ws_base_from_http(http_base)),
            agent_id: agent_id.to_owned(),
            private: e.private_agent,
            client,
            first_message: opt(&e.agent_first_message),
            prompt: opt(&e.agent_prompt),
            language: opt(&e.agent_language),
            transfer_tool: e.transfer_tool_name.clone(),
            connect_timeout: Duration::from_secs(e.agent_connect_timeout_seconds),
            idle_timeout: Duration::from_secs(e.agent_idle_timeout_seconds),
            max_queue_seconds: e.agent_max_queue_seconds,
            default_voice_id: e.default_voice_id.clone(),
        })
    }

    /// `https://api.elevenlabs.io` → `wss://api.elevenlabs.io`.
    pub fn ws_base_from_http(base: &str) -> String {
        let base = base.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        }
    }
}

/// What the agent did, for the call task.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Ready {
        conversation_id: String,
        input: AudioFormat,
        output: AudioFormat,
    },
    Audio {
        event_id: u64,
        audio: Vec<u8>,
    },
    Interruption {
        event_id: u64,
    },
    /// A finished line of the conversation (`agent` or `user`).
    Transcript {
        role: &'static str,
        text: String,
    },
    /// The agent called the transfer tool.
    Transfer {
        tool_call_id: String,
        destination: String,
    },
    /// The agent used `end_call`; the close follows.
    EndCall,
    /// The conversation is over: the close code (1006 when the connection was
    /// lost or never made) and why.
    Closed {
        code: u16,
        reason: String,
    },
}

/// What the call task sends.
#[derive(Debug)]
pub enum AgentCommand {
    /// A serialized [`ClientMessage`] (UTF-8 JSON; shared bytes, so the caller
    /// can reuse its buffer once the message is written).
    Text(bytes::Bytes),
    /// End the conversation (code 1000).
    Close,
}

/// Who is calling, for the initiation's dynamic variables.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub call_id: String,
    pub caller: Option<String>,
    pub voice_id: String,
}

/// Runs one conversation until either side ends it, reporting into the call's
/// event queue (`wrap` makes a call event of an [`AgentEvent`]). Reports exactly
/// one [`AgentEvent::Closed`], last, unless the call task is already gone.
pub async fn run<E, W>(
    config: AgentConfig,
    conv: Conversation,
    mut commands: mpsc::Receiver<AgentCommand>,
    events: mpsc::Sender<E>,
    wrap: W,
) where
    W: Fn(AgentEvent) -> E,
{
    let started = Instant::now();
    let (code, reason) = match session(&config, &conv, &mut commands, &events, &wrap).await {
        Ok(()) => (1000, "closed by precall".to_owned()),
        Err(Ended { code, reason }) => (code, reason),
    };
    tracing::debug!(call = %conv.call_id, code, %reason, secs = started.elapsed().as_secs(), "agent conversation over");
    let _ = events.send(wrap(AgentEvent::Closed { code, reason })).await;
}

struct Ended {
    code: u16,
    reason: String,
}

fn lost(reason: impl Into<String>) -> Ended {
    Ended {
        code: 1006,
        reason: reason.into(),
    }
}

async fn url(config: &AgentConfig, deadline: Instant) -> Result<String, Ended> {
    if config.private {
        let client = config.client.as_ref().ok_or_else(|| lost("private agent without an API client"))?;
        return client
            .signed_url(&config.agent_id, deadline)
            .await
            .map_err(|e| lost(format!("signed URL: {e}")));
    }
    Ok(format!(
        "{}/v1/convai/conversation?agent_id={}",
        config.ws_base.trim_end_matches('/'),
        config.agent_id
    ))
}

/// Largest agent WebSocket message accepted (about a minute of 16 kHz PCM in base64).
pub const MAX_AGENT_MESSAGE: usize = 4 << 20;

async fn session<E, W>(
    config: &AgentConfig,
    conv: &Conversation,
    commands: &mut mpsc::Receiver<AgentCommand>,
    events: &mpsc::Sender<E>,
    wrap: &W,
) -> Result<(), Ended>
where
    W: Fn(AgentEvent) -> E,
{
    // tokio-tungstenite panics on wss:// without a process-wide rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let deadline = Instant::now() + config.connect_timeout;
    let url = Box::pin(url(config, deadline)).await?;
    // 20 ms audio chunks must not wait for Nagle's algorithm (measured: +40 ms).
    // The agent's largest message is a few seconds of audio; a peer cannot make
    // us buffer the library's default of 64 MiB per message.
    // The library's default buffers are 128 KiB each way, per connection: most
    // of a bridged call's memory. Messages here are 20 ms chunks up and short
    // bursts of audio down, so a 4 KiB read chunk (its own docs' advice for
    // many connections) and eager writes (every send is flushed anyway) lose
    // nothing.
    let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_AGENT_MESSAGE))
        .max_frame_size(Some(MAX_AGENT_MESSAGE))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0);
    // Boxed: the connect (DNS, TCP, TLS and HTTP handshakes) is a large future,
    // and inline it would make this task that large for the whole call.
    let connect = Box::pin(tokio_tungstenite::connect_async_with_config(url.as_str(), Some(limits), true));
    let (ws, _) = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), connect)
        .await
        .map_err(|_| lost("connect timed out"))?
        .map_err(|e| lost(format!("connect: {e}")))?;
    metrics::histogram!("precall_agent_connect_seconds").record(
        (config
            .connect_timeout
            .saturating_sub(deadline.saturating_duration_since(Instant::now())))
        .as_secs_f64(),
    );
    let (mut tx, mut rx) = ws.split();

    let mut vars = Map::new();
    vars.insert("call_id".into(), Value::String(conv.call_id.clone()));
    vars.insert("caller_number".into(), Value::String(conv.caller.clone().unwrap_or_default()));
    let init = ClientMessage::Initiation(Initiation {
        voice_id: Some(conv.voice_id.clone()),
        first_message: config.first_message.clone(),
        prompt: config.prompt.clone(),
        language: config.language.clone(),
        dynamic_variables: vars,
    });
    tx.send(Message::text(init.to_json()))
        .await
        .map_err(|e| lost(format!("send: {e}")))?;

    let emit = |ev: AgentEvent| events.send(wrap(ev));
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            frame = rx.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                let text = match frame {
                    None => return Err(lost("connection closed without a close frame")),
                    Some(Err(e)) => return Err(lost(format!("receive: {e}"))),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        return Err(Ended { code, reason });
                    }
                    Some(Ok(_)) => continue, // binary, ping/pong frames: tungstenite answers pings itself
                };
                let msg = match ServerMessage::parse(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(call = %conv.call_id, error = %e, "unparseable agent message ignored");
                        continue;
                    }
                };
                let event = match msg {
                    ServerMessage::Ping { ping_event } => {
                        let pong = ClientMessage::Pong { event_id: ping_event.event_id }.to_json();
                        tx.send(Message::text(pong)).await.map_err(|e| lost(format!("send: {e}")))?;
                        continue;
                    }
                    ServerMessage::ConversationInitiationMetadata { conversation_initiation_metadata_event: m } => {
                        let format = |f: Option<String>| f.as_deref().unwrap_or("pcm_16000").parse::<AudioFormat>();
                        match (format(m.user_input_audio_format), format(m.agent_output_audio_format)) {
                            (Ok(input), Ok(output)) => AgentEvent::Ready { conversation_id: m.conversation_id, input, output },
                            (Err(e), _) | (_, Err(e)) => {
                                let _ = tx.send(Message::Close(Some(close_frame(CloseCode::Unsupported, &e)))).await;
                                return Err(Ended { code: 1003, reason: e });
                            }
                        }
                    }
                    ServerMessage::Audio { audio_event } => {
                        use base64::Engine as _;
                        match base64::engine::general_purpose::STANDARD.decode(audio_event.audio_base_64.as_bytes()) {
                            Ok(audio) => AgentEvent::Audio { event_id: audio_event.event_id, audio },
                            Err(e) => {
                                tracing::debug!(call = %conv.call_id, error = %e, "agent audio that is not base64 ignored");
                                continue;
                            }
                        }
                    }
                    ServerMessage::Interruption { interruption_event } => AgentEvent::Interruption {
                        event_id: interruption_event.map_or(0, |e| e.event_id),
                    },
                    ServerMessage::AgentResponse { agent_response_event: r } => AgentEvent::Transcript { role: "agent", text: r.agent_response },
                    ServerMessage::UserTranscript { user_transcription_event: u } => AgentEvent::Transcript { role: "user", text: u.user_transcript },
                    ServerMessage::ClientToolCall { client_tool_call: call } if call.tool_name == config.transfer_tool => {
                        let destination = call.parameters.get("destination").and_then(Value::as_str).unwrap_or_default().to_owned();
                        AgentEvent::Transfer { tool_call_id: call.tool_call_id, destination }
                    }
                    ServerMessage::ClientToolCall { client_tool_call: call } => {
                        tracing::info!(call = %conv.call_id, tool = %call.tool_name, "agent called a client tool precall does not have");
                        let result = ClientMessage::ClientToolResult {
                            tool_call_id: call.tool_call_id,
                            result: format!("the tool {} is not available on this line", call.tool_name),
                            is_error: true,
                        };
                        tx.send(Message::text(result.to_json())).await.map_err(|e| lost(format!("send: {e}")))?;
                        continue;
                    }
                    ServerMessage::AgentToolResponse { agent_tool_response: r } if r.tool_name == "end_call" => AgentEvent::EndCall,
                    ServerMessage::Error { error_event } => {
                        let e = error_event.unwrap_or(super::agent::ErrorEvent { code: None, message: None });
                        tracing::warn!(call = %conv.call_id, code = ?e.code, message = ?e.message, "agent reported an error");
                        continue;
                    }
                    ServerMessage::AgentToolResponse { .. } | ServerMessage::Unknown => continue,
                };
                if emit(event).await.is_err() {
                    return Ok(()); // the call is gone
                }
            }
            cmd = commands.recv() => match cmd {
                Some(AgentCommand::Text(t)) => match Utf8Bytes::try_from(t) {
                    Ok(t) => tx.send(Message::Text(t)).await.map_err(|e| lost(format!("send: {e}")))?,
                    Err(_) => tracing::warn!(call = %conv.call_id, "a message for the agent that is not UTF-8 was not sent"),
                },
                Some(AgentCommand::Close) | None => {
                    let _ = tx.send(Message::Close(Some(close_frame(CloseCode::Normal, "call ended")))).await;
                    return Ok(());
                }
            },
            _ = &mut idle => return Err(lost("no message from the agent within the idle timeout")),
        }
    }
}

fn close_frame(code: CloseCode, reason: &str) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }
}
