//! A call: everything between an admitted INVITE and its `call_log` row.
//!
//! ```text
//!  admitted ──(answer_delay)──▶ answering ──ACK──▶ greeting ──voice+ACK+SDP──▶ agent connecting
//!     │ 200 sent at once            │                 │  (hold audio after        │ first agent audio
//!     │                             │ CANCEL          │   the greeting)           ▼ queued, greeting done
//!     │                             ▼                 │                        bridged ──REFER 2xx──▶ transferred
//!     │                           ended ◀── BYE / timeout / max duration / drain ──┤        end_call / error+apology
//!     └──────────────────────────────────────────────────────────────── ending (our BYE) ──▶ ended ─▶ final row
//! ```
//!
//! - [`lifecycle`]: the states, timers and end reasons ([`Lifecycle`]); decides.
//! - [`machine`]: the whole call as one sans-IO machine ([`CallMachine`]): media
//!   clock, caller RTP, greeting/agent switch, clone and agent hand-off,
//!   transfers, re-offers, record revisions. No clock, socket or RNG inside.
//! - [`agent`]: the greeting → agent → apology switch over the bridge.
//! - [`task`]: the tokio shell: one task per call feeding sockets, channels and
//!   timers into the machine and carrying out its outputs.

pub mod admission;
pub mod agent;
#[cfg(test)]
mod harness;
pub mod lifecycle;
pub mod machine;
#[cfg(test)]
mod scenarios;
pub mod task;

pub use lifecycle::{CallAction, CallInput, CallState, Lifecycle};
pub use machine::CallMachine;

use std::fmt;
use std::time::Duration;

/// Limits the call enforces on itself.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub max_duration: Duration,
    /// No caller RTP for this long ends the call (`rtp.timeout_seconds`).
    pub rtp_timeout: Duration,
    /// The same while the caller holds the call (`rtp.hold_timeout_seconds`).
    pub hold_timeout: Duration,
}

/// Why a call ended; the string forms are what logs and `call_log` record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    CallerBye,
    Cancelled,
    AckTimeout,
    RtpTimeout,
    MaxDuration,
    Shutdown,
    Rejected(u16),
    /// The agent ended the conversation (`end_call`, close 1000) and its last words played.
    AgentEnded,
    /// The agent connection failed or closed with an error (the WebSocket close code; 1006 for a lost connection).
    AgentError(u16),
    /// The caller was handed on with REFER.
    Transferred,
    /// The caller stopped refreshing the session timer (RFC 4028).
    SessionExpired,
    /// A delayed-offer call whose ACK carried no usable SDP answer (RFC 3261
    /// §13.2.1 requires one): nothing was negotiated, so we hang up.
    NoSdpAnswer,
    Error(String),
}

impl EndReason {
    pub fn as_str(&self) -> &str {
        match self {
            EndReason::CallerBye => "caller_bye",
            EndReason::Cancelled => "cancelled",
            EndReason::AckTimeout => "ack_timeout",
            EndReason::RtpTimeout => "rtp_timeout",
            EndReason::MaxDuration => "max_duration",
            EndReason::Shutdown => "shutdown",
            EndReason::Rejected(_) => "rejected",
            EndReason::AgentEnded => "agent_end_call",
            EndReason::AgentError(_) => "agent_error",
            EndReason::Transferred => "transferred",
            EndReason::SessionExpired => "session_expired",
            EndReason::NoSdpAnswer => "no_sdp_answer",
            EndReason::Error(_) => "error",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Rejected(code) => write!(f, "rejected ({code})"),
            EndReason::AgentError(code) => write!(f, "agent_error ({code})"),
            EndReason::Error(why) => write!(f, "error ({why})"),
            other => f.write_str(other.as_str()),
        }
    }
}
