//! The ElevenLabs Agents (Conversational AI) WebSocket protocol: typed models of
//! the messages precall sends and receives (`docs/protocols.md` §3,
//! `elevenlabs/agent.asyncapi.yaml`).
//!
//! Parsing is lenient where the vendor adds things: an unknown `type` becomes
//! [`ServerMessage::Unknown`] (logged at debug, never an error), unknown fields are
//! ignored, and optional fields default.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

// The format is the media layer's type; its ElevenLabs names (`pcm_16000`,
// `ulaw_8000`) are this module's business.
pub use crate::media::format::AudioFormat;

/// The names `conversation_initiation_metadata` uses.
impl FromStr for AudioFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ulaw_8000" => Ok(AudioFormat::Ulaw8000),
            "pcm_8000" => Ok(AudioFormat::Pcm(8000)),
            "pcm_16000" => Ok(AudioFormat::Pcm(16000)),
            "pcm_22050" => Ok(AudioFormat::Pcm(22050)),
            "pcm_24000" => Ok(AudioFormat::Pcm(24000)),
            "pcm_44100" => Ok(AudioFormat::Pcm(44100)),
            "pcm_48000" => Ok(AudioFormat::Pcm(48000)),
            other => Err(format!("unsupported audio format {other:?}")),
        }
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioFormat::Pcm(r) => write!(f, "pcm_{r}"),
            AudioFormat::Ulaw8000 => f.write_str("ulaw_8000"),
        }
    }
}

/// Overrides and variables for `conversation_initiation_client_data`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Initiation {
    pub voice_id: Option<String>,
    pub first_message: Option<String>,
    pub prompt: Option<String>,
    pub language: Option<String>,
    pub dynamic_variables: Map<String, Value>,
}

/// Messages precall sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Initiation(Initiation),
    /// Base64 audio in the agent's input format (the only message without `type`).
    UserAudioChunk(String),
    Pong {
        event_id: u64,
    },
    ContextualUpdate {
        text: String,
    },
    ClientToolResult {
        tool_call_id: String,
        result: String,
        is_error: bool,
    },
}

