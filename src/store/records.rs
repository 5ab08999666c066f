//! The rows precall writes, as typed values. `Record` is what travels from the call
//! path to the writer (and, during an outage, through the spill file as JSON).

use serde::{Deserialize, Serialize};

/// One `call_log` row as the call path knows it. Written as an upsert keyed by
/// `call_id`; a row only replaces one with a lower `revision`, so retries and
/// out-of-order replays from the spill file cannot move a call backwards.
/// `transcript`/`summary` are owned by the post-call webhook and never written here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CallRow {
    pub call_id: String,
    pub revision: i64,
    pub node_id: String,
    /// `sip` or `twilio`.
    pub protocol: String,
    /// SIP Call-ID or Twilio CallSid.
    pub external_id: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub bridged_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    /// The SIP status of a rejected call (503, 488…).
    pub end_status: Option<i64>,
    pub clone_outcome: Option<String>,
    pub voice_id: Option<String>,
    pub conversation_id: Option<String>,
    pub rtp_in_packets: Option<i64>,
    pub rtp_in_lost: Option<i64>,
    pub rtp_in_max_jitter_us: Option<i64>,
    pub rtp_out_packets: Option<i64>,
    /// The E-model MOS estimate × 100 ([`crate::media::quality`]).
    pub rtp_in_mos_x100: Option<i64>,
}

/// A stored call with the webhook's fields, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCall {
    pub row: CallRow,
    pub transcript: Option<String>,
    pub summary: Option<String>,
    pub call_successful: Option<String>,
    pub agent_duration_secs: Option<i64>,
}

/// One voice sample file of a caller mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Path relative to the data directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `caller_voice_mapping`: which samples clone which caller's voice.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerMapping {
    pub caller_id: String,
    pub display_name: Option<String>,
    pub samples: Vec<Sample>,
    /// SHA-256 over the samples' hashes in order: what a cached clone was made from.
    pub sample_hash: String,
    /// A JSON object (ElevenLabs labels).
    pub labels: serde_json::Value,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `voice_clone_cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedVoice {
    pub caller_id: String,
    pub voice_id: String,
    pub sample_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// `voice_clone_log`: one clone attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloneAttempt {
    /// Unique per attempt, so a retried write is not recorded twice.
    pub event_id: String,
    pub caller_id: String,
    pub call_id: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub latency_ms: Option<i64>,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    pub voice_id: Option<String>,
}

/// The three clone event tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum CloneEvent {
    Ready {
        event_id: String,
        call_id: String,
        caller_id: String,
        voice_id: String,
        source: String,
        waited_ms: i64,
        created_at: i64,
    },
    Failed {
        event_id: String,
        call_id: String,
        caller_id: String,
        reason: String,
        fallback_voice_id: Option<String>,
        waited_ms: i64,
        created_at: i64,
    },
    Transfer {
        event_id: String,
        call_id: String,
        voice_id: String,
        waited_ms: i64,
        gap_ms: i64,
        created_at: i64,
    },
}

/// Anything the call path asks the writer to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record")]
pub enum Record {
    Call(Box<CallRow>),
    CloneAttempt(CloneAttempt),
    CloneEvent(CloneEvent),
}

/// A random id for rows and events (128 bits, hex).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
