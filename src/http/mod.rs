//! The embedded HTTP listener (`http.listen`, default `0.0.0.0:3006`): Twilio
//! webhooks and Media Streams, the ElevenLabs post-call webhook, health,
//! Prometheus metrics and the admin API. axum, one router; the handlers are thin
//! and reuse the call machinery (clone service, agent bridge, store).
//!
//! The source allowlist (`http.allow_cidrs`) guards the webhooks and the admin
//! API; `/health` and `/metrics` stay reachable for load balancers and scrapers.

pub mod admin;
pub mod health;
pub mod postcall;
pub mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::clone::CloneService;
use crate::config::Settings;
use crate::elevenlabs::ws::AgentConfig;
use crate::media::prompt::Prompt;
use crate::server::Stats;
use crate::store::Store;
use crate::store::writer::RecordSink;
use crate::twilio::{self, TwilioShared, TwilioState};

/// Everything the handlers share.
pub struct HttpContext {
    pub settings: Settings,
    pub store: Store,
    pub records: RecordSink,
    pub clone: Option<CloneService>,
    pub agent: Option<AgentConfig>,
    /// The SIP side's counters (live calls, draining).
    pub stats: Arc<Stats>,
    /// `simulator` or `elevenlabs`, for `/health`.
    pub agent_backend: &'static str,
    /// The greeting as a μ-law WAV, for Twilio's `<Play>`.
    pub greeting_wav: Bytes,
    /// Played on a Twilio stream whose agent failed.
    pub apology: crate::media::prompt::Prompt,
}

/// The handlers' shared state.
pub struct Shared {
    pub(crate) ctx: HttpContext,
    pub(crate) metrics: PrometheusHandle,
    /// The Twilio ingress's own state (its calls, its live streams).
    pub(crate) twilio: TwilioState,
    /// What `/health` reports, refreshed in the background.
    pub(crate) probe: health::Probe,
    pub(crate) admin_auth: admin::AuthLimiter,
    /// Unsigned post-call webhook bytes held right now (bounded).
    pub(crate) webhook_inflight: AtomicUsize,
}

pub type AppState = Arc<Shared>;

impl axum::extract::FromRef<AppState> for TwilioState {
    fn from_ref(state: &AppState) -> TwilioState {
        state.twilio.clone()
    }
}

/// The process-wide Prometheus recorder (installed once; tests start several daemons).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
                // Per-call MOS: the bands operators use (bad < 3.1 < poor < 3.6 <
                // fair < 4.0 < good < 4.3 < best).
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full("precall_call_mos".into()),
                        &[1.0, 2.0, 2.6, 3.1, 3.6, 4.0, 4.3, 4.5],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application): keep ours local then.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// μ-law WAV (format 7) of a prompt: what Twilio's `<Play>` fetches.
pub fn ulaw_wav(prompt: &Prompt) -> Bytes {
    let data: Vec<u8> = prompt.pcm().iter().map(|&s| crate::media::g711::ulaw_encode(s)).collect();
    let mut w = Vec::with_capacity(58 + data.len());
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(50 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&18u32.to_le_bytes());
    w.extend_from_slice(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&8000u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8u16.to_le_bytes());
    w.extend_from_slice(&0u16.to_le_bytes());
    w.extend_from_slice(b"fact");
    w.extend_from_slice(&4u32.to_le_bytes());
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    Bytes::from(w)
}

/// A running listener.
pub struct HttpHandle {
    pub addr: SocketAddr,
}

/// Binds `listen` and serves until `shutdown` turns true.
pub async fn start(ctx: HttpContext, listen: SocketAddr, shutdown: watch::Receiver<bool>) -> std::io::Result<HttpHandle> {
    if ctx.settings.raw.twilio.skip_signature_validation {
        tracing::warn!("SKIP_WEBHOOK_SIGNATURE_VALIDATION is on: Twilio webhooks are NOT authenticated. Never run like this in production");
    }
    let max_body = ctx.settings.raw.http.max_body_bytes;
    let twilio_state = TwilioState(Arc::new(TwilioShared {
        settings: ctx.settings.clone(),
        records: ctx.records.clone(),
        clone: ctx.clone.clone(),
        agent: ctx.agent.clone(),
        stats: ctx.stats.clone(),
        greeting_wav: ctx.greeting_wav.clone(),
        apology: ctx.apology.clone(),
        calls: Mutex::new(HashMap::new()),
        live: AtomicUsize::new(0),
    }));
    let state: AppState = Arc::new(Shared {
        ctx,
        metrics: metrics_handle(),
        twilio: twilio_state,
        probe: health::Probe::default(),
        admin_auth: admin::AuthLimiter::default(),
        webhook_inflight: AtomicUsize::new(0),
    });
    let guarded = Router::new()
        .route("/webhooks/inbound", post(twilio::webhooks::inbound))
        .route("/webhooks/status-callback", post(twilio::webhooks::status_callback))
        .route("/twilio/media", get(twilio::stream::upgrade))
        .route("/media/greeting.wav", get(twilio::webhooks::greeting_wav))
        .route("/webhook/elevenlabs/postcall", post(postcall::receive))
        .merge(
            Router::new()
                .route("/api/v1/cache/{caller_id}", delete(admin::invalidate_cache))
                .route("/api/v1/statistics", get(admin::statistics))
                .route(
                    "/api/v1/callers/{caller_id}",
                    get(admin::get_caller).put(admin::put_caller).delete(admin::delete_caller),
                )
                .layer(middleware::from_fn_with_state(state.clone(), admin::require_key)),
        )
        .layer(middleware::from_fn_with_state(state.clone(), allowlist));
    let app = Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .merge(guarded)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(observe))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let h = &state.ctx.settings.raw.http;
    let reserve = crate::fdlimit::reserved(
        state.ctx.settings.raw.limits.max_calls,
        state.ctx.settings.raw.sip.max_tcp_connections,
    );
    let max_connections = crate::fdlimit::http_budget(h.max_connections, crate::fdlimit::raise(), reserve);
    if max_connections < h.max_connections {
        tracing::warn!(
            configured = h.max_connections,
            max_connections,
            "http.max_connections lowered to keep file descriptors for calls; raise LimitNOFILE"
        );
    }
    let limits = serve::ServeLimits {
        max_connections,
        max_connections_per_ip: h.max_connections_per_ip,
        header_timeout: Duration::from_secs(h.header_timeout_seconds),
        request_timeout: Duration::from_secs(h.request_timeout_seconds),
        min_body_rate: h.min_body_bytes_per_second,
    };
    health::start_probe(state.clone(), shutdown.clone()).await;
    tokio::spawn(serve::serve(listener, app, limits, shutdown));
    tracing::info!(%addr, "listening for HTTP (Twilio, webhooks, health, metrics, admin API)");
    Ok(HttpHandle { addr })
}

/// `http.allow_cidrs`: everyone else gets 403.
async fn allowlist(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let allow = &state.ctx.settings.http_allow;
    if !allow.is_empty() && !allow.iter().any(|net| net.contains(&peer.ip())) {
        tracing::warn!(%peer, path = %req.uri().path(), "HTTP request from outside http.allow_cidrs refused");
        return (StatusCode::FORBIDDEN, "Forbidden: source address not allowed\n").into_response();
    }
    next.run(req).await
}

/// Request latency by route, for `/metrics`.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!("precall_http_request_seconds", "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// A JSON error body.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({"error": message.into()}))).into_response()
}
