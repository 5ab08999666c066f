//! precall: a SIP/RTP voice daemon that answers at once with a paced greeting,
//! clones the caller's voice and bridges the call to an ElevenLabs agent.
//!
//! The logic lives in sans-IO state machines (`sip::endpoint`, `call`, `media`)
//! driven by thin tokio tasks (`sip::transport`, `server`). See
//! `docs/ARCHITECTURE.md`.

pub mod accept;
pub mod call;
pub mod caller_id;
pub mod callers;
pub mod clone;
pub mod config;
pub mod daemon;
pub mod deadline;
pub mod elevenlabs;
pub mod fdlimit;
pub mod http;
pub mod media;
pub mod sim;
pub mod sip;
pub mod store;
pub mod systemd;
pub mod twilio;

/// The daemon's runtime under its former name.
pub use daemon as server;
