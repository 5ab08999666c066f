//! Clone counters, exported by the HTTP listener's `/metrics` (later issue).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Outcome;

/// Upper bounds of the clone-latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 8] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 60.0];

#[derive(Debug, Default)]
pub struct CloneMetrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    failures: Mutex<HashMap<String, u64>>,
    outcomes: Mutex<HashMap<&'static str, u64>>,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    latency: [AtomicU64; 9],
    latency_sum_ms: AtomicU64,
}

impl CloneMetrics {
    pub(super) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn failure(&self, reason: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    pub(super) fn outcome(&self, outcome: &Outcome) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome.as_str())
            .or_default() += 1;
    }

    pub(super) fn clone_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Failures by reason.
    pub fn failures(&self) -> HashMap<String, u64> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls by clone outcome.
    pub fn outcomes(&self) -> HashMap<&'static str, u64> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// (bucket counts, not cumulative; sum in ms) of clone latencies.
    pub fn latency(&self) -> ([u64; 9], u64) {
        let mut out = [0u64; 9];
        for (o, a) in out.iter_mut().zip(&self.latency) {
            *o = a.load(Ordering::Relaxed);
        }
        (out, self.latency_sum_ms.load(Ordering::Relaxed))
    }
}
