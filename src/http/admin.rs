//! The admin API (`/api/v1`): clone cache, statistics, caller mappings. Every
//! route needs the API key (`api.key`) as `Authorization: Bearer <key>` or
//! `X-API-Key: <key>`, compared in constant time; without it, 401, and an
//! address that keeps failing is refused with 429 for a minute.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Multipart, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{AppState, error};
use crate::callers::{self, CallersError};
use crate::store::samples::{MAX_SAMPLE_BYTES, SampleError};

/// Failed API keys per client address: past `http.admin_auth_failures_per_minute`
/// the address gets 429 for the rest of the minute, whatever key it sends, so a
/// brute force runs at a few guesses a minute instead of thousands a second.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    window_start: Instant,
    count: u32,
    logged: Option<Instant>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, expired entries are forgotten first.
const MAX_TRACKED: usize = 10_000;

impl AuthLimiter {
    fn locked(&self, ip: IpAddr, now: Instant, limit: u32) -> Option<Duration> {
        let map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(&ip)?;
        let ends = f.window_start + WINDOW;
        (f.count >= limit && now < ends).then(|| ends - now)
    }

    /// Counts a failure; `true` when it should be logged (once per 10 s per address).
    fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.saturating_duration_since(f.window_start) < WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let f = map.entry(ip).or_insert(Failures {
            window_start: now,
            count: 0,
            logged: None,
        });
        if now.saturating_duration_since(f.window_start) >= WINDOW {
            f.window_start = now;
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        let log = f.logged.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10));
        if log {
            f.logged = Some(now);
        }
        log
    }
}

/// The API key (`api.key`) as `Authorization: Bearer` or `X-API-Key`, compared in
/// constant time; 401 without it, 429 for an address that keeps guessing.
pub async fn require_key(State(state): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let limit = state.ctx.settings.raw.http.admin_auth_failures_per_minute;
    if let Some(wait) = state.admin_auth.locked(peer.ip(), now, limit) {
        metrics::counter!("precall_admin_auth_refused_total").increment(1);
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed API keys from this address; try later",
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert("retry-after", v);
        }
        return resp;
    }
    let key = &state.ctx.settings.raw.api.key;
    let headers = req.headers();
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
    if !key.is_empty() && bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        return next.run(req).await;
    }
    metrics::counter!("precall_admin_auth_failures_total").increment(1);
    if state.admin_auth.failed(peer.ip(), now) {
        tracing::warn!(%peer, path = %req.uri().path(), "admin API: wrong or missing API key (logged once per 10 s per address)");
    }
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "a valid API key is required (Authorization: Bearer or X-API-Key)",
    );
    resp.headers_mut()
        .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
    resp
}

/// `DELETE /api/v1/cache/{caller_id}`: forget the clone (and delete the voice at ElevenLabs).
pub async fn invalidate_cache(State(state): State<AppState>, Path(caller): Path<String>) -> Response {
    let Some(clone) = &state.ctx.clone else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "voice cloning is not configured");
    };
    match clone.invalidate(&caller).await {
        Ok(true) => json_ok(json!({"caller_id": caller, "invalidated": true})),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no cached voice for {caller}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    }
}

#[derive(Deserialize)]
pub struct Since {
    /// Unix seconds; default: the last 24 hours.
    since: Option<i64>,
}

