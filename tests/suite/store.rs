//! Every repository function and the writer, against SQLite and a real PostgreSQL.

use crate::common;

use std::time::Duration;

use common::db::{Proxy, fresh_postgres};
use precall::store::records::{CloneAttempt, CloneEvent, Record, new_id};
use precall::store::writer::{self, WriterConfig};
use precall::store::{Backend, CachedVoice, CallRow, CallerMapping, Sample, Store};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/t.db?mode=rwc", dir.path().display())
}

fn call(id: &str, caller: &str, revision: i64, started: i64) -> CallRow {
    CallRow {
        call_id: id.into(),
        revision,
        node_id: "node-a".into(),
        protocol: "sip".into(),
        external_id: format!("ext-{id}"),
        caller: Some(caller.into()),
        callee: Some("+15550001111".into()),
        started_at: started,
        ..CallRow::default()
    }
}

/// The whole repository surface, on one backend.
async fn exercise(store: &Store) {
    // Migrations are idempotent.
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();

    // call_log: revisions only move forward; the webhook's fields are never overwritten.
    let mut row = call("c1", "+15551234567", 1, 1_000);
    store.upsert_call(&row).await.unwrap();
    row.revision = 3;
    row.answered_at = Some(1_010);
    row.ended_at = Some(9_000);
    row.end_reason = Some("caller_bye".into());
    row.conversation_id = Some("conv-1".into());
    row.rtp_in_packets = Some(400);
    row.rtp_in_max_jitter_us = Some(2_500);
    store.upsert_call(&row).await.unwrap();
    let stale = CallRow {
        revision: 2,
        answered_at: Some(1_010),
        ..call("c1", "+15551234567", 2, 1_000)
    };
    store.upsert_call(&stale).await.unwrap();
    let got = store.call("c1").await.unwrap().unwrap();
    assert_eq!(got.row, row, "a lower revision does not overwrite");
    assert!(
        store
            .set_conversation_result("conv-1", "agent: hello", Some("greeted"))
            .await
            .unwrap()
    );
    assert!(!store.set_conversation_result("conv-unknown", "x", None).await.unwrap());
    store
        .upsert_call(&CallRow {
            revision: 4,
            ..row.clone()
        })
        .await
        .unwrap();
    let got = store.call("c1").await.unwrap().unwrap();
    assert_eq!(
        (got.transcript.as_deref(), got.summary.as_deref()),
        (Some("agent: hello"), Some("greeted"))
    );
    assert_eq!(store.call_by_external_id("ext-c1").await.unwrap().unwrap().row.call_id, "c1");
    assert!(store.call("nope").await.unwrap().is_none());

    // Open calls of this node are closed on restart; other nodes' calls are not.
    store.upsert_call(&call("c2", "+15551234567", 1, 2_000)).await.unwrap();
    store
        .upsert_call(&CallRow {
            node_id: "node-b".into(),
            ..call("c3", "+15557654321", 1, 3_000)
        })
        .await
        .unwrap();
    assert_eq!(store.close_open_calls("node-a", "daemon_restart", 5_000).await.unwrap(), 1);
    let c2 = store.call("c2").await.unwrap().unwrap().row;
    assert_eq!((c2.ended_at, c2.end_reason.as_deref()), (Some(5_000), Some("daemon_restart")));
    assert!(store.call("c3").await.unwrap().unwrap().row.ended_at.is_none());
    // With a heartbeat, a crashed node's calls end when it was last alive, not
    // when it restarted; a call that started after the last beat ends at its start.
    store.beat("node-b", 3_500).await.unwrap();
    store
        .upsert_call(&CallRow {
            node_id: "node-b".into(),
            ..call("c4", "+15557654321", 1, 3_700)
        })
        .await
        .unwrap();
    assert_eq!(store.close_open_calls("node-b", "daemon_restart", 90_000).await.unwrap(), 2);
    assert_eq!(store.call("c3").await.unwrap().unwrap().row.ended_at, Some(3_500));
    assert_eq!(store.call("c4").await.unwrap().unwrap().row.ended_at, Some(3_700));
    // A late replay of the call's own older snapshot cannot reopen it.
    store.upsert_call(&call("c2", "+15551234567", 3, 2_000)).await.unwrap();
    assert_eq!(
        store.call("c2").await.unwrap().unwrap().row.end_reason.as_deref(),
        Some("daemon_restart")
    );
    let by_caller = store.calls_by_caller("+15551234567", 10).await.unwrap();
    assert_eq!(
        by_caller.iter().map(|c| c.row.call_id.as_str()).collect::<Vec<_>>(),
        vec!["c2", "c1"],
        "newest first"
    );
    assert_eq!(store.count_calls().await.unwrap(), 4);

    // caller_voice_mapping.
    let sample = Sample {
        path: "samples/+15551234567/ab.wav".into(),
        size: 10,
        sha256: "ab".repeat(32),
    };
    let mut m = CallerMapping {
        caller_id: "+15551234567".into(),
        display_name: Some("Alice".into()),
        samples: vec![sample.clone()],
        sample_hash: "h1".into(),
        labels: serde_json::json!({"accent": "british"}),
        enabled: true,
        created_at: 100,
        updated_at: 100,
    };
    store.upsert_mapping(&m).await.unwrap();
    assert_eq!(store.mapping("+15551234567").await.unwrap().as_ref(), Some(&m));
    m.samples.push(Sample {
        path: "samples/+15551234567/cd.mp3".into(),
        ..sample
    });
    m.sample_hash = "h2".into();
    m.enabled = false;
    m.updated_at = 200;
    store.upsert_mapping(&m).await.unwrap();
    assert_eq!(store.mapping("+15551234567").await.unwrap().as_ref(), Some(&m));
    assert_eq!(store.mappings().await.unwrap().len(), 1);
    assert!(store.remove_mapping("+15551234567").await.unwrap());
    assert!(!store.remove_mapping("+15551234567").await.unwrap());
    assert!(store.mapping("+15551234567").await.unwrap().is_none());

    // voice_clone_cache: expiry and sample changes make an entry unusable.
    let v = CachedVoice {
        caller_id: "+15551234567".into(),
        voice_id: "voice1".into(),
        sample_hash: "h2".into(),
        created_at: 1_000,
        expires_at: 5_000,
    };
    store.put_cached_voice(&v).await.unwrap();
    assert_eq!(store.cached_voice("+15551234567", "h2", 4_999).await.unwrap(), Some(v.clone()));
    assert_eq!(store.cached_voice("+15551234567", "h2", 5_000).await.unwrap(), None, "expired");
    assert_eq!(
        store.cached_voice("+15551234567", "h3", 1_500).await.unwrap(),
        None,
        "samples changed"
    );
    assert_eq!(store.expired_voices(5_000).await.unwrap(), vec![v.clone()]);
    assert!(store.expired_voices(4_000).await.unwrap().is_empty());
    let v2 = CachedVoice {
        voice_id: "voice2".into(),
        expires_at: 9_000,
        ..v
    };
    store.put_cached_voice(&v2).await.unwrap();
    assert_eq!(store.cached_voice("+15551234567", "h2", 6_000).await.unwrap(), Some(v2));
    assert!(store.remove_cached_voice("+15551234567").await.unwrap());

    // voice_clone_log and the three event tables; writes are idempotent by event id.
    let attempt = CloneAttempt {
        event_id: new_id(),
        caller_id: "+15551234567".into(),
        call_id: Some("c1".into()),
        started_at: 1_000,
        finished_at: Some(3_500),
        latency_ms: Some(2_500),
        http_status: Some(200),
        error: None,
        voice_id: Some("voice1".into()),
    };
    store.insert_clone_attempt(&attempt).await.unwrap();
    store.insert_clone_attempt(&attempt).await.unwrap();
    let failed_attempt = CloneAttempt {
        event_id: new_id(),
        http_status: Some(422),
        error: Some("invalid sample".into()),
        voice_id: None,
        started_at: 4_000,
        ..attempt.clone()
    };
    store.insert_clone_attempt(&failed_attempt).await.unwrap();
    assert_eq!(store.clone_attempts("+15551234567").await.unwrap(), vec![attempt, failed_attempt]);
    let events = vec![
        CloneEvent::Ready {
            event_id: new_id(),
            call_id: "c1".into(),
            caller_id: "+15551234567".into(),
            voice_id: "voice1".into(),
            source: "cloned".into(),
            waited_ms: 2_500,
            created_at: 3_500,
        },
        CloneEvent::Transfer {
            event_id: new_id(),
            call_id: "c1".into(),
            voice_id: "voice1".into(),
            waited_ms: 2_600,
            gap_ms: 0,
            created_at: 3_600,
        },
        CloneEvent::Failed {
            event_id: new_id(),
            call_id: "c1".into(),
            caller_id: "+15551234567".into(),
            reason: "deadline".into(),
            fallback_voice_id: Some("default".into()),
            waited_ms: 35_000,
            created_at: 3_700,
        },
    ];
    let batch: Vec<Record> = events.iter().cloned().map(Record::CloneEvent).collect();
    store.write_batch(&batch).await.unwrap();
    store.write_batch(&batch).await.unwrap();
    assert_eq!(store.clone_events("c1").await.unwrap(), events);

    // A large batch: several multi-row statements, and a call seen twice in one
    // batch lands at its highest revision whatever the order.
    let mut batch = Vec::new();
    for i in 0..250 {
        let id = format!("m{i}");
        let ended = CallRow {
            ended_at: Some(50),
            end_reason: Some("caller_bye".into()),
            ..call(&id, "+1666", 3, 10)
        };
        let started = call(&id, "+1666", 1, 10);
        if i % 2 == 0 {
            batch.push(Record::Call(Box::new(started)));
            batch.push(Record::Call(Box::new(ended)));
        } else {
            batch.push(Record::Call(Box::new(ended)));
            batch.push(Record::Call(Box::new(started)));
        }
    }
    store.write_batch(&batch).await.unwrap();
    assert_eq!(store.count_calls().await.unwrap(), 254);
    for i in [0, 1, 99, 100, 249] {
        let row = store.call(&format!("m{i}")).await.unwrap().unwrap().row;
        assert_eq!((row.revision, row.end_reason.as_deref()), (3, Some("caller_bye")), "m{i}");
    }
}

