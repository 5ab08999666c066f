//! A local, protocol-faithful stand-in for the ElevenLabs endpoints precall uses.
//! Tests run against it over real HTTP, and the daemon uses it as its offline
//! default when no `ELEVENLABS_API_KEY` is set.
//!
//! It is strict where the real API is: 401 without the right `xi-api-key`, 422 in
//! the list form for a missing `name` or `files`, real multipart parsing, the
//! documented success and error bodies. Knobs let a test choose clone latency and
//! failure modes, and cap voice slots (`voice_limit_reached`). Voices "speak" a
//! tone whose pitch is derived from the voice id, so a test can tell which voice
//! produced audio ([`voice_pitch_hz`]). The Agents WebSocket is in [`agent`].

pub mod agent;

pub use agent::{AGENT_ID, AgentAction, AgentKnobs, ConversationRecord};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::media::g711;

/// What the simulator does with the next voice-add requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Failure {
    #[default]
    None,
    /// 429 with this `detail.status` (`too_many_concurrent_requests`, `system_busy`).
    TooMany(&'static str),
    /// 500 Internal Server Error.
    ServerError,
    /// Never answer.
    Hang,
    /// 200 with `requires_verification: true`.
    RequiresVerification,
}

#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Delay before answering a voice-add request.
    pub clone_latency: Duration,
    pub failure: Failure,
    /// Apply `failure` to this many requests, then succeed (0 = always fail).
    pub fail_times: u32,
    /// Voice slots; past it, `400 voice_limit_reached` (0 = unlimited).
    pub voice_limit: usize,
}

/// One voice-add request as the simulator parsed it, for tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddRequest {
    pub name: Option<String>,
    /// (filename, content type, size) of each `files` part.
    pub files: Vec<(String, String, usize)>,
    pub labels: Option<String>,
    pub description: Option<String>,
    pub remove_background_noise: Option<String>,
    pub other_parts: Vec<String>,
}

/// A voice in the simulated account.
#[derive(Debug, Clone)]
struct SimVoice {
    name: String,
    labels: serde_json::Value,
    created_at_unix: i64,
}

#[derive(Debug, Default)]
struct Inner {
    knobs: Knobs,
    failures_done: u32,
    voices: HashMap<String, SimVoice>,
    requests: VecDeque<AddRequest>,
    deleted: VecDeque<String>,
    next: u64,
    agent: AgentKnobs,
    conversations: VecDeque<ConversationRecord>,
    signatures: VecDeque<String>,
}

/// What the simulator remembers for tests to inspect: the most recent
/// conversations, clone requests and signed URLs. A long-running simulator
/// (the daemon's offline default) must not grow with every call.
const KEEP_CONVERSATIONS: usize = 64;
const KEEP_REQUESTS: usize = 256;

fn bounded_push<T>(q: &mut VecDeque<T>, item: T, keep: usize) {
    while q.len() >= keep {
        q.pop_front();
    }
    q.push_back(item);
}

#[derive(Debug)]
struct SimState {
    api_key: String,
    inner: Mutex<Inner>,
    actions: tokio::sync::broadcast::Sender<AgentAction>,
    addr: Mutex<Option<SocketAddr>>,
}

/// A running simulator.
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<SimState>,
    addr: SocketAddr,
}