/// `GET /api/v1/statistics?since=<unix seconds>`.
pub async fn statistics(State(state): State<AppState>, Query(q): Query<Since>) -> Response {
    let since_ms = q
        .since
        .map_or_else(|| crate::store::now_ms() - 86_400_000, |s| s.saturating_mul(1000));
    match state.ctx.store.statistics(since_ms).await {
        Ok(s) => {
            let hits = s.clone_outcomes.get("cache_hit").copied().unwrap_or(0);
            let misses = s.clone_outcomes.get("cloned").copied().unwrap_or(0)
                + s.clone_outcomes.get("failed").copied().unwrap_or(0)
                + s.clone_outcomes.get("timeout").copied().unwrap_or(0);
            let live = state.ctx.stats.live_calls.load(Ordering::Relaxed) + state.twilio.live.load(Ordering::Relaxed);
            json_ok(json!({
                "since": since_ms / 1000,
                "calls": s.calls,
                "calls_by_outcome": s.calls_by_outcome,
                "calls_by_protocol": s.calls_by_protocol,
                "live_calls": live,
                "clone": {
                    "outcomes": s.clone_outcomes,
                    "cache_hits": hits,
                    "cache_misses": misses,
                    "cache_hit_rate": if hits + misses > 0 { Some(hits as f64 / (hits + misses) as f64) } else { None },
                    "clones": s.clones,
                    "avg_ms": s.clone_ms_avg,
                    "p95_ms": s.clone_ms_p95,
                },
            }))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    }
}

/// `GET /api/v1/callers/{caller_id}`.
pub async fn get_caller(State(state): State<AppState>, Path(caller): Path<String>) -> Response {
    let Some(id) = crate::caller_id::normalize(&caller) else {
        return error(StatusCode::BAD_REQUEST, format!("{caller:?} is not a caller id"));
    };
    match state.ctx.store.mapping(&id).await {
        Ok(Some(m)) => json_ok(json!({
            "caller_id": m.caller_id,
            "display_name": m.display_name,
            "samples": m.samples,
            "sample_hash": m.sample_hash,
            "labels": m.labels,
            "enabled": m.enabled,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
        })),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no mapping for {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
    }
}

/// `PUT /api/v1/callers/{caller_id}`: multipart with one or more `file` parts
/// (audio), optional `name` and `labels` (a JSON object of strings).
pub async fn put_caller(State(state): State<AppState>, Path(caller): Path<String>, mut form: Multipart) -> Response {
    let dir = match tempfile::Builder::new().prefix("upload").tempdir_in(&state.ctx.settings.data_dir) {
        Ok(d) => d,
        Err(e) => return refuse_mid_body(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot stage the upload: {e}")),
    };
    let (mut files, mut name, mut labels) = (Vec::new(), None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return refuse_mid_body(StatusCode::BAD_REQUEST, format!("bad multipart body: {e}")),
        };
        let part = field.name().unwrap_or("").to_owned();
        let content_type = field.content_type().unwrap_or("").to_ascii_lowercase();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            // 413 only for a body over the limit; a malformed or cut-short body is 400.
            Err(e) => return refuse_mid_body(e.status(), format!("bad multipart body: {}", e.body_text())),
        };
        match part.as_str() {
            "file" | "files" if files.len() >= callers::MAX_SAMPLES => {
                return refuse_mid_body(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("at most {} voice samples per caller", callers::MAX_SAMPLES),
                );
            }
            "file" | "files" => {
                let audio = content_type.starts_with("audio/") || content_type == "application/octet-stream";
                if !audio {
                    return refuse_mid_body(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("sample parts must be audio/* (got {content_type:?})"),
                    );
                }
                let path = dir.path().join(format!("sample{}.bin", files.len()));
                if let Err(e) = tokio::fs::write(&path, &bytes).await {
                    return refuse_mid_body(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot stage the upload: {e}"));
                }
                files.push(path);
            }
            "name" => name = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "labels" => labels = Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => {}
        }
    }
    match callers::add(
        &state.ctx.store,
        &state.ctx.settings.data_dir,
        &caller,
        &files,
        name,
        labels.as_deref(),
    )
    .await
    {
        Ok(m) => json_ok(json!({"caller_id": m.caller_id, "samples": m.samples.len(), "sample_hash": m.sample_hash})),
        Err(CallersError::Store(e)) => {
            tracing::warn!(error = %e, "admin API: cannot store the caller mapping");
            error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable; try again")
        }
        // Never the server's file paths: they are staging names, meaningless to the client.
        Err(CallersError::Sample(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, sample_problem(&e)),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// A sample problem as the client can act on it, without server paths.
fn sample_problem(e: &SampleError) -> String {
    match e {
        SampleError::Empty { .. } => "a sample file is empty".into(),
        SampleError::TooLarge { size, .. } => format!("a sample of {size} bytes is over the {MAX_SAMPLE_BYTES}-byte limit"),
        SampleError::NotAudio { .. } => "a sample is not a WAV or MP3 file (by its content)".into(),
        _ => {
            tracing::warn!(error = %e, "admin API: cannot store a voice sample");
            "the sample could not be stored on the server".into()
        }
    }
}

/// `DELETE /api/v1/callers/{caller_id}`.
pub async fn delete_caller(State(state): State<AppState>, Path(caller): Path<String>) -> Response {
    match callers::remove(&state.ctx.store, &caller).await {
        Ok(true) => json_ok(json!({"caller_id": caller, "removed": true})),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no mapping for {caller}")),
        Err(CallersError::Store(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn json_ok(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// An upload refused before its body was read to the end: the rest of the body
/// is still on the connection, so say it will close rather than let the client
/// send its next request into it.
fn refuse_mid_body(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = error(status, message);
    r.headers_mut()
        .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    r
}
