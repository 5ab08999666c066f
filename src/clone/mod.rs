//! Background voice cloning for a call: mapping → cache → one clone request per
//! caller (in this process and, on PostgreSQL, across nodes) → a voice before the
//! deadline, or the default voice after it.
//!
//! The call never waits on anything but [`CloneService::resolve`]'s deadline. The
//! clone request itself belongs to a task of its own with its own, longer
//! timeout (`clone.request_timeout_seconds`), so a clone that finishes after the
//! call's deadline, or after the call has ended, still fills the cache for the
//! caller's next call.
//!
//! Voice slots are scarce and a voice nobody remembers is never freed, so leaks
//! are prevented by design rather than by care: every voice precall creates is
//! labelled `created_by: precall`, and [`CloneService::sweep_orphans`] deletes
//! labelled voices that no cache row names once they are older than
//! `clone.orphan_grace_seconds` (a request that timed out on our side, a cache
//! write that failed, a delete that failed, a node that died mid-clone).

mod metrics;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use metrics::CloneMetrics;

use crate::elevenlabs::rest::{AddVoice, ApiError, CREATED_BY_LABEL, Client, SampleFile};
use crate::store::records::{CloneAttempt, CloneEvent, new_id};
use crate::store::writer::RecordSink;
use crate::store::{CachedVoice, CallerMapping, Record, Store, now_ms};

#[derive(Debug, Clone)]
pub struct CloneConfig {
    /// How long a call waits for its clone (`clone.max_wait_seconds`).
    pub max_wait: Duration,
    pub cache_ttl: Duration,
    /// The voice used when there is no clone (`elevenlabs.default_voice_id`).
    pub default_voice_id: String,
    pub remove_background_noise: bool,
    /// Where the mapping's sample paths are rooted.
    pub data_dir: PathBuf,
    /// How long the clone request itself may take, retries included
    /// (`clone.request_timeout_seconds`): longer than `max_wait`, so a slow clone
    /// is not abandoned when the call stops waiting for it.
    pub request_timeout: Duration,
    /// A labelled voice without a cache row older than this is an orphan
    /// (`clone.orphan_grace_seconds`).
    pub orphan_grace: Duration,
}

/// How a call got its voice; the strings go to `call_log.clone_outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No usable caller id (anonymous, withheld).
    Anonymous,
    Unmapped,
    CacheHit,
    Cloned,
    Failed(String),
    Timeout,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Anonymous => "anonymous",
            Outcome::Unmapped => "unmapped",
            Outcome::CacheHit => "cache_hit",
            Outcome::Cloned => "cloned",
            Outcome::Failed(_) => "failed",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The voice a call will use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub voice_id: String,
    pub outcome: Outcome,
    pub waited: Duration,
    pub caller_id: Option<String>,
}

/// Counts a call's voice decision for `/metrics` (cache hit/miss, time waited).
pub fn record_metrics(r: &Resolution) {
    ::metrics::counter!("precall_clone_outcomes_total", "outcome" => r.outcome.as_str()).increment(1);
    ::metrics::histogram!("precall_clone_wait_seconds").record(r.waited.as_secs_f64());
}

/// The one word for a clone that did not finish in time, on the call record
/// (`clone_outcome`) and in `clone_failed_events.reason` alike.
const TIMEOUT: &str = "timeout";

/// Why an orphan sweep could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot list the account's voices: {0}")]
    Api(ApiError),
    #[error("cannot read the clone cache: {0}")]
    Store(crate::store::StoreError),
}

/// What a finished clone task reports to everyone waiting on it.
type Shared = Option<Result<(String, bool), String>>;

/// The clone service. Cheap to clone.
#[derive(Clone)]
pub struct CloneService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    client: Client,
    records: RecordSink,
    config: CloneConfig,
    inflight: Mutex<HashMap<String, watch::Receiver<Shared>>>,
    metrics: CloneMetrics,
    /// When the orphan sweeper first saw a voice without a creation time (unix s).
    first_seen: Mutex<HashMap<String, i64>>,
}

