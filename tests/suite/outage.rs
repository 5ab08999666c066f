//! Calls placed while PostgreSQL is unreachable are all on record once it is back.
//! The outage lasts `OUTAGE_SECONDS` (default 5; `.ci/run` uses 30, the figure the
//! issue names).

use crate::common;

use std::time::Duration;

use common::db::{Proxy, fresh_postgres};
use common::{Caller, offer, start_with};
use precall::config::{RawSettings, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_a_database_outage_are_all_recorded() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("precall::store=debug,sqlx=warn")
        .with_test_writer()
        .try_init();
    let Some(db) = fresh_postgres("calls").await else { return };
    let proxy = Proxy::start(db.server).await;
    let outage = Duration::from_secs(std::env::var("OUTAGE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5));

    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    raw.node.id = "outage-node".into();
    raw.database.url = db.url_via(proxy.addr);
    raw.database.writer_memory_limit = 8;
    raw.rtp.port_min = 40000;
    raw.rtp.port_max = 40198;
    let daemon = start_with(Settings::compile(raw).unwrap(), dir).await;
    assert!(daemon.records.flush(Duration::from_secs(10)).await, "migrated before the outage");

    proxy.pause().await;
    let started = std::time::Instant::now();
    let mut call_ids = Vec::new();
    for _ in 0..12 {
        let mut c = Caller::udp(daemon.sip_addr).await;
        c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
        let (_, ok) = c.final_response(Duration::from_secs(1)).await;
        assert_eq!(ok.status(), Some(200), "calls are answered while the database is down");
        c.ack("").await;
        assert!(c.recv_rtp(Duration::from_secs(1)).await.is_some(), "greeting plays");
        assert_eq!(c.bye().await.status(), Some(200));
        call_ids.push(c.call_id.clone());
    }
    let mut rejected = Caller::udp(daemon.sip_addr).await;
    rejected.invite(&offer(rejected.rtp_port(), "18", "sendrecv")).await;
    assert_eq!(rejected.final_response(Duration::from_secs(1)).await.1.status(), Some(488));
    if let Some(rest) = outage.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let store = precall::store::Store::connect(&db.url, 2).await.unwrap();
    assert_eq!(
        store.count_calls().await.unwrap(),
        0,
        "nothing reached the database during the outage"
    );
    proxy.resume();
    assert!(
        daemon.records.flush(Duration::from_secs(30)).await,
        "the backlog is written once the database is back"
    );
    for id in &call_ids {
        let row = store
            .call_by_external_id(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("call {id} lost"))
            .row;
        assert_eq!(row.end_reason.as_deref(), Some("caller_bye"), "{id}");
        assert!(
            row.answered_at.is_some() && row.ended_at.is_some() && row.rtp_out_packets.unwrap_or(0) > 0,
            "{row:?}"
        );
        assert_eq!(row.node_id, "outage-node");
    }
    let r = store
        .call_by_external_id(&rejected.call_id)
        .await
        .unwrap()
        .expect("rejected call recorded")
        .row;
    assert_eq!((r.end_reason.as_deref(), r.end_status), (Some("rejected"), Some(488)));
    assert_eq!(store.count_calls().await.unwrap(), 13);
    store.close().await;
    db.drop_db().await;
}
