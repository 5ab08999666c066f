//! `POST /webhook/elevenlabs/postcall`: the ElevenLabs post-call webhook.
//!
//! The body is authenticated while it arrives (a `post_call_audio` body can be
//! tens of megabytes): up to 1 MiB in memory, the rest in a temporary file under
//! `data.dir/webhooks/tmp/` that is deleted however the request ends, capped at
//! `http.max_body_bytes` each and twice that across all unsigned deliveries.
//! Forged, stale or malformed signatures get 401 and leave nothing behind; a
//! replay of a delivery already accepted gets 409. A valid transcription lands on
//! the `call_log` row with that `conversation_id`; every delivery is also kept in
//! `webhook_events`, so a conversation precall does not know is stored, not
//! dropped. Audio is decoded to `data.dir/post_call_audio/<conversation>.mp3`.
//! If the database is down the authenticated body is kept in `data.dir/webhooks/failed/`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{AppState, error};
use crate::elevenlabs::webhook::Verifier;
use crate::store::PostCallResult;

/// Unsigned bytes kept in memory per delivery; beyond, they go to a temporary
/// file that is removed whatever happens to the request.
const IN_MEMORY: usize = 1 << 20;

pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let ctx = &state.ctx;
    let Some(header) = headers.get("elevenlabs-signature").and_then(|v| v.to_str().ok()) else {
        tracing::warn!("post-call webhook without ElevenLabs-Signature refused");
        return error(StatusCode::UNAUTHORIZED, "missing ElevenLabs-Signature");
    };
    let now = crate::store::now_ms() / 1000;
    let tolerance = i64::try_from(ctx.settings.raw.elevenlabs.webhook_tolerance_seconds).unwrap_or(300);
    let mut verifier = match Verifier::new(&ctx.settings.raw.elevenlabs.webhook_secret, header, now, tolerance) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "post-call webhook refused");
            return error(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    let spool = ctx.settings.data_dir.join("webhooks").join("tmp");
    let received = match receive_unverified(&state, &spool, body, &mut verifier).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(e) = verifier.finish() {
        tracing::warn!(error = %e, "post-call webhook with a bad signature refused");
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    // Signed and fresh; now refuse a replay of the very same delivery.
    match ctx.store.accept_webhook_delivery(header, tolerance.saturating_mul(2000)).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!("post-call webhook replayed: refused");
            metrics::counter!("precall_webhook_replays_total").increment(1);
            return error(StatusCode::CONFLICT, "this delivery was already accepted");
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the webhook for a replay (database); accepting it"),
    }
    let raw = match received.into_bytes().await {
        Ok(raw) => raw,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the webhook back: {e}")),
    };
    if let Err(why) = check_conversation_id(&raw) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    match handle(&state, &raw).await {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(Kept(why)) => {
            // Keep the (authenticated) delivery for an operator to replay rather than lose it.
            let failed = ctx.settings.data_dir.join("webhooks").join("failed");
            let kept = failed.join(format!("{}.json", crate::store::records::new_id()));
            let saved = match tokio::fs::create_dir_all(&failed).await {
                Ok(()) => tokio::fs::write(&kept, &raw).await,
                Err(e) => Err(e),
            };
            match saved {
                Ok(()) => tracing::error!(error = %why, file = %kept.display(), "post-call webhook kept on disk: could not store it"),
                Err(e) => tracing::error!(error = %why, write_error = %e, "post-call webhook could not be stored nor kept"),
            }
            (StatusCode::OK, axum::Json(json!({"status": "kept", "reason": why}))).into_response()
        }
    }
}

/// A delivery's bytes before its signature is checked: in memory, or in a
/// temporary file (deleted on drop) past [`IN_MEMORY`].
enum Received {
    Memory(Vec<u8>),
    Spilled(tempfile::NamedTempFile),
}

impl Received {
    async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        match self {
            Received::Memory(v) => Ok(v),
            Received::Spilled(f) => tokio::fs::read(f.path()).await,
        }
    }
}

/// Bytes of unsigned deliveries held at once, across all requests.
struct InFlight<'a> {
    total: &'a AtomicUsize,
    mine: usize,
}