#[tokio::test]
async fn repository_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    exercise(&store).await;
    // In-memory SQLite is one database too (one connection).
    let mem = Store::connect("sqlite::memory:", 4).await.unwrap();
    exercise(&mem).await;
}

#[tokio::test]
async fn repository_on_postgres() {
    let Some(db) = fresh_postgres("repo").await else { return };
    let store = Store::connect(&db.url, 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    exercise(&store).await;
    store.close().await;
    db.drop_db().await;
}

fn writer_config(dir: &tempfile::TempDir, memory_limit: usize) -> WriterConfig {
    WriterConfig {
        queue: 64,
        memory_limit,
        batch: 32,
        spill_file: dir.path().join("spool").join("records.jsonl"),
        node_id: "node-w".into(),
        auto_migrate: true,
        max_backoff: Duration::from_millis(300),
    }
}

/// The writer keeps every record through an outage: memory first, then the spill
/// file, then the database once it is back.
async fn writer_survives_outage(url_direct: &str, url_proxied: &str, proxy: &Proxy, outage: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let direct = Store::connect(url_direct, 2).await.unwrap();
    direct.migrate().await.unwrap();
    // A call left open by an "earlier run" of this node.
    direct
        .upsert_call(&CallRow {
            node_id: "node-w".into(),
            ..call("crashed", "+1555", 1, 1)
        })
        .await
        .unwrap();

    let store = Store::connect_lazy(url_proxied, 4).unwrap();
    let sink = writer::spawn(store, writer_config(&dir, 10));
    assert!(sink.flush(Duration::from_secs(10)).await, "writer ready");
    let crashed = direct.call("crashed").await.unwrap().unwrap().row;
    assert_eq!(crashed.end_reason.as_deref(), Some("daemon_restart"));

    proxy.pause().await;
    for i in 0..40 {
        sink.submit(Record::Call(Box::new(call(&format!("o{i}"), "+15551234567", 1, 10 + i))));
        sink.submit(Record::Call(Box::new(CallRow {
            ended_at: Some(100 + i),
            end_reason: Some("caller_bye".into()),
            ..call(&format!("o{i}"), "+15551234567", 3, 10 + i)
        })));
    }
    tokio::time::sleep(outage).await;
    assert!(
        dir.path().join("spool").join("records.jsonl").exists(),
        "past the memory bound, records spill to disk"
    );
    assert!(
        sink.stats.failed_attempts.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the writer did try"
    );
    proxy.resume();
    assert!(sink.flush(Duration::from_secs(30)).await, "writer catches up after the outage");
    for i in 0..40 {
        let row = direct
            .call(&format!("o{i}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("row o{i} lost"))
            .row;
        assert_eq!((row.revision, row.end_reason.as_deref()), (3, Some("caller_bye")), "row o{i}");
    }
    assert!(
        !dir.path().join("spool").join("records.jsonl").exists(),
        "spill file replayed and removed"
    );
    direct.close().await;
}

#[tokio::test]
async fn writer_keeps_every_record_through_a_postgres_outage() {
    let Some(db) = fresh_postgres("outage").await else { return };
    let proxy = Proxy::start(db.server).await;
    writer_survives_outage(&db.url, &db.url_via(proxy.addr), &proxy, Duration::from_secs(3)).await;
    db.drop_db().await;
}

#[tokio::test]
async fn writer_spills_at_shutdown_and_replays_on_the_next_start() {
    let Some(db) = fresh_postgres("spill").await else { return };
    let proxy = Proxy::start(db.server).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect_lazy(&db.url_via(proxy.addr), 2).unwrap();
    let sink = writer::spawn(store, writer_config(&dir, 1000));
    assert!(sink.flush(Duration::from_secs(10)).await);
    proxy.pause().await;
    for i in 0..5 {
        sink.submit(Record::Call(Box::new(call(&format!("s{i}"), "+1555", 1, i))));
    }
    // The database does not come back before shutdown: records go to disk.
    sink.shutdown(Duration::from_millis(800)).await;
    let spill = dir.path().join("spool").join("records.jsonl");
    assert_eq!(std::fs::read_to_string(&spill).unwrap().lines().count(), 5);
    // Next start, database reachable: the spill file is replayed first.
    proxy.resume();
    let store = Store::connect_lazy(&db.url, 2).unwrap();
    let sink = writer::spawn(store.clone(), writer_config(&dir, 1000));
    assert!(sink.flush(Duration::from_secs(10)).await);
    for i in 0..5 {
        assert!(store.call(&format!("s{i}")).await.unwrap().is_some(), "s{i} replayed");
    }
    assert!(!spill.exists());
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn writer_on_sqlite_writes_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect_lazy(&sqlite_url(&dir), 1).unwrap();
    let sink = writer::spawn(store.clone(), writer_config(&dir, 1000));
    for i in 0..500 {
        sink.submit(Record::Call(Box::new(call(&format!("b{i}"), "+1555", 1, i))));
    }
    assert!(sink.flush(Duration::from_secs(10)).await);
    assert_eq!(store.count_calls().await.unwrap(), 500);
    assert_eq!(sink.stats.written.load(std::sync::atomic::Ordering::Relaxed), 500);
}

#[tokio::test]
async fn a_record_the_database_refuses_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 1).await.unwrap();
    store.migrate().await.unwrap();
    // Make the database refuse one specific row (as a constraint or a schema
    // mismatch would): a trigger that raises on a marked caller.
    store_exec(
        &store,
        "CREATE TRIGGER refuse BEFORE INSERT ON call_log WHEN NEW.caller = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .await;
    let sink = writer::spawn(store.clone(), writer_config(&dir, 1000));
    for i in 0..10 {
        let caller = if i == 3 { "poison" } else { "+1555" };
        sink.submit(Record::Call(Box::new(call(&format!("p{i}"), caller, 1, i))));
    }
    assert!(
        sink.flush(Duration::from_secs(10)).await,
        "the writer is not stuck on the refused record"
    );
    assert_eq!(store.count_calls().await.unwrap(), 9);
    assert_eq!(sink.stats.rejected.load(std::sync::atomic::Ordering::Relaxed), 1);
    let kept = std::fs::read_to_string(dir.path().join("spool").join("rejected.jsonl")).unwrap();
    assert!(kept.contains("\"call_id\":\"p3\"") && kept.contains("refused"), "{kept}");
}

async fn store_exec(store: &Store, sql: &'static str) {
    store.execute_raw_for_tests(sql).await.unwrap();
}
