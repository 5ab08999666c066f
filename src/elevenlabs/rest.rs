//! The ElevenLabs REST calls precall makes: Instant Voice Cloning (add, get,
//! delete a voice) and text-to-speech for the greeting. Wire format from
//! `docs/protocols.md` §1–2 and the SDK-captured request R1 in `test-vectors.md`.
//!
//! Every call goes through one client-wide concurrency limit (ElevenLabs limits
//! concurrent requests per subscription) and [`Client::with_retry`], which retries
//! 429s, 5xx and connection errors with exponential backoff and jitter, never past
//! the caller's deadline, and never retries 400/401/422.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Semaphore;

/// What went wrong talking to ElevenLabs.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// A non-2xx answer with the `detail.status` code when the body had one.
    #[error("HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Http {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The 422 list form: what the request got wrong.
    #[error("HTTP 422 validation error: {0}")]
    Validation(String),
    #[error("connection error: {0}")]
    Transport(String),
    #[error("no answer before the deadline")]
    Timeout,
    #[error("the cloned voice requires verification and cannot be used on a call")]
    RequiresVerification,
    #[error("unexpected response body: {0}")]
    Body(String),
}

impl ApiError {
    /// 429 (`too_many_concurrent_requests`, `system_busy`), 5xx and connection
    /// errors may succeed later; 4xx answers will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Http { status, .. } => *status == 429 || *status >= 500,
            ApiError::Transport(_) => true,
            _ => false,
        }
    }

    /// The HTTP status, for `voice_clone_log.http_status`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } => Some(*status),
            ApiError::Validation(_) => Some(422),
            _ => None,
        }
    }

    /// A short reason for `clone_failed_events.reason`.
    pub fn reason(&self) -> String {
        match self {
            ApiError::Http { code: Some(code), .. } => code.clone(),
            ApiError::Http { status, .. } => format!("http_{status}"),
            ApiError::Validation(_) => "http_422".into(),
            ApiError::Transport(_) => "connection".into(),
            ApiError::Timeout => "timeout".into(),
            ApiError::RequiresVerification => "requires_verification".into(),
            ApiError::Body(_) => "bad_response".into(),
        }
    }
}

