//! `GET /health` (for load balancers and monitoring) and `GET /metrics`
//! (Prometheus text format).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use super::AppState;

/// What the background probe last saw. `/health` only reads it: a request costs
/// no IO, so a burst of health checks cannot become a burst of database pings or
/// of connections to the agent host.
#[derive(Debug, Default)]
pub struct Probe {
    database: AtomicBool,
    /// 0 unknown (no agent configured), 1 reachable, 2 unreachable.
    agent: AtomicU8,
    /// Probes completed, so a caller can wait for the first one.
    rounds: AtomicU64,
}

/// How often the probe runs; `/health` is at most this stale.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// The SIP task must have turned within this long for `/health` to say ok.
pub const SIP_STALL: Duration = Duration::from_secs(5);

impl Probe {
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Probes once (so `/health` is meaningful as soon as the listener is up), then
/// every [`PROBE_INTERVAL`] until `shutdown` turns true.
pub async fn start_probe(state: AppState, mut shutdown: watch::Receiver<bool>) {
    probe_once(&state).await;
    tokio::spawn(async move {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => probe_once(&state).await,
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => return,
            }
        }
    });
}

async fn probe_once(state: &AppState) {
    let ctx = &state.ctx;
    let database = matches!(tokio::time::timeout(Duration::from_secs(2), ctx.store.ping()).await, Ok(Ok(())));
    let agent = match &ctx.agent {
        None => 0,
        Some(a) if reachable(&a.ws_base).await => 1,
        Some(_) => 2,
    };
    state.probe.database.store(database, Ordering::Relaxed);
    state.probe.agent.store(agent, Ordering::Relaxed);
    state.probe.rounds.fetch_add(1, Ordering::Relaxed);
}

/// 200 when the SIP task is alive and turning, the database and the agent
/// backend answered the last probe and the daemon takes calls; 503 otherwise,
/// with the reason in the body.
pub async fn health(State(state): State<AppState>) -> Response {
    let ctx = &state.ctx;
    let probed = state.probe.rounds() > 0;
    let database = state.probe.database.load(Ordering::Relaxed);
    let agent = match (&ctx.agent, state.probe.agent.load(Ordering::Relaxed)) {
        (None, _) => None,
        (Some(_), 1) => Some(true),
        (Some(_), _) => Some(false),
    };
    let sip = ctx.stats.sip_live(SIP_STALL);
    let draining = ctx.stats.draining.load(Ordering::Relaxed);
    let live = ctx.stats.live_calls.load(Ordering::Relaxed) + state.twilio.live.load(Ordering::Relaxed);
    let now = std::time::Instant::now();
    let registrations: Vec<serde_json::Value> = ctx
        .stats
        .registrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|r| r.to_json(now))
        .collect();
    let ok = sip && probed && database && agent != Some(false) && !draining;
    let status = if draining {
        "draining"
    } else if !sip {
        "down"
    } else if !probed {
        "starting"
    } else if ok {
        "ok"
    } else {
        "degraded"
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "node": ctx.settings.node_id,
        "live_calls": live,
        "sip": {"ok": sip},
        "database": {"ok": database, "backend": format!("{:?}", ctx.store.backend()).to_lowercase()},
        "agent": {"configured": ctx.agent.is_some(), "ok": agent, "backend": ctx.agent_backend},
        "registrations": registrations,
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// Whether a TCP connection to the agent's host opens within 2 s.
async fn reachable(ws_base: &str) -> bool {
    let rest = ws_base
        .strip_prefix("wss://")
        .map(|r| (r, 443))
        .or_else(|| ws_base.strip_prefix("ws://").map(|r| (r, 80)));
    let Some((rest, default_port)) = rest else { return false };
    let authority = rest.split('/').next().unwrap_or(rest);
    let target = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target)).await,
        Ok(Ok(_))
    )
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let ctx = &state.ctx;
    metrics::gauge!("precall_live_calls", "protocol" => "sip").set(ctx.stats.live_calls.load(Ordering::Relaxed) as f64);
    metrics::gauge!("precall_live_calls", "protocol" => "twilio").set(state.twilio.live.load(Ordering::Relaxed) as f64);
    metrics::gauge!("precall_draining").set(if ctx.stats.draining.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    // For leak checks: after the calls end, the task count returns to its baseline.
    metrics::gauge!("precall_tokio_tasks_alive").set(tokio::runtime::Handle::current().metrics().num_alive_tasks() as f64);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}
