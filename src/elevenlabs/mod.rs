//! ElevenLabs: the REST client (voice cloning, TTS), the Agents WebSocket
//! protocol and the per-call connection task.

pub mod agent;
pub mod rest;
pub mod webhook;
pub mod ws;

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::media::g711::G711;
use crate::media::prompt::Prompt;
use rest::{ApiError, Client, TtsFormat};

/// Renders the greeting text with TTS once, cached on disk under
/// `<data>/tts/<sha256(text, voice, format)>.ulaw` so restarts do not pay for it
/// again. μ-law 8 kHz is what the phone line plays, so no resampling is needed.
/// Gives up (and lets the caller fall back to the greeting file) after `budget`,
/// retries included, so a slow or unreachable API cannot hold up the daemon's start.
pub async fn render_greeting(client: &Client, text: &str, voice_id: &str, data_dir: &Path, budget: Duration) -> Result<Prompt, ApiError> {
    let format = TtsFormat::Ulaw8000;
    let key = {
        let mut h = Sha256::new();
        for part in [text, voice_id, format.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    };
    let path = data_dir.join("tts").join(format!("{key}.ulaw"));
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let deadline = Instant::now() + budget;
            let (r, _) = client.with_retry(deadline, || client.tts(voice_id, text, format, deadline)).await;
            let b = r?;
            if b.is_empty() {
                return Err(ApiError::Body("empty TTS audio".into()));
            }
            if let Some(dir) = path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            if let Err(e) = tokio::fs::write(&path, &b).await {
                tracing::warn!(file = %path.display(), error = %e, "cannot cache the greeting audio");
            }
            b
        }
    };
    let mut pcm = vec![0i16; bytes.len()];
    G711::Ulaw.decode(&bytes, &mut pcm);
    Ok(Prompt::from_pcm_8k(pcm))
}