/// One sample file for `POST /v1/voices/add`.
#[derive(Debug, Clone)]
pub struct SampleFile {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The voice-add request.
#[derive(Debug, Clone)]
pub struct AddVoice {
    pub name: String,
    pub files: Vec<SampleFile>,
    pub description: Option<String>,
    /// A JSON object; omitted from the request when empty.
    pub labels: serde_json::Value,
    pub remove_background_noise: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VoiceCreated {
    pub voice_id: String,
    #[serde(default)]
    pub requires_verification: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Voice {
    pub voice_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// Free-form labels; precall marks its own clones with [`CREATED_BY_LABEL`].
    #[serde(default)]
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub created_at_unix: Option<i64>,
}

/// The label precall puts on every voice it creates (`{"created_by": "precall"}`),
/// so that the orphan sweeper can tell its clones from the account's other voices.
pub const CREATED_BY_LABEL: (&str, &str) = ("created_by", "precall");

impl Voice {
    /// Made by precall (carries [`CREATED_BY_LABEL`]).
    pub fn is_precalls(&self) -> bool {
        self.labels
            .as_ref()
            .and_then(|l| l.get(CREATED_BY_LABEL.0))
            .and_then(|v| v.as_str())
            .is_some_and(|v| v == CREATED_BY_LABEL.1)
    }
}

#[derive(Debug, Clone, Deserialize)]
struct VoiceList {
    #[serde(default)]
    voices: Vec<Voice>,
}

/// TTS output formats precall asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsFormat {
    Ulaw8000,
    Pcm16000,
}

impl TtsFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TtsFormat::Ulaw8000 => "ulaw_8000",
            TtsFormat::Pcm16000 => "pcm_16000",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub api_key: String,
    pub max_concurrent_requests: usize,
    /// Upper bound for one HTTP request.
    pub request_timeout: Duration,
}

/// The REST client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
    limit: Arc<Semaphore>,
    request_timeout: Duration,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("precall/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base: config.base_url.trim_end_matches('/').to_owned(),
            key: config.api_key,
            limit: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            request_timeout: config.request_timeout,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/voices/add` (one attempt), allowed to run until `deadline`
    /// however long that is: a clone can take ElevenLabs a minute, and a request
    /// given up on creates the voice anyway (only without telling us its id).
    pub async fn add_voice(&self, req: &AddVoice, deadline: Instant) -> Result<VoiceCreated, ApiError> {
        let mut form = Form::new().text("name", req.name.clone());
        for f in &req.files {
            let part = Part::bytes(f.bytes.clone())
                .file_name(f.filename.clone())
                .mime_str(&f.content_type)
                .map_err(|e| ApiError::Body(format!("content type {}: {e}", f.content_type)))?;
            form = form.part("files", part);
        }
        if let Some(d) = &req.description {
            form = form.text("description", d.clone());
        }
        if req.labels.as_object().is_some_and(|o| !o.is_empty()) {
            form = form.text("labels", req.labels.to_string());
        }
        form = form.text(
            "remove_background_noise",
            if req.remove_background_noise { "true" } else { "false" },
        );
        let request = self
            .http
            .post(format!("{}/v1/voices/add", self.base))
            .header("xi-api-key", &self.key)
            .multipart(form);
        let body = self.send_until(request, deadline).await?;
        let created: VoiceCreated = serde_json::from_slice(&body).map_err(|e| ApiError::Body(e.to_string()))?;
        if created.requires_verification {
            return Err(ApiError::RequiresVerification);
        }
        Ok(created)
    }

    /// `GET /v1/voices/{id}`.
    pub async fn voice(&self, voice_id: &str, deadline: Instant) -> Result<Voice, ApiError> {
        let request = self
            .http
            .get(format!("{}/v1/voices/{voice_id}", self.base))
            .header("xi-api-key", &self.key);
        let body = self.send(request, deadline).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Body(e.to_string()))
    }

    /// `GET /v1/voices`: the account's voices (premade and its own).
    pub async fn list_voices(&self, deadline: Instant) -> Result<Vec<Voice>, ApiError> {
        let request = self.http.get(format!("{}/v1/voices", self.base)).header("xi-api-key", &self.key);
        let body = self.send(request, deadline).await?;
        serde_json::from_slice::<VoiceList>(&body)
            .map(|l| l.voices)
            .map_err(|e| ApiError::Body(e.to_string()))
    }

    /// `GET /v1/convai/conversation/get-signed-url`: a single-session WebSocket
    /// URL for a private agent (valid for 15 minutes).
    pub async fn signed_url(&self, agent_id: &str, deadline: Instant) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        struct Signed {
            signed_url: String,
        }
        let request = self
            .http
            .get(format!("{}/v1/convai/conversation/get-signed-url", self.base))
            .query(&[("agent_id", agent_id)])
            .header("xi-api-key", &self.key);
        let body = self.send(request, deadline).await?;
        serde_json::from_slice::<Signed>(&body)
            .map(|s| s.signed_url)
            .map_err(|e| ApiError::Body(e.to_string()))
    }

    /// `DELETE /v1/voices/{id}`.
    pub async fn delete_voice(&self, voice_id: &str, deadline: Instant) -> Result<(), ApiError> {
        let request = self
            .http
            .delete(format!("{}/v1/voices/{voice_id}", self.base))
            .header("xi-api-key", &self.key);
        self.send(request, deadline).await.map(|_| ())
    }

    /// `POST /v1/text-to-speech/{voice_id}?output_format=…`: raw audio bytes.
    pub async fn tts(&self, voice_id: &str, text: &str, format: TtsFormat, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        let request = self
            .http
            .post(format!(
                "{}/v1/text-to-speech/{voice_id}?output_format={}",
                self.base,
                format.as_str()
            ))
            .header("xi-api-key", &self.key)
            .json(&serde_json::json!({ "text": text }));
        self.send(request, deadline).await
    }

    /// Runs `op` until it succeeds, fails for good, or the next attempt could not
    /// finish before `deadline`. Backoff: 250 ms doubling to 4 s, with ±50 % jitter.
    pub async fn with_retry<T, F, Fut>(&self, deadline: Instant, mut op: F) -> (Result<T, ApiError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = Duration::from_millis(250);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match op().await {
                Ok(v) => return (Ok(v), attempts),
                Err(e) if e.is_retryable() => {
                    let jitter = rand::rng().random_range(0.5..1.5);
                    let wait = backoff.mul_f64(jitter);
                    if Instant::now() + wait >= deadline {
                        return (Err(e), attempts);
                    }
                    tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "ElevenLabs request failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                }
                Err(e) => return (Err(e), attempts),
            }
        }
    }

    /// One request, capped by `deadline` and `elevenlabs.request_timeout_seconds`.
    async fn send(&self, request: reqwest::RequestBuilder, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        let capped = crate::deadline::after(Instant::now(), self.request_timeout).min(deadline);
        self.send_until(request, capped).await
    }

    /// One request, capped by `deadline` only.
    async fn send_until(&self, request: reqwest::RequestBuilder, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        let timeout = deadline.checked_duration_since(Instant::now()).ok_or(ApiError::Timeout)?;
        let work = async {
            let _permit = self
                .limit
                .acquire()
                .await
                .map_err(|_| ApiError::Transport("client closed".into()))?;
            let response = request.send().await.map_err(|e| ApiError::Transport(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| ApiError::Transport(e.to_string()))?;
            if (200..300).contains(&status) {
                return Ok(body.to_vec());
            }
            Err(parse_error(status, &body))
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(Err(ApiError::Timeout))
    }
}

/// Reads both error body shapes (`detail.status` object and the 422 list).
pub fn parse_error(status: u16, body: &[u8]) -> ApiError {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let detail = &json["detail"];
    if let Some(list) = detail.as_array() {
        let msgs: Vec<String> = list
            .iter()
            .map(|d| {
                let loc: Vec<String> = d["loc"]
                    .as_array()
                    .map(|l| l.iter().map(|x| x.to_string().trim_matches('"').to_owned()).collect())
                    .unwrap_or_default();
                format!("{}: {}", loc.join("."), d["msg"].as_str().unwrap_or("invalid"))
            })
            .collect();
        return ApiError::Validation(msgs.join("; "));
    }
    let code = detail["status"].as_str().map(str::to_owned);
    let message = detail["message"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| detail.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    ApiError::Http { status, code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_and_retry_policy() {
        let e = parse_error(429, br#"{"detail":{"status":"system_busy","message":"busy"}}"#);
        assert_eq!(
            e,
            ApiError::Http {
                status: 429,
                code: Some("system_busy".into()),
                message: "busy".into()
            }
        );
        assert!(e.is_retryable());
        assert_eq!(e.reason(), "system_busy");
        let e = parse_error(
            422,
            br#"{"detail":[{"loc":["body","name"],"msg":"field required","type":"missing"}]}"#,
        );
        assert_eq!(e, ApiError::Validation("body.name: field required".into()));
        assert!(!e.is_retryable());
        assert_eq!(e.status(), Some(422));
        let e = parse_error(401, br#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#);
        assert!(!e.is_retryable());
        assert!(parse_error(503, b"<html>bad gateway</html>").is_retryable());
        assert_eq!(parse_error(500, b"oops").reason(), "http_500");
        assert!(ApiError::Transport("reset".into()).is_retryable());
        assert!(!ApiError::RequiresVerification.is_retryable());
    }
}
