//! The clone service against the ElevenLabs simulator over real HTTP.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::db::fresh_postgres;
use precall::clone::{CloneConfig, CloneService, Outcome};
use precall::elevenlabs::rest::{AddVoice, ApiError, Client, ClientConfig, SampleFile};
use precall::sim::{Failure, Knobs, Simulator};
use precall::store::writer::{self, RecordSink, WriterConfig};
use precall::store::{CachedVoice, CloneEvent, Store, now_ms};

const KEY: &str = "test-key";
const DEFAULT_VOICE: &str = "default-voice";

struct Env {
    sim: Simulator,
    store: Store,
    sink: RecordSink,
    service: CloneService,
    dir: tempfile::TempDir,
}

fn client(sim: &Simulator, key: &str) -> Client {
    Client::new(ClientConfig {
        base_url: sim.base_url(),
        api_key: key.into(),
        max_concurrent_requests: 4,
        request_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn service(store: &Store, sink: &RecordSink, client: Client, dir: &Path, max_wait: Duration) -> CloneService {
    service_with(
        store,
        sink,
        client,
        dir,
        max_wait,
        Duration::from_secs(10),
        Duration::from_secs(900),
    )
}

fn service_with(
    store: &Store,
    sink: &RecordSink,
    client: Client,
    dir: &Path,
    max_wait: Duration,
    request_timeout: Duration,
    orphan_grace: Duration,
) -> CloneService {
    CloneService::new(
        store.clone(),
        client,
        sink.clone(),
        CloneConfig {
            max_wait,
            cache_ttl: Duration::from_secs(24 * 3600),
            default_voice_id: DEFAULT_VOICE.into(),
            remove_background_noise: false,
            data_dir: dir.to_path_buf(),
            request_timeout,
            orphan_grace,
        },
    )
}

async fn env_on(url: Option<String>, max_wait: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = url.unwrap_or_else(|| format!("sqlite://{}/c.db?mode=rwc", dir.path().display()));
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let sink = writer::spawn(
        store.clone(),
        WriterConfig {
            queue: 1000,
            memory_limit: 1000,
            batch: 64,
            spill_file: dir.path().join("spool/records.jsonl"),
            node_id: "n".into(),
            auto_migrate: false,
            max_backoff: Duration::from_millis(200),
        },
    );
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), KEY).await.unwrap();
    let service = service(&store, &sink, client(&sim, KEY), dir.path(), max_wait);
    Env {
        sim,
        store,
        sink,
        service,
        dir,
    }
}

async fn env(max_wait: Duration) -> Env {
    env_on(None, max_wait).await
}

/// Maps `caller` to one WAV sample (content varies with `seed`).
async fn map(e: &Env, caller: &str, seed: u8) {
    let wav = e.dir.path().join(format!("sample-{seed}.wav"));
    let mut bytes = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
    bytes.extend(std::iter::repeat_n(seed, 64));
    std::fs::write(&wav, bytes).unwrap();
    precall::callers::add(
        &e.store,
        e.dir.path(),
        caller,
        &[wav],
        Some("Alice".into()),
        Some(r#"{"accent":"british"}"#),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn clones_once_then_hits_the_cache_and_records_everything() {
    let e = env(Duration::from_secs(10)).await;
    map(&e, "+15551234567", 1).await;
    let r = e.service.resolve("call-1", Some("+1 555 123 4567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Cloned);
    assert!(r.voice_id.starts_with("sim"), "{r:?}");
    // The request as ElevenLabs receives it (docs/protocols.md §2.1, vector R1).
    let reqs = e.sim.requests();
    assert_eq!(reqs.len(), 1);
    let q = &reqs[0];
    assert_eq!(q.name.as_deref(), Some("Alice"));
    assert_eq!(q.files.len(), 1);
    assert!(
        q.files[0].0.ends_with(".wav") && q.files[0].1 == "audio/wav" && q.files[0].2 == 80,
        "{:?}",
        q.files
    );
    assert_eq!(
        q.labels.as_deref(),
        Some(r#"{"accent":"british","created_by":"precall"}"#),
        "the mapping's labels, plus precall's own"
    );
    assert_eq!(q.remove_background_noise.as_deref(), Some("false"));
    assert!(q.description.is_some());
    assert!(q.other_parts.is_empty(), "{:?}", q.other_parts);

    let again = e.service.resolve("call-2", Some("+15551234567"), Instant::now()).await;
    assert_eq!((again.outcome, again.voice_id.as_str()), (Outcome::CacheHit, r.voice_id.as_str()));
    assert_eq!(e.sim.requests().len(), 1, "the cache answered");
    assert_eq!(e.service.metrics().cache_hits.load(std::sync::atomic::Ordering::Relaxed), 1);

    assert!(e.sink.flush(Duration::from_secs(5)).await);
    let attempts = e.store.clone_attempts("+15551234567").await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].http_status, attempts[0].voice_id.as_deref()),
        (Some(200), Some(r.voice_id.as_str()))
    );
    assert!(attempts[0].latency_ms.is_some());
    let ev1 = e.store.clone_events("call-1").await.unwrap();
    assert!(
        matches!(&ev1[..], [CloneEvent::Ready { source, .. }] if source == "cloned"),
        "{ev1:?}"
    );
    let ev2 = e.store.clone_events("call-2").await.unwrap();
    assert!(
        matches!(&ev2[..], [CloneEvent::Ready { source, .. }] if source == "cache_hit"),
        "{ev2:?}"
    );
}

#[tokio::test]
async fn unmapped_and_anonymous_callers_get_the_default_voice_without_a_request() {
    let e = env(Duration::from_secs(5)).await;
    let r = e.service.resolve("c", Some("+15559999999"), Instant::now()).await;
    assert_eq!((r.outcome, r.voice_id.as_str()), (Outcome::Unmapped, DEFAULT_VOICE));
    let r = e.service.resolve("c", Some("anonymous"), Instant::now()).await;
    assert_eq!((r.outcome, r.voice_id.as_str()), (Outcome::Anonymous, DEFAULT_VOICE));
    let r = e.service.resolve("c", None, Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Anonymous);
    assert!(e.sim.requests().is_empty());
}

#[tokio::test]
async fn expired_or_sample_changed_entries_are_recloned_and_old_voices_deleted() {
    let e = env(Duration::from_secs(10)).await;
    map(&e, "+15551234567", 1).await;
    let first = e.service.resolve("c1", Some("+15551234567"), Instant::now()).await;
    // Expire it by hand.
    let mut entry = e.store.cached_voice_any("+15551234567").await.unwrap().unwrap();
    entry.expires_at = now_ms() - 1;
    e.store.put_cached_voice(&entry).await.unwrap();
    let second = e.service.resolve("c2", Some("+15551234567"), Instant::now()).await;
    assert_eq!(second.outcome, Outcome::Cloned);
    assert_ne!(second.voice_id, first.voice_id);
    assert_eq!(
        e.sim.deleted(),
        vec![first.voice_id.clone()],
        "the replaced voice is deleted so slots do not fill up"
    );
    // New samples: the cached clone no longer matches.
    map(&e, "+15551234567", 2).await;
    let third = e.service.resolve("c3", Some("+15551234567"), Instant::now()).await;
    assert_eq!(third.outcome, Outcome::Cloned);
    assert_eq!(e.sim.requests().len(), 3);
    assert_eq!(e.sim.voice_ids(), vec![third.voice_id.clone()]);
}

#[tokio::test]
async fn concurrent_calls_from_one_caller_share_one_clone_request() {
    let e = env(Duration::from_secs(10)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        clone_latency: Duration::from_millis(300),
        ..Knobs::default()
    });
    let started = Instant::now();
    let calls = (0..10).map(|i| {
        let s = e.service.clone();
        tokio::spawn(async move { s.resolve(&format!("c{i}"), Some("+15551234567"), started).await })
    });
    let results: Vec<_> = futures_join(calls.collect()).await;
    assert_eq!(e.sim.requests().len(), 1, "one request for ten calls");
    assert!(
        results
            .iter()
            .all(|r| r.outcome == Outcome::Cloned && r.voice_id == results[0].voice_id),
        "{results:?}"
    );
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn two_nodes_on_one_postgres_clone_a_caller_once() {
    let Some(db) = fresh_postgres("clone_nodes").await else { return };
    let a = env_on(Some(db.url.clone()), Duration::from_secs(10)).await;
    map(&a, "+15551234567", 1).await;
    a.sim.set_knobs(Knobs {
        clone_latency: Duration::from_millis(500),
        ..Knobs::default()
    });
    // Node B: its own process state (in-flight map, pool), same database, same
    // ElevenLabs account; its samples directory is node A's (shared storage).
    let store_b = Store::connect(&db.url, 4).await.unwrap();
    let b = service(&store_b, &a.sink, client(&a.sim, KEY), a.dir.path(), Duration::from_secs(10));
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 { a.service.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            s.resolve(&format!("n{i}"), Some("+15551234567"), started).await
        }));
    }
    let results = futures_join(handles).await;
    assert_eq!(a.sim.requests().len(), 1, "one clone across both nodes: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.voice_id == results[0].voice_id && r.voice_id.starts_with("sim")),
        "{results:?}"
    );
    assert!(results.iter().any(|r| r.outcome == Outcome::Cloned));
    store_b.close().await;
    a.store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn retries_429_within_the_deadline_then_succeeds() {
    let e = env(Duration::from_secs(10)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        failure: Failure::TooMany("system_busy"),
        fail_times: 2,
        ..Knobs::default()
    });
    let r = e.service.resolve("c", Some("+15551234567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Cloned);
    assert_eq!(e.sim.requests().len(), 3);
    assert!(e.sink.flush(Duration::from_secs(5)).await);
    let statuses: Vec<_> = e
        .store
        .clone_attempts("+15551234567")
        .await
        .unwrap()
        .iter()
        .map(|a| a.http_status)
        .collect();
    assert_eq!(statuses, vec![Some(429), Some(429), Some(200)], "every attempt is logged");
}

#[tokio::test]
async fn failures_fall_back_to_the_default_voice_with_a_reason() {
    // A 500 that never ends: retries stop before the deadline.
    let e = env(Duration::from_millis(1500)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        failure: Failure::ServerError,
        ..Knobs::default()
    });
    let t = Instant::now();
    let r = e.service.resolve("c500", Some("+15551234567"), t).await;
    assert!(
        matches!(&r.outcome, Outcome::Failed(reason) if reason == "http_500") || r.outcome == Outcome::Timeout,
        "{r:?}"
    );
    assert_eq!(r.voice_id, DEFAULT_VOICE);
    assert!(
        t.elapsed() < Duration::from_millis(1700),
        "bounded by the deadline: {:?}",
        t.elapsed()
    );
    assert!(e.sim.requests().len() >= 2, "it did retry");

    // requires_verification is a failure, not retried.
    let e = env(Duration::from_secs(5)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        failure: Failure::RequiresVerification,
        ..Knobs::default()
    });
    let r = e.service.resolve("cv", Some("+15551234567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Failed("requires_verification".into()));
    assert_eq!(e.sim.requests().len(), 1);

    // voice_limit_reached: not retried.
    let e = env(Duration::from_secs(5)).await;
    map(&e, "+15551234567", 1).await;
    map(&e, "+15557654321", 2).await;
    e.sim.set_knobs(Knobs {
        voice_limit: 1,
        ..Knobs::default()
    });
    assert_eq!(
        e.service.resolve("a", Some("+15557654321"), Instant::now()).await.outcome,
        Outcome::Cloned
    );
    let r = e.service.resolve("b", Some("+15551234567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Failed("voice_limit_reached".into()));
    assert_eq!(e.sim.requests().len(), 2);

    // A wrong API key: 401, not retried.
    let e = env(Duration::from_secs(5)).await;
    map(&e, "+15551234567", 1).await;
    let bad = service(&e.store, &e.sink, client(&e.sim, "wrong-key"), e.dir.path(), Duration::from_secs(5));
    let r = bad.resolve("k", Some("+15551234567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Failed("invalid_api_key".into()));
    assert!(e.sink.flush(Duration::from_secs(5)).await);
    let attempts = e.store.clone_attempts("+15551234567").await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.http_status).collect::<Vec<_>>(), vec![Some(401)]);
    let failed = e.store.clone_events("k").await.unwrap();
    assert!(
        matches!(&failed[..], [CloneEvent::Failed { reason, fallback_voice_id: Some(v), .. }] if reason == "invalid_api_key" && v == DEFAULT_VOICE),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_hung_clone_times_out_and_a_slow_one_fills_the_cache_later() {
    let e = env(Duration::from_millis(800)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        failure: Failure::Hang,
        ..Knobs::default()
    });
    let t = Instant::now();
    let r = e.service.resolve("h", Some("+15551234567"), t).await;
    assert_eq!((r.outcome, r.voice_id.as_str()), (Outcome::Timeout, DEFAULT_VOICE));
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());

    let e = env(Duration::from_millis(500)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        clone_latency: Duration::from_millis(1200),
        ..Knobs::default()
    });
    let r = e.service.resolve("slow", Some("+15551234567"), Instant::now()).await;
    assert_eq!(r.outcome, Outcome::Timeout);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let next = e.service.resolve("next", Some("+15551234567"), Instant::now()).await;
    assert_eq!(
        next.outcome,
        Outcome::CacheHit,
        "the clone finished in the background for the next call"
    );
    assert_eq!(e.sim.requests().len(), 1);
}

/// Issue 13 #3: ElevenLabs answering a clone after longer than
/// `elevenlabs.request_timeout_seconds` (1 s here) and after the call's
/// `max_wait` (0.5 s). The clone request runs on its own timeout, survives the
/// call, records one outcome (`timeout` on the call and in
/// `clone_failed_events`), fills the cache for the next call, and the voice it
/// made is labelled as precall's.
#[tokio::test]
async fn a_clone_slower_than_the_request_timeout_is_kept_and_cached() {
    let e = env(Duration::from_millis(500)).await;
    map(&e, "+15551234567", 1).await;
    e.sim.set_knobs(Knobs {
        clone_latency: Duration::from_millis(2500),
        ..Knobs::default()
    });
    let short_requests = Client::new(ClientConfig {
        base_url: e.sim.base_url(),
        api_key: KEY.into(),
        max_concurrent_requests: 4,
        request_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let service = service_with(
        &e.store,
        &e.sink,
        short_requests,
        e.dir.path(),
        Duration::from_millis(500),
        Duration::from_secs(20),
        Duration::from_secs(900),
    );
    let r = service.resolve("slow-call", Some("+15551234567"), Instant::now()).await;
    assert_eq!((&r.outcome, r.voice_id.as_str()), (&Outcome::Timeout, DEFAULT_VOICE));
    // The call is over; the clone goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.store.cached_voice_any("+15551234567").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the slow clone never reached the cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = service.resolve("next-call", Some("+15551234567"), Instant::now()).await;
    assert_eq!(next.outcome, Outcome::CacheHit);
    assert_ne!(next.voice_id, DEFAULT_VOICE);
    assert_eq!(e.sim.requests().len(), 1, "one request, not abandoned and retried");
    assert_eq!(e.sim.voice_ids(), vec![next.voice_id.clone()], "no other voice was left behind");
    let labels: serde_json::Value = serde_json::from_str(e.sim.requests()[0].labels.as_deref().unwrap()).unwrap();
    assert_eq!(labels["created_by"], "precall", "{labels}");
    assert!(e.sink.flush(Duration::from_secs(5)).await);
    let events = e.store.clone_events("slow-call").await.unwrap();
    assert!(
        matches!(&events[..], [CloneEvent::Failed { reason, .. }] if reason == r.outcome.as_str()),
        "the call's outcome and the event agree: {events:?}"
    );
    let attempts = e.store.clone_attempts("+15551234567").await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].http_status, Some(200));
    assert_eq!(attempts[0].voice_id.as_deref(), Some(next.voice_id.as_str()));
}

/// Leaks are impossible by design: a labelled voice that no cache row names
/// (a request given up on, a cache write that failed) is deleted once older
/// than the grace period; cached voices and the account's other voices stay.
#[tokio::test]
async fn the_orphan_sweeper_deletes_only_precalls_uncached_voices() {
    let e = env(Duration::from_secs(5)).await;
    map(&e, "+15551234567", 1).await;
    let cached = e.service.resolve("a", Some("+15551234567"), Instant::now()).await;
    assert_eq!(cached.outcome, Outcome::Cloned);
    let api = client(&e.sim, KEY);
    let deadline = Instant::now() + Duration::from_secs(5);
    let sample = SampleFile {
        filename: "s.wav".into(),
        content_type: "audio/wav".into(),
        bytes: vec![1; 100],
    };
    let add = |labels: serde_json::Value| AddVoice {
        name: "x".into(),
        files: vec![sample.clone()],
        description: None,
        labels,
        remove_background_noise: false,
    };
    let orphan = api
        .add_voice(&add(serde_json::json!({"created_by": "precall"})), deadline)
        .await
        .unwrap();
    let foreign = api
        .add_voice(&add(serde_json::json!({"accent": "british"})), deadline)
        .await
        .unwrap();
    // Within the grace period nothing is touched.
    assert_eq!(e.service.sweep_orphans().await.unwrap(), 0);
    let eager = service_with(
        &e.store,
        &e.sink,
        client(&e.sim, KEY),
        e.dir.path(),
        Duration::from_secs(5),
        Duration::from_secs(10),
        Duration::ZERO,
    );
    assert_eq!(eager.sweep_orphans().await.unwrap(), 1);
    assert_eq!(e.sim.deleted(), vec![orphan.voice_id]);
    let mut left = vec![cached.voice_id, foreign.voice_id];
    left.sort();
    assert_eq!(e.sim.voice_ids(), left);
    assert_eq!(eager.sweep_orphans().await.unwrap(), 0, "idempotent");
}

#[tokio::test]
async fn expired_clones_are_swept_and_invalidation_deletes_the_voice() {
    let e = env(Duration::from_secs(5)).await;
    map(&e, "+15551234567", 1).await;
    map(&e, "+15557654321", 2).await;
    let a = e.service.resolve("a", Some("+15551234567"), Instant::now()).await;
    let b = e.service.resolve("b", Some("+15557654321"), Instant::now()).await;
    let mut entry: CachedVoice = e.store.cached_voice_any("+15551234567").await.unwrap().unwrap();
    entry.expires_at = now_ms() - 1;
    e.store.put_cached_voice(&entry).await.unwrap();
    assert_eq!(e.service.sweep_expired().await.unwrap(), 1);
    assert_eq!(e.sim.deleted(), vec![a.voice_id.clone()]);
    assert!(e.store.cached_voice_any("+15551234567").await.unwrap().is_none());
    assert!(e.service.invalidate("+1 555 765 4321").await.unwrap());
    assert_eq!(e.sim.deleted(), vec![a.voice_id, b.voice_id]);
    assert!(e.sim.voice_ids().is_empty());
}

#[tokio::test]
async fn the_simulator_is_strict_about_requests() {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), KEY).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let good = client(&sim, KEY);
    let no_files = AddVoice {
        name: "x".into(),
        files: vec![],
        description: None,
        labels: serde_json::json!({}),
        remove_background_noise: false,
    };
    let err = good.add_voice(&no_files, deadline).await.unwrap_err();
    assert_eq!(err, ApiError::Validation("body.files: Field required".into()));
    let file = SampleFile {
        filename: "a.wav".into(),
        content_type: "audio/wav".into(),
        bytes: b"RIFF....WAVE".to_vec(),
    };
    let no_name = AddVoice {
        name: String::new(),
        files: vec![file.clone()],
        ..no_files.clone()
    };
    assert_eq!(
        good.add_voice(&no_name, deadline).await.unwrap_err(),
        ApiError::Validation("body.name: Field required".into())
    );
    let ok = AddVoice {
        name: "ok".into(),
        files: vec![file],
        ..no_files
    };
    let created = good.add_voice(&ok, deadline).await.unwrap();
    assert!(sim.requests().last().unwrap().labels.is_none(), "empty labels are omitted");
    assert_eq!(good.voice(&created.voice_id, deadline).await.unwrap().voice_id, created.voice_id);
    let wrong = client(&sim, "nope");
    assert!(matches!(
        wrong.add_voice(&ok, deadline).await,
        Err(ApiError::Http { status: 401, .. })
    ));
    // TTS speaks in the voice's pitch, in the requested format.
    let audio = good
        .tts(
            &created.voice_id,
            "Hello there",
            precall::elevenlabs::rest::TtsFormat::Ulaw8000,
            deadline,
        )
        .await
        .unwrap();
    assert!((5270..=5290).contains(&audio.len()), "0.66 s of 8 kHz μ-law: {}", audio.len());
    good.delete_voice(&created.voice_id, deadline).await.unwrap();
    assert!(
        matches!(good.delete_voice(&created.voice_id, deadline).await, Err(ApiError::Http { status: 400, code: Some(c), .. }) if c == "voice_not_found")
    );
}

#[tokio::test]
async fn greeting_tts_is_rendered_once_cached_and_in_the_voice_asked_for() {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompt = precall::elevenlabs::render_greeting(
        &client(&sim, KEY),
        "Hello, thanks for calling.",
        "voiceA",
        dir.path(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(prompt.frames() > 50, "{} frames", prompt.frames());
    // The simulator speaks each voice at its own pitch: the audio is voiceA's.
    let pcm = prompt.pcm();
    let strength = |hz: f64| {
        let (mut re, mut im) = (0f64, 0f64);
        for (n, s) in pcm.iter().enumerate().take(8000) {
            let ph = 2.0 * std::f64::consts::PI * hz * n as f64 / 8000.0;
            re += f64::from(*s) * ph.cos();
            im += f64::from(*s) * ph.sin();
        }
        (re * re + im * im).sqrt()
    };
    let own = strength(precall::sim::voice_pitch_hz("voiceA"));
    let other = strength(precall::sim::voice_pitch_hz("voiceB"));
    assert!(own > 10.0 * other, "voiceA's pitch dominates: {own} vs {other}");
    // Cached on disk: a second start renders without ElevenLabs.
    let offline = Client::new(ClientConfig {
        base_url: "http://127.0.0.1:9".into(),
        api_key: KEY.into(),
        max_concurrent_requests: 1,
        request_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let again = precall::elevenlabs::render_greeting(&offline, "Hello, thanks for calling.", "voiceA", dir.path(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.pcm(), prompt.pcm());
    // Another text is not in the cache, and fails cleanly without ElevenLabs.
    assert!(
        precall::elevenlabs::render_greeting(&offline, "Other text", "voiceA", dir.path(), Duration::from_secs(2))
            .await
            .is_err()
    );
}