impl ClientMessage {
    pub fn to_json(&self) -> String {
        let v = match self {
            ClientMessage::Initiation(i) => {
                let mut agent = Map::new();
                if let Some(p) = &i.prompt {
                    agent.insert("prompt".into(), serde_json::json!({ "prompt": p }));
                }
                if let Some(m) = &i.first_message {
                    agent.insert("first_message".into(), Value::String(m.clone()));
                }
                if let Some(l) = &i.language {
                    agent.insert("language".into(), Value::String(l.clone()));
                }
                let mut overrides = Map::new();
                if !agent.is_empty() {
                    overrides.insert("agent".into(), Value::Object(agent));
                }
                if let Some(v) = &i.voice_id {
                    overrides.insert("tts".into(), serde_json::json!({ "voice_id": v }));
                }
                serde_json::json!({
                    "type": "conversation_initiation_client_data",
                    "conversation_config_override": overrides,
                    "dynamic_variables": i.dynamic_variables,
                    "source_info": {"source": "precall", "version": env!("CARGO_PKG_VERSION")},
                })
            }
            ClientMessage::UserAudioChunk(b64) => return format!("{{\"user_audio_chunk\":\"{b64}\"}}"),
            ClientMessage::Pong { event_id } => serde_json::json!({"type": "pong", "event_id": event_id}),
            ClientMessage::ContextualUpdate { text } => serde_json::json!({"type": "contextual_update", "text": text}),
            ClientMessage::ClientToolResult {
                tool_call_id,
                result,
                is_error,
            } => serde_json::json!({"type": "client_tool_result", "tool_call_id": tool_call_id, "result": result, "is_error": is_error}),
        };
        v.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InitiationMetadata {
    pub conversation_id: String,
    #[serde(default)]
    pub agent_output_audio_format: Option<String>,
    #[serde(default)]
    pub user_input_audio_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AudioEvent {
    pub audio_base_64: String,
    #[serde(default)]
    pub event_id: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventId {
    #[serde(default)]
    pub event_id: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PingEvent {
    pub event_id: u64,
    #[serde(default)]
    pub ping_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentResponse {
    #[serde(default)]
    pub agent_response: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserTranscript {
    #[serde(default)]
    pub user_transcript: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClientToolCall {
    pub tool_name: String,
    pub tool_call_id: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentToolResponse {
    #[serde(default)]
    pub tool_name: String,
    #[serde(default)]
    pub tool_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ErrorEvent {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Messages the agent sends (every one has `type`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    ConversationInitiationMetadata {
        conversation_initiation_metadata_event: InitiationMetadata,
    },
    Audio {
        audio_event: AudioEvent,
    },
    Interruption {
        #[serde(default)]
        interruption_event: Option<EventId>,
    },
    Ping {
        ping_event: PingEvent,
    },
    AgentResponse {
        agent_response_event: AgentResponse,
    },
    UserTranscript {
        user_transcription_event: UserTranscript,
    },
    ClientToolCall {
        client_tool_call: ClientToolCall,
    },
    AgentToolResponse {
        agent_tool_response: AgentToolResponse,
    },
    Error {
        #[serde(default)]
        error_event: Option<ErrorEvent>,
    },
    /// Anything else (`vad_score`, `tentative_user_transcript`, newer types).
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message_we_act_on_and_ignores_the_rest() {
        let m = ServerMessage::parse(r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"c1","agent_output_audio_format":"pcm_16000","user_input_audio_format":"ulaw_8000"}}"#).unwrap();
        let ServerMessage::ConversationInitiationMetadata {
            conversation_initiation_metadata_event: meta,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!(
            meta.agent_output_audio_format.unwrap().parse::<AudioFormat>(),
            Ok(AudioFormat::Pcm(16000))
        );
        assert_eq!(
            meta.user_input_audio_format.unwrap().parse::<AudioFormat>(),
            Ok(AudioFormat::Ulaw8000)
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"ping","ping_event":{"event_id":7,"ping_ms":null}}"#).unwrap(),
            ServerMessage::Ping {
                ping_event: PingEvent {
                    event_id: 7,
                    ping_ms: None
                }
            }
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"interruption","interruption_event":{"event_id":3}}"#).unwrap(),
            ServerMessage::Interruption {
                interruption_event: Some(EventId { event_id: 3 })
            }
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"vad_score","vad_score_event":{"vad_score":0.9}}"#).unwrap(),
            ServerMessage::Unknown
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"brand_new_thing"}"#).unwrap(),
            ServerMessage::Unknown
        );
        assert!(
            ServerMessage::parse(r#"{"type":"audio"}"#).is_err(),
            "audio without its event is malformed"
        );
        let m = ServerMessage::parse(r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"transfer_call","tool_call_id":"t1","parameters":{"destination":"sip:desk@example.com"},"event_id":5}}"#).unwrap();
        assert!(
            matches!(m, ServerMessage::ClientToolCall { client_tool_call } if client_tool_call.parameters["destination"] == "sip:desk@example.com")
        );
        assert!("opus_48000".parse::<AudioFormat>().is_err());
    }

    #[test]
    fn client_messages_have_the_documented_shape() {
        let chunk: Value = serde_json::from_str(&ClientMessage::UserAudioChunk("AAA=".into()).to_json()).unwrap();
        assert_eq!(chunk, serde_json::json!({"user_audio_chunk": "AAA="}));
        let pong: Value = serde_json::from_str(&ClientMessage::Pong { event_id: 9 }.to_json()).unwrap();
        assert_eq!(pong, serde_json::json!({"type": "pong", "event_id": 9}));
        let mut vars = Map::new();
        vars.insert("caller_number".into(), "+15550100".into());
        let init: Value = serde_json::from_str(
            &ClientMessage::Initiation(Initiation {
                voice_id: Some("v1".into()),
                first_message: Some("Hi".into()),
                dynamic_variables: vars,
                ..Initiation::default()
            })
            .to_json(),
        )
        .unwrap();
        assert_eq!(init["type"], "conversation_initiation_client_data");
        assert_eq!(init["conversation_config_override"]["tts"]["voice_id"], "v1");
        assert_eq!(init["conversation_config_override"]["agent"]["first_message"], "Hi");
        assert_eq!(init["dynamic_variables"]["caller_number"], "+15550100");
    }
}
