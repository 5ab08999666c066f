//! Twilio as a secondary ingress: request signatures, the voice webhooks and
//! their TwiML, and the Media Streams WebSocket, bridged through the same
//! `media::bridge::Bridge` and agent task as SIP calls.

pub mod signature;
pub mod stream;
pub mod twiml;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;
use bytes::Bytes;

use crate::clone::{CloneService, Resolution};
use crate::config::Settings;
use crate::elevenlabs::ws::AgentConfig;
use crate::server::Stats;
use crate::store::CallRow;
use crate::store::writer::RecordSink;

/// What the Twilio handlers share. The HTTP listener builds one and hands it to
/// them as axum sub-state (`FromRef`), so this module does not depend on it.
pub struct TwilioShared {
    pub settings: Settings,
    pub records: RecordSink,
    pub clone: Option<CloneService>,
    pub agent: Option<AgentConfig>,
    /// The SIP side's counters: `limits.max_calls` covers both ingresses.
    pub stats: Arc<Stats>,
    /// The greeting as a μ-law WAV, for Twilio's `<Play>`.
    pub greeting_wav: Bytes,
    /// Played on a stream whose agent failed.
    pub apology: crate::media::prompt::Prompt,
    /// Calls by precall call id, from the inbound webhook to the stream's end.
    pub calls: Mutex<HashMap<String, TwilioCall>>,
    /// Streams bridged right now.
    pub live: AtomicUsize,
}

/// The handlers' handle on [`TwilioShared`] (a newtype, so that the HTTP
/// listener can hand it out as sub-state).
#[derive(Clone)]
pub struct TwilioState(pub Arc<TwilioShared>);

impl std::ops::Deref for TwilioState {
    type Target = TwilioShared;
    fn deref(&self) -> &TwilioShared {
        &self.0
    }
}

/// One Twilio call, from the inbound webhook to the end of its stream.
#[derive(Debug, Clone)]
pub struct TwilioCall {
    pub call_sid: String,
    pub row: CallRow,
    pub started: Instant,
    /// Set when the clone service has decided the voice.
    pub resolution: Option<Resolution>,
}

/// The public base URL Twilio uses for us: `twilio.public_url`, or rebuilt from
/// the Host header (plain HTTP: TLS is terminated in front of precall).
pub fn public_base(settings: &Settings, headers: &HeaderMap) -> String {
    let configured = settings.raw.twilio.public_url.trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

/// `https://x` → `wss://x`, `http://x` → `ws://x`.
pub fn ws_base(http_base: &str) -> String {
    crate::elevenlabs::ws::AgentConfig::ws_base_from_http(http_base)
}

/// Checks `X-Twilio-Signature` for a request to `path_and_query` with form
/// `params` (both key kinds: the Auth Token, or the shared key when the
/// signature-settings header asks for HMAC-SHA256).
pub fn verify(settings: &Settings, headers: &HeaderMap, url: &str, params: &[(String, String)]) -> bool {
    let t = &settings.raw.twilio;
    if t.skip_signature_validation {
        return true;
    }
    let Some(signature) = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let algorithm = signature::Algorithm::from_settings(headers.get("x-twilio-webhooks-signature-settings").and_then(|v| v.to_str().ok()));
    let secret = match algorithm {
        signature::Algorithm::Sha1 => &t.auth_token,
        signature::Algorithm::Sha256 => &t.webhook_signing_key,
    };
    signature::validate(secret, algorithm, url, params, None, signature)
}