impl CloneService {
    pub fn new(store: Store, client: Client, records: RecordSink, config: CloneConfig) -> Self {
        CloneService {
            inner: Arc::new(Inner {
                store,
                client,
                records,
                config,
                inflight: Mutex::new(HashMap::new()),
                metrics: CloneMetrics::default(),
                first_seen: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn metrics(&self) -> &CloneMetrics {
        &self.inner.metrics
    }

    pub fn default_voice_id(&self) -> &str {
        &self.inner.config.default_voice_id
    }

    /// The voice for a call from `caller`, decided before `started + max_wait`.
    pub async fn resolve(&self, call_id: &str, caller: Option<&str>, started: Instant) -> Resolution {
        let deadline = started + self.inner.config.max_wait;
        let caller_id = caller.and_then(crate::caller_id::normalize);
        let resolution = match &caller_id {
            None => self.fallback(Outcome::Anonymous, started, None),
            Some(id) => self.resolve_mapped(call_id, id, started, deadline).await,
        };
        self.inner.metrics.outcome(&resolution.outcome);
        resolution
    }

    async fn resolve_mapped(&self, call_id: &str, caller: &str, started: Instant, deadline: Instant) -> Resolution {
        let store = &self.inner.store;
        let mapping = match tokio::time::timeout_at(deadline.into(), store.mapping(caller)).await {
            Ok(Ok(Some(m))) if m.enabled && !m.samples.is_empty() => m,
            Ok(Ok(_)) => return self.fallback(Outcome::Unmapped, started, Some(caller)),
            Ok(Err(e)) => {
                tracing::warn!(caller, error = %e, "cannot read the caller mapping; using the default voice");
                return self.failed(call_id, caller, "database", started);
            }
            Err(_) => return self.timed_out(call_id, caller, started),
        };
        match tokio::time::timeout_at(deadline.into(), store.cached_voice(caller, &mapping.sample_hash, now_ms())).await {
            Ok(Ok(Some(hit))) => {
                self.inner.metrics.cache_hit();
                return self.ready(call_id, caller, hit.voice_id, Outcome::CacheHit, started);
            }
            Ok(Ok(None)) => self.inner.metrics.cache_miss(),
            Ok(Err(e)) => tracing::warn!(caller, error = %e, "cannot read the clone cache; cloning anyway"),
            Err(_) => return self.timed_out(call_id, caller, started),
        }
        let mut rx = self.join_or_start(mapping);
        let waited = async {
            loop {
                if let Some(result) = rx.borrow_and_update().clone() {
                    return result;
                }
                if rx.changed().await.is_err() {
                    return Err("clone task ended".to_owned());
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), waited).await {
            Ok(Ok((voice_id, true))) => self.ready(call_id, caller, voice_id, Outcome::Cloned, started),
            Ok(Ok((voice_id, false))) => self.ready(call_id, caller, voice_id, Outcome::CacheHit, started),
            // A timeout is a timeout wherever it happened: one word on the call
            // record and in `clone_failed_events`.
            Ok(Err(reason)) if reason == TIMEOUT => self.timed_out(call_id, caller, started),
            Ok(Err(reason)) => self.failed(call_id, caller, &reason, started),
            Err(_) => self.timed_out(call_id, caller, started),
        }
    }

    /// Joins the clone in flight for this caller, or starts one. The clone runs
    /// on its own clock (`request_timeout`), not the call's: its result is for
    /// the cache as much as for this call.
    fn join_or_start(&self, mapping: CallerMapping) -> watch::Receiver<Shared> {
        let mut inflight = self.inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&mapping.caller_id) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(mapping.caller_id.clone(), rx.clone());
        let service = self.clone();
        let deadline = crate::deadline::after(Instant::now(), self.inner.config.request_timeout);
        tokio::spawn(async move {
            let caller = mapping.caller_id.clone();
            let result = service.clone_across_nodes(mapping, deadline).await;
            service.inner.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&caller);
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// On PostgreSQL, one node per caller clones (advisory lock); the others wait
    /// for its cache row.
    async fn clone_across_nodes(&self, mapping: CallerMapping, deadline: Instant) -> Result<(String, bool), String> {
        let store = &self.inner.store;
        let lock = match store.try_clone_lock(&mapping.caller_id).await {
            Ok(lock) => lock,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the cluster clone lock; cloning without it");
                None
            }
        };
        if store.backend() == crate::store::Backend::Postgres && lock.is_none() {
            // Another node is cloning this caller: wait for its result in the cache.
            while Instant::now() < deadline {
                if let Ok(Some(hit)) = store.cached_voice(&mapping.caller_id, &mapping.sample_hash, now_ms()).await {
                    return Ok((hit.voice_id, false));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            return Err(TIMEOUT.into());
        }
        // The lock holder re-checks: another node may have just finished.
        if let Ok(Some(hit)) = store.cached_voice(&mapping.caller_id, &mapping.sample_hash, now_ms()).await {
            return Ok((hit.voice_id, false));
        }
        let result = self.clone_voice(&mapping, deadline).await;
        drop(lock);
        result.map(|v| (v, true))
    }

    async fn clone_voice(&self, mapping: &CallerMapping, deadline: Instant) -> Result<String, String> {
        let inner = &self.inner;
        let mut files = Vec::with_capacity(mapping.samples.len());
        for s in &mapping.samples {
            let path = inner.config.data_dir.join(&s.path);
            let bytes = tokio::fs::read(&path).await.map_err(|e| {
                tracing::error!(caller = %mapping.caller_id, file = %path.display(), error = %e, "voice sample missing");
                "sample_missing".to_owned()
            })?;
            let content_type = if s.path.ends_with(".mp3") { "audio/mpeg" } else { "audio/wav" };
            let filename = std::path::Path::new(&s.path)
                .file_name()
                .map_or("sample".into(), |f| f.to_string_lossy().into_owned());
            files.push(SampleFile {
                filename,
                content_type: content_type.into(),
                bytes,
            });
        }
        let mut labels = mapping.labels.as_object().cloned().unwrap_or_default();
        labels.insert(CREATED_BY_LABEL.0.into(), CREATED_BY_LABEL.1.into());
        let request = AddVoice {
            name: mapping
                .display_name
                .clone()
                .unwrap_or_else(|| format!("precall {}", mapping.caller_id)),
            files,
            description: Some(format!("Cloned by precall for caller {}", mapping.caller_id)),
            labels: serde_json::Value::Object(labels),
            remove_background_noise: inner.config.remove_background_noise,
        };
        let started = Instant::now();
        let (result, _attempts) = inner
            .client
            .with_retry(deadline, || async {
                let attempt_started = (Instant::now(), now_ms());
                let r = inner.client.add_voice(&request, deadline).await;
                self.log_attempt(&mapping.caller_id, attempt_started, &r);
                r
            })
            .await;
        inner.metrics.clone_latency(started.elapsed());
        let created = result.map_err(|e| {
            tracing::warn!(caller = %mapping.caller_id, error = %e, "voice clone failed");
            e.reason()
        })?;
        let now = now_ms();
        let previous = inner.store.cached_voice_any(&mapping.caller_id).await.ok().flatten();
        let entry = CachedVoice {
            caller_id: mapping.caller_id.clone(),
            voice_id: created.voice_id.clone(),
            sample_hash: mapping.sample_hash.clone(),
            created_at: now,
            expires_at: now + inner.config.cache_ttl.as_millis() as i64,
        };
        if let Err(e) = inner.store.put_cached_voice(&entry).await {
            // Without a cache row nothing would ever delete this voice: give the slot back.
            tracing::error!(caller = %mapping.caller_id, error = %e, "cannot cache the cloned voice; deleting it at ElevenLabs");
            self.delete_at_elevenlabs(&created.voice_id).await;
            return Err("database".into());
        }
        if let Some(old) = previous.filter(|old| old.voice_id != created.voice_id) {
            self.delete_at_elevenlabs(&old.voice_id).await;
        }
        tracing::info!(caller = %mapping.caller_id, voice = %created.voice_id, ms = started.elapsed().as_millis() as u64, "voice cloned");
        Ok(created.voice_id)
    }

    fn log_attempt(&self, caller: &str, started: (Instant, i64), result: &Result<crate::elevenlabs::rest::VoiceCreated, ApiError>) {
        let latency = started.0.elapsed().as_millis() as i64;
        let (status, error, voice) = match result {
            Ok(v) => (Some(200), None, Some(v.voice_id.clone())),
            Err(e) => (e.status().map(i64::from), Some(e.to_string()), None),
        };
        self.inner.records.submit(Record::CloneAttempt(CloneAttempt {
            event_id: new_id(),
            caller_id: caller.to_owned(),
            call_id: None,
            started_at: started.1,
            finished_at: Some(started.1 + latency),
            latency_ms: Some(latency),
            http_status: status,
            error,
            voice_id: voice,
        }));
    }

    fn ready(&self, call_id: &str, caller: &str, voice_id: String, outcome: Outcome, started: Instant) -> Resolution {
        let waited = started.elapsed();
        self.inner.records.submit(Record::CloneEvent(CloneEvent::Ready {
            event_id: new_id(),
            call_id: call_id.to_owned(),
            caller_id: caller.to_owned(),
            voice_id: voice_id.clone(),
            source: outcome.as_str().to_owned(),
            waited_ms: waited.as_millis() as i64,
            created_at: now_ms(),
        }));
        Resolution {
            voice_id,
            outcome,
            waited,
            caller_id: Some(caller.to_owned()),
        }
    }

    fn failed(&self, call_id: &str, caller: &str, reason: &str, started: Instant) -> Resolution {
        self.record_failure(call_id, caller, reason, started);
        self.inner.metrics.failure(reason);
        self.fallback(Outcome::Failed(reason.to_owned()), started, Some(caller))
    }

    fn timed_out(&self, call_id: &str, caller: &str, started: Instant) -> Resolution {
        self.record_failure(call_id, caller, TIMEOUT, started);
        self.inner.metrics.failure(TIMEOUT);
        self.fallback(Outcome::Timeout, started, Some(caller))
    }

    fn record_failure(&self, call_id: &str, caller: &str, reason: &str, started: Instant) {
        self.inner.records.submit(Record::CloneEvent(CloneEvent::Failed {
            event_id: new_id(),
            call_id: call_id.to_owned(),
            caller_id: caller.to_owned(),
            reason: reason.to_owned(),
            fallback_voice_id: Some(self.inner.config.default_voice_id.clone()),
            waited_ms: started.elapsed().as_millis() as i64,
            created_at: now_ms(),
        }));
    }

    fn fallback(&self, outcome: Outcome, started: Instant, caller: Option<&str>) -> Resolution {
        Resolution {
            voice_id: self.inner.config.default_voice_id.clone(),
            outcome,
            waited: started.elapsed(),
            caller_id: caller.map(str::to_owned),
        }
    }

    async fn delete_at_elevenlabs(&self, voice_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (r, _) = self
            .inner
            .client
            .with_retry(deadline, || self.inner.client.delete_voice(voice_id, deadline))
            .await;
        match r {
            Ok(()) => tracing::info!(voice = %voice_id, "deleted voice at ElevenLabs"),
            Err(ApiError::Http { code: Some(code), .. }) if code == "voice_not_found" => {}
            Err(e) => tracing::warn!(voice = %voice_id, error = %e, "could not delete voice at ElevenLabs"),
        }
    }

    /// Drops a caller's cached clone and deletes the voice at ElevenLabs (admin API).
    pub async fn invalidate(&self, caller: &str) -> Result<bool, crate::store::StoreError> {
        let Some(caller_id) = crate::caller_id::normalize(caller) else {
            return Ok(false);
        };
        let Some(entry) = self.inner.store.cached_voice_any(&caller_id).await? else {
            return Ok(false);
        };
        self.delete_at_elevenlabs(&entry.voice_id).await;
        self.inner.store.remove_cached_voice_if(&caller_id, &entry.voice_id).await
    }

    /// Deletes expired clones at ElevenLabs and from the cache, so the account's
    /// voice slots do not fill up. Returns how many were removed.
    pub async fn sweep_expired(&self) -> Result<usize, crate::store::StoreError> {
        let expired = self.inner.store.expired_voices(now_ms()).await?;
        let mut removed = 0;
        for entry in expired {
            self.delete_at_elevenlabs(&entry.voice_id).await;
            if self.inner.store.remove_cached_voice_if(&entry.caller_id, &entry.voice_id).await? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes precall's orphaned voices at ElevenLabs: labelled
    /// `created_by: precall`, named by no cache row, and older than
    /// `orphan_grace` (so a clone that is about to write its cache row is left
    /// alone). Voices without a creation time are judged from when this sweeper
    /// first saw them. Returns how many were deleted.
    pub async fn sweep_orphans(&self) -> Result<usize, SweepError> {
        let inner = &self.inner;
        let deadline = Instant::now() + Duration::from_secs(60);
        let voices = inner.client.list_voices(deadline).await.map_err(SweepError::Api)?;
        let now_secs = now_ms() / 1000;
        let grace = inner.config.orphan_grace.as_secs() as i64;
        let mut deleted = 0;
        let mut seen = inner.first_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let listed: std::collections::HashSet<&str> = voices.iter().map(|v| v.voice_id.as_str()).collect();
        seen.retain(|id, _| listed.contains(id.as_str()));
        for voice in voices.iter().filter(|v| v.is_precalls()) {
            let created = match voice.created_at_unix {
                Some(t) => t,
                None => *seen.entry(voice.voice_id.clone()).or_insert(now_secs),
            };
            if now_secs.saturating_sub(created) < grace {
                continue;
            }
            if inner.store.voice_is_cached(&voice.voice_id).await.map_err(SweepError::Store)? {
                continue;
            }
            tracing::warn!(voice = %voice.voice_id, name = ?voice.name, "deleting an orphaned precall voice (no cache row)");
            self.delete_at_elevenlabs(&voice.voice_id).await;
            ::metrics::counter!("precall_clone_orphans_deleted_total").increment(1);
            deleted += 1;
        }
        *inner.first_seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(deleted)
    }

    /// Runs [`Self::sweep_expired`] and [`Self::sweep_orphans`] every `every`
    /// until the runtime stops.
    pub fn spawn_sweeper(&self, every: Duration) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match service.sweep_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "expired voice clones deleted"),
                    Err(e) => tracing::warn!(error = %e, "expired-clone sweep failed; will retry"),
                }
                match service.sweep_orphans().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "orphaned voice clones deleted"),
                    Err(e) => tracing::warn!(error = %e, "orphan sweep failed; will retry"),
                }
            }
        });
    }
}