impl InFlight<'_> {
    fn add(&mut self, n: usize, budget: usize) -> bool {
        let before = self.total.fetch_add(n, Ordering::Relaxed);
        self.mine += n;
        before.saturating_add(n) <= budget
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::Relaxed);
    }
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once per refused request"
)]
async fn receive_unverified(state: &AppState, spool: &Path, body: Body, verifier: &mut Verifier) -> Result<Received, Response> {
    let cap = state.ctx.settings.raw.http.max_body_bytes;
    // All unsigned deliveries together may hold at most two bodies' worth.
    let budget = cap.saturating_mul(2);
    let mut inflight = InFlight {
        total: &state.webhook_inflight,
        mine: 0,
    };
    let mut memory = Vec::new();
    let mut file: Option<(tempfile::NamedTempFile, tokio::fs::File)> = None;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    let io = |e: std::io::Error| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the webhook: {e}"));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total > cap {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {cap} bytes")));
        }
        if !inflight.add(chunk.len(), budget) {
            metrics::counter!("precall_webhook_refused_total", "why" => "in_flight").increment(1);
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhook bytes in flight; retry later",
            ));
        }
        verifier.update(&chunk);
        match &mut file {
            Some((_, f)) => f.write_all(&chunk).await.map_err(io)?,
            None if memory.len() + chunk.len() <= IN_MEMORY => memory.extend_from_slice(&chunk),
            None => {
                tokio::fs::create_dir_all(spool).await.map_err(io)?;
                let temp = tempfile::NamedTempFile::new_in(spool).map_err(io)?;
                let mut f = tokio::fs::File::from_std(temp.reopen().map_err(io)?);
                f.write_all(&memory).await.map_err(io)?;
                f.write_all(&chunk).await.map_err(io)?;
                memory = Vec::new();
                file = Some((temp, f));
            }
        }
    }
    match file {
        Some((temp, mut f)) => {
            f.flush().await.map_err(io)?;
            Ok(Received::Spilled(temp))
        }
        None => Ok(Received::Memory(memory)),
    }
}

struct Kept(String);

/// Longest `conversation_id` accepted (ElevenLabs' are about 30 characters).
const MAX_CONVERSATION_ID: usize = 128;

/// A `conversation_id`, when present, is a non-empty token of letters, digits,
/// `_` and `-`: it becomes a file name and a database key.
fn check_conversation_id(raw: &[u8]) -> Result<(), &'static str> {
    let Ok(event) = serde_json::from_slice::<Value>(raw) else {
        return Ok(());
    };
    match &event["data"]["conversation_id"] {
        Value::Null => Ok(()),
        Value::String(id)
            if !id.is_empty()
                && id.len() <= MAX_CONVERSATION_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(())
        }
        _ => Err("conversation_id must be 1-128 letters, digits, '_' or '-'"),
    }
}

async fn handle(state: &AppState, raw: &[u8]) -> Result<Value, Kept> {
    let ctx = &state.ctx;
    let Ok(event) = serde_json::from_slice::<Value>(raw) else {
        return Ok(json!({"status": "ignored", "reason": "not JSON"}));
    };
    let kind = event["type"].as_str().unwrap_or("unknown").to_owned();
    let data = &event["data"];
    let conversation = data["conversation_id"].as_str().map(str::to_owned);
    let store_err = |e: crate::store::StoreError| Kept(format!("database: {e}"));
    match kind.as_str() {
        "post_call_transcription" => {
            let transcript = data["transcript"]
                .as_array()
                .map(|turns| {
                    turns
                        .iter()
                        .filter_map(|t| Some(format!("{}: {}", t["role"].as_str().unwrap_or("?"), t["message"].as_str()?)))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            let matched = match &conversation {
                Some(id) => ctx
                    .store
                    .record_post_call(&PostCallResult {
                        conversation_id: id,
                        transcript: &transcript,
                        summary: data["analysis"]["transcript_summary"].as_str(),
                        call_successful: data["analysis"]["call_successful"].as_str(),
                        duration_secs: data["metadata"]["call_duration_secs"].as_i64(),
                    })
                    .await
                    .map_err(store_err)?,
                None => false,
            };
            let payload = String::from_utf8_lossy(raw);
            ctx.store
                .insert_webhook_event(&kind, conversation.as_deref(), matched, &payload)
                .await
                .map_err(store_err)?;
            tracing::info!(conversation = ?conversation, matched, "post-call transcription stored");
            Ok(json!({"status": "ok", "matched": matched}))
        }
        "post_call_audio" => {
            let id = conversation.clone().unwrap_or_else(|| "unknown".into());
            let safe: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
            let audio = data["full_audio"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(audio)
                .map_err(|e| Kept(format!("full_audio is not base64: {e}")))?;
            let dir = ctx.settings.data_dir.join("post_call_audio");
            tokio::fs::create_dir_all(&dir).await.map_err(|e| Kept(e.to_string()))?;
            let file = dir.join(format!("{safe}.mp3"));
            tokio::fs::write(&file, &bytes).await.map_err(|e| Kept(e.to_string()))?;
            let payload = json!({"file": file, "bytes": bytes.len()}).to_string();
            ctx.store
                .insert_webhook_event(&kind, conversation.as_deref(), false, &payload)
                .await
                .map_err(store_err)?;
            tracing::info!(conversation = %id, bytes = bytes.len(), "post-call audio stored");
            Ok(json!({"status": "ok", "bytes": bytes.len()}))
        }
        _ => {
            let payload = String::from_utf8_lossy(raw);
            ctx.store
                .insert_webhook_event(&kind, conversation.as_deref(), false, &payload)
                .await
                .map_err(store_err)?;
            Ok(json!({"status": "ok"}))
        }
    }
}