impl Simulator {
    /// Binds `listen` (port 0 for any) and serves until the runtime stops.
    pub async fn start(listen: SocketAddr, api_key: &str) -> std::io::Result<Self> {
        let state = Arc::new(SimState {
            api_key: api_key.to_owned(),
            inner: Mutex::new(Inner::default()),
            actions: tokio::sync::broadcast::channel(16).0,
            addr: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1/voices", get(list_voices))
            .route("/v1/voices/add", post(add_voice))
            .route("/v1/voices/{voice_id}", get(voice).delete(delete_voice))
            .route("/v1/text-to-speech/{voice_id}", post(tts))
            .route("/v1/convai/conversation", get(conversation))
            .route("/v1/convai/conversation/get-signed-url", get(signed_url))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        *state.addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
        // Audio frames are small and latency-bound: no Nagle delay (a 40 ms
        // stall per turn on loopback with delayed ACKs, measured).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Simulator { state, addr })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        let mut inner = self.inner();
        inner.knobs = knobs;
        inner.failures_done = 0;
    }

    /// Every voice-add request received so far.
    pub fn requests(&self) -> Vec<AddRequest> {
        self.inner().requests.iter().cloned().collect()
    }

    /// Voices that exist now.
    pub fn voice_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner().voices.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn deleted(&self) -> Vec<String> {
        self.inner().deleted.iter().cloned().collect()
    }

    /// `ws://host:port`, the Agents WebSocket base.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn set_agent_knobs(&self, knobs: AgentKnobs) {
        self.inner().agent = knobs;
    }

    /// The most recent conversations (the last 64), live or over, oldest first.
    pub fn conversations(&self) -> Vec<ConversationRecord> {
        self.inner().conversations.iter().cloned().collect()
    }

    /// Makes every live conversation do `action`; how many received it.
    pub fn agent_do(&self, action: AgentAction) -> usize {
        self.state.actions.send(action).unwrap_or(0)
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimState {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(401 response)` unless the request carries the right `xi-api-key`.
    fn unauthorised(&self, headers: &HeaderMap) -> Option<Response> {
        match headers.get("xi-api-key").and_then(|v| v.to_str().ok()) {
            Some(k) if k == self.api_key => None,
            _ => Some(detail(StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key")),
        }
    }
}

#[derive(Deserialize)]
struct ConversationQuery {
    agent_id: Option<String>,
    conversation_signature: Option<String>,
}

async fn conversation(State(state): State<Arc<SimState>>, Query(q): Query<ConversationQuery>, upgrade: WebSocketUpgrade) -> Response {
    let Some(agent_id) = q.agent_id.filter(|a| !a.is_empty()) else {
        return detail(StatusCode::BAD_REQUEST, "missing_agent_id", "agent_id is required");
    };
    let (refuse, private) = {
        let inner = state.inner();
        (inner.agent.refuse, inner.agent.private)
    };
    if let Some(status) = refuse {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return detail(status, "refused", "the simulator was told to refuse conversations");
    }
    if private {
        let valid = q.conversation_signature.is_some_and(|sig| {
            let mut inner = state.inner();
            let found = inner.signatures.iter().position(|s| *s == sig);
            found.map(|i| inner.signatures.remove(i)).is_some()
        });
        if !valid {
            return detail(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "a valid conversation_signature is required for this agent",
            );
        }
    }
    let actions = state.actions.subscribe();
    upgrade
        .max_message_size(16 << 20)
        .on_upgrade(move |socket| agent::session(socket, state, agent_id, actions))
}

#[derive(Deserialize)]
struct SignedUrlQuery {
    agent_id: Option<String>,
}

async fn signed_url(State(state): State<Arc<SimState>>, headers: HeaderMap, Query(q): Query<SignedUrlQuery>) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    let Some(agent_id) = q.agent_id.filter(|a| !a.is_empty()) else {
        return missing("agent_id");
    };
    let signature = crate::store::records::new_id();
    bounded_push(&mut state.inner().signatures, signature.clone(), KEEP_REQUESTS);
    let addr = state
        .addr
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|a| a.to_string())
        .unwrap_or_default();
    axum::Json(json!({"signed_url": format!("ws://{addr}/v1/convai/conversation?agent_id={agent_id}&conversation_signature={signature}")}))
        .into_response()
}

fn detail(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"detail": {"status": code, "message": message}}))).into_response()
}

fn missing(field: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({"detail": [{"loc": ["body", field], "msg": "Field required", "type": "missing"}]})),
    )
        .into_response()
}

async fn add_voice(State(state): State<Arc<SimState>>, headers: HeaderMap, mut multipart: Multipart) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    let mut req = AddRequest {
        name: None,
        files: Vec::new(),
        labels: None,
        description: None,
        remove_background_noise: None,
        other_parts: Vec::new(),
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return detail(StatusCode::BAD_REQUEST, "invalid_multipart", &e.to_string()),
        };
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let Ok(bytes) = field.bytes().await else {
            return detail(StatusCode::BAD_REQUEST, "invalid_multipart", "unreadable part");
        };
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        match name.as_str() {
            "name" => req.name = Some(text()),
            "files" => {
                let Some(filename) = filename else {
                    return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"detail": [{"loc": ["body", "files", 0], "msg": "Expected UploadFile, received: <class 'str'>", "type": "value_error"}]})))
                        .into_response();
                };
                req.files.push((filename, content_type.unwrap_or_default(), bytes.len()));
            }
            "labels" => req.labels = Some(text()),
            "description" => req.description = Some(text()),
            "remove_background_noise" => req.remove_background_noise = Some(text()),
            other => req.other_parts.push(other.to_owned()),
        }
    }
    bounded_push(&mut state.inner().requests, req.clone(), KEEP_REQUESTS);
    let Some(name) = req.name.filter(|n| !n.is_empty()) else {
        return missing("name");
    };
    if req.files.is_empty() {
        return missing("files");
    }
    if let Some(labels) = &req.labels
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(labels).is_err()
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({"detail": [{"loc": ["body", "labels"], "msg": "Labels must be a JSON object string", "type": "value_error"}]}),
            ),
        )
            .into_response();
    }
    if let Some(v) = &req.remove_background_noise
        && v != "true"
        && v != "false"
    {
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"detail": [{"loc": ["body", "remove_background_noise"], "msg": "Input should be a valid boolean", "type": "bool_parsing"}]})))
                .into_response();
    }
    let (latency, failure) = {
        let mut inner = state.inner();
        let k = inner.knobs.clone();
        let failing = k.failure != Failure::None && (k.fail_times == 0 || inner.failures_done < k.fail_times);
        if failing {
            inner.failures_done += 1;
        }
        (k.clone_latency, if failing { k.failure } else { Failure::None })
    };
    let labels = req
        .labels
        .as_deref()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| json!({}));
    // The work runs to its end whether or not the client is still there, as a
    // real server's does: a client that gives up on a slow clone leaves a
    // voice behind in the account (exactly the leak precall must clean up).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        let _ = tx.send(finish_add_voice(&state, failure, name, labels).await);
    });
    rx.await
        .unwrap_or_else(|_| (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response())
}

async fn finish_add_voice(state: &SimState, failure: Failure, name: String, labels: serde_json::Value) -> Response {
    match failure {
        Failure::None | Failure::RequiresVerification => {}
        Failure::TooMany(code) => return detail(StatusCode::TOO_MANY_REQUESTS, code, "Too many concurrent requests"),
        Failure::ServerError => return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        Failure::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let mut inner = state.inner();
    if inner.knobs.voice_limit > 0 && inner.voices.len() >= inner.knobs.voice_limit {
        let msg = format!(
            "You have reached your maximum amount of custom voices ({} / {}).",
            inner.voices.len(),
            inner.knobs.voice_limit
        );
        return detail(StatusCode::BAD_REQUEST, "voice_limit_reached", &msg);
    }
    inner.next += 1;
    let voice_id = format!("sim{:017}", inner.next);
    let created_at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    inner.voices.insert(
        voice_id.clone(),
        SimVoice {
            name,
            labels,
            created_at_unix,
        },
    );
    let requires_verification = failure == Failure::RequiresVerification;
    axum::Json(json!({"voice_id": voice_id, "requires_verification": requires_verification})).into_response()
}

fn voice_json(voice_id: &str, v: &SimVoice) -> serde_json::Value {
    json!({"voice_id": voice_id, "name": v.name, "category": "cloned", "labels": v.labels, "samples": [], "created_at_unix": v.created_at_unix})
}

/// `GET /v1/voices`: the account's voices, with their labels and creation times.
async fn list_voices(State(state): State<Arc<SimState>>, headers: HeaderMap) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    let inner = state.inner();
    let mut voices: Vec<_> = inner.voices.iter().map(|(id, v)| voice_json(id, v)).collect();
    voices.sort_by(|a, b| a["voice_id"].as_str().cmp(&b["voice_id"].as_str()));
    axum::Json(json!({ "voices": voices })).into_response()
}

async fn voice(State(state): State<Arc<SimState>>, headers: HeaderMap, Path(voice_id): Path<String>) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    match state.inner().voices.get(&voice_id) {
        Some(v) => axum::Json(voice_json(&voice_id, v)).into_response(),
        None => detail(
            StatusCode::BAD_REQUEST,
            "voice_not_found",
            "A voice with the voice_id was not found.",
        ),
    }
}

async fn delete_voice(State(state): State<Arc<SimState>>, headers: HeaderMap, Path(voice_id): Path<String>) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    let mut inner = state.inner();
    if inner.voices.remove(&voice_id).is_none() {
        return detail(
            StatusCode::BAD_REQUEST,
            "voice_not_found",
            "A voice with the voice_id was not found.",
        );
    }
    bounded_push(&mut inner.deleted, voice_id, KEEP_REQUESTS);
    axum::Json(json!({"status": "ok"})).into_response()
}

#[derive(Deserialize)]
struct TtsQuery {
    output_format: Option<String>,
}

#[derive(Deserialize)]
struct TtsBody {
    text: Option<String>,
}

async fn tts(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    Path(voice_id): Path<String>,
    Query(q): Query<TtsQuery>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = state.unauthorised(&headers) {
        return r;
    }
    let text = serde_json::from_slice::<TtsBody>(&body)
        .ok()
        .and_then(|b| b.text)
        .unwrap_or_default();
    if text.is_empty() {
        return missing("text");
    }
    let format = q.output_format.unwrap_or_else(|| "mp3_44100_128".into());
    let seconds = (text.len() as f64 * 0.06).clamp(0.5, 10.0);
    match format.as_str() {
        "ulaw_8000" => {
            let pcm = speak(&voice_id, 8000, seconds);
            let bytes: Vec<u8> = pcm.iter().map(|s| g711::ulaw_encode(*s)).collect();
            ([("content-type", "audio/basic")], bytes).into_response()
        }
        "pcm_16000" => {
            let pcm = speak(&voice_id, 16000, seconds);
            let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
            ([("content-type", "audio/pcm")], bytes).into_response()
        }
        other => detail(
            StatusCode::BAD_REQUEST,
            "invalid_output_format",
            &format!("the simulator renders ulaw_8000 and pcm_16000, not {other}"),
        ),
    }
}

/// The pitch a voice "speaks" at: 200–800 Hz from a hash of its id.
pub fn voice_pitch_hz(voice_id: &str) -> f64 {
    let h = voice_id
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    200.0 + (h % 600) as f64
}

/// A voice's tone at `rate`, with syllable-like amplitude pulses.
pub fn speak(voice_id: &str, rate: u32, seconds: f64) -> Vec<i16> {
    let hz = voice_pitch_hz(voice_id);
    let n = (f64::from(rate) * seconds) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let envelope = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 4.0 * t).sin().abs();
            (9000.0 * envelope * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}
