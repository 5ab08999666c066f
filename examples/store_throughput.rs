//! Call-record throughput through the writer: pushes N finished-call records as
//! fast as the queue takes them and times until all are in the database.
//!
//!     cargo run --release --example store_throughput -- --url sqlite://bench.db?mode=rwc --records 20000
//!     cargo run --release --example store_throughput -- --url postgres://postgres@127.0.0.1/precall_bench
//!
//! Run beside `examples/loadgen.rs` to measure it while calls are live
//! (`sipp-scenarios/load-db.sh`).

use std::time::{Duration, Instant};

use precall::store::records::new_id;
use precall::store::writer::{self, WriterConfig};
use precall::store::{CallRow, Record, Store, now_ms};

#[tokio::main]
async fn main() {
    let mut url = String::from("sqlite://bench.db?mode=rwc");
    let mut records = 20_000usize;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--url" => url = v,
            "--records" => records = v.parse().expect("--records N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let store = Store::connect(&url, 8).await.expect("connect");
    store.migrate().await.expect("migrate");
    let before = store.count_calls().await.expect("count");
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = writer::spawn(
        store.clone(),
        WriterConfig {
            queue: 10_000,
            memory_limit: 100_000,
            batch: 500,
            spill_file: dir.path().join("records.jsonl"),
            node_id: "bench".into(),
            auto_migrate: false,
            max_backoff: Duration::from_secs(1),
        },
    );
    let start = Instant::now();
    let now = now_ms();
    for i in 0..records {
        sink.submit(Record::Call(Box::new(CallRow {
            call_id: new_id(),
            revision: 3,
            node_id: "bench".into(),
            protocol: "sip".into(),
            external_id: format!("bench-{i}@127.0.0.1"),
            caller: Some(format!("+1555{:07}", i % 10_000)),
            callee: Some("+15550001111".into()),
            started_at: now,
            answered_at: Some(now),
            ended_at: Some(now + 5_000),
            end_reason: Some("caller_bye".into()),
            rtp_in_packets: Some(250),
            rtp_in_lost: Some(0),
            rtp_in_max_jitter_us: Some(800),
            rtp_out_packets: Some(250),
            ..CallRow::default()
        })));
        if i % 1000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    assert!(sink.flush(Duration::from_secs(300)).await, "writer finished");
    let elapsed = start.elapsed();
    let after = store.count_calls().await.expect("count");
    assert_eq!((after - before) as usize, records, "every record stored");
    println!(
        "backend={:?} records={records} seconds={:.2} rows_per_second={:.0}",
        store.backend(),
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64()
    );
}
