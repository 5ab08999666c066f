//! `POST /webhook/elevenlabs/postcall`: the ElevenLabs post-call webhook.
//!
//! The body is streamed to a file under `data.dir/webhooks/` while its
//! `ElevenLabs-Signature` is computed (a `post_call_audio` body can be tens of
//! megabytes), capped at `http.max_body_bytes`. Forged, stale or malformed
//! signatures get 401 and leave nothing behind. A valid transcription lands on
//! the `call_log` row with that `conversation_id`; every delivery is also kept in
//! `webhook_events`, so a conversation precall does not know is stored, not
//! dropped. Audio is decoded to `data.dir/post_call_audio/<conversation>.mp3`.
//! If the database is down the raw body stays in `data.dir/webhooks/failed/`.

use std::path::{Path, PathBuf};

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

pub async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let ctx = &state.ctx;
    let Some(header) = headers.get("elevenlabs-signature").and_then(|v| v.to_str().ok()) else {
        tracing::warn!("post-call webhook without ElevenLabs-Signature refused");
        return error(StatusCode::UNAUTHORIZED, "missing ElevenLabs-Signature");
    };
    let now = crate::store::now_ms() / 1000;
    let mut verifier = match Verifier::new(&ctx.settings.raw.elevenlabs.webhook_secret, header, now) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "post-call webhook refused");
            return error(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    let dir = ctx.settings.data_dir.join("webhooks");
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the webhook: {e}"));
    }
    let path = dir.join(format!("incoming-{}.json", crate::store::records::new_id()));
    let result = receive_to(&path, body, &mut verifier, ctx.settings.raw.http.max_body_bytes).await;
    if let Err(resp) = result {
        let _ = tokio::fs::remove_file(&path).await;
        return resp;
    }
    if let Err(e) = verifier.finish() {
        let _ = tokio::fs::remove_file(&path).await;
        tracing::warn!(error = %e, "post-call webhook with a bad signature refused");
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let resp = match handle(&state, &path).await {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(Kept(why)) => {
            // Keep the delivery for an operator to replay rather than lose it.
            let failed = dir.join("failed");
            let _ = tokio::fs::create_dir_all(&failed).await;
            let kept = failed.join(path.file_name().unwrap_or_default());
            let _ = tokio::fs::rename(&path, &kept).await;
            tracing::error!(error = %why, file = %kept.display(), "post-call webhook kept on disk: could not store it");
            (StatusCode::OK, axum::Json(json!({"status": "kept", "reason": why}))).into_response()
        }
    };
    let _ = tokio::fs::remove_file(&path).await;
    resp
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once per refused request"
)]
async fn receive_to(path: &Path, body: Body, verifier: &mut Verifier, cap: usize) -> Result<(), Response> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the webhook: {e}")))?;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
        total += chunk.len();
        if total > cap {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {cap} bytes")));
        }
        verifier.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the webhook: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the webhook: {e}")))?;
    Ok(())
}

struct Kept(String);

async fn handle(state: &AppState, path: &PathBuf) -> Result<Value, Kept> {
    let ctx = &state.ctx;
    let raw = tokio::fs::read(path).await.map_err(|e| Kept(e.to_string()))?;
    let Ok(event) = serde_json::from_slice::<Value>(&raw) else {
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
            let payload = String::from_utf8_lossy(&raw);
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
            let payload = String::from_utf8_lossy(&raw);
            ctx.store
                .insert_webhook_event(&kind, conversation.as_deref(), false, &payload)
                .await
                .map_err(store_err)?;
            Ok(json!({"status": "ok"}))
        }
    }
}
