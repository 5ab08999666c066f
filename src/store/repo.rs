//! Typed repository functions: the only SQL in precall. Portable between SQLite and
//! PostgreSQL: `$N` placeholders, `ON CONFLICT` upserts, BIGINT timestamps and flags.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::records::{CachedVoice, CallRow, CallerMapping, CloneAttempt, CloneEvent, Record, Sample, StoredCall};
use super::{Store, StoreError};

const INSERT_CALL_HEAD: &str = "INSERT INTO call_log (call_id, revision, node_id, protocol, external_id, caller, callee, started_at, \
     answered_at, bridged_at, ended_at, end_reason, end_status, clone_outcome, voice_id, conversation_id, rtp_in_packets, rtp_in_lost, \
     rtp_in_max_jitter_us, rtp_out_packets, rtp_in_mos_x100) VALUES ";

const UPSERT_CALL_TAIL: &str = " ON CONFLICT (call_id) DO UPDATE SET revision = excluded.revision, node_id = excluded.node_id, \
     protocol = excluded.protocol, external_id = excluded.external_id, caller = excluded.caller, callee = excluded.callee, \
     started_at = excluded.started_at, answered_at = excluded.answered_at, bridged_at = excluded.bridged_at, \
     ended_at = excluded.ended_at, end_reason = excluded.end_reason, end_status = excluded.end_status, \
     clone_outcome = excluded.clone_outcome, voice_id = excluded.voice_id, conversation_id = excluded.conversation_id, \
     rtp_in_packets = excluded.rtp_in_packets, rtp_in_lost = excluded.rtp_in_lost, rtp_in_max_jitter_us = excluded.rtp_in_max_jitter_us, \
     rtp_out_packets = excluded.rtp_out_packets, rtp_in_mos_x100 = excluded.rtp_in_mos_x100 \
     WHERE call_log.revision < excluded.revision";

/// Columns per `call_log` row in the upsert.
const CALL_PARAMS: usize = 21;
/// Rows per multi-row upsert: 2 000 parameters, far below both backends' limits.
const CALL_ROWS_PER_STATEMENT: usize = 100;

const CALL_COLUMNS: &str = "call_id, revision, node_id, protocol, external_id, caller, callee, started_at, answered_at, bridged_at, \
     ended_at, end_reason, end_status, clone_outcome, voice_id, conversation_id, rtp_in_packets, rtp_in_lost, rtp_in_max_jitter_us, \
     rtp_out_packets, rtp_in_mos_x100, transcript, summary, call_successful, agent_duration_secs";

impl Store {
    // ---- call_log ----------------------------------------------------------------

    pub async fn upsert_call(&self, row: &CallRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        upsert_calls(&mut tx, &[row]).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn call(&self, call_id: &str) -> Result<Option<StoredCall>, StoreError> {
        let sql = format!("SELECT {CALL_COLUMNS} FROM call_log WHERE call_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_call(&r)).transpose()
    }

    pub async fn call_by_external_id(&self, external_id: &str) -> Result<Option<StoredCall>, StoreError> {
        let sql = format!("SELECT {CALL_COLUMNS} FROM call_log WHERE external_id = $1 ORDER BY started_at DESC LIMIT 1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| stored_call(&r)).transpose()
    }

    /// The most recent calls from `caller`, newest first.
    pub async fn calls_by_caller(&self, caller: &str, limit: i64) -> Result<Vec<StoredCall>, StoreError> {
        let sql = format!("SELECT {CALL_COLUMNS} FROM call_log WHERE caller = $1 ORDER BY started_at DESC LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(caller)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored_call).collect()
    }

    pub async fn count_calls(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM call_log")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Closes calls this node left open (a crash), with the given reason. They
    /// end when the node was last known alive (its heartbeat, not before the
    /// call started), or at `now` when it never beat: the downtime is not call time.
    pub async fn close_open_calls(&self, node_id: &str, reason: &str, now: i64) -> Result<u64, StoreError> {
        let alive: Option<i64> = sqlx::query("SELECT alive_at FROM node_heartbeats WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("alive_at"))
            .transpose()?;
        let ended = alive.map_or(now, |a| a.min(now));
        let r = sqlx::query(
            "UPDATE call_log SET ended_at = CASE WHEN started_at > $1 THEN started_at ELSE $1 END, end_reason = $2, \
             revision = revision + 1000000 WHERE node_id = $3 AND ended_at IS NULL",
        )
        .bind(ended)
        .bind(reason)
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// This node is alive at `at` (ms).
    pub async fn beat(&self, node_id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_heartbeats (node_id, alive_at) VALUES ($1, $2) \
             ON CONFLICT (node_id) DO UPDATE SET alive_at = excluded.alive_at",
        )
        .bind(node_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the post-call webhook's transcript and summary; false if no call has
    /// that conversation id.
    pub async fn set_conversation_result(
        &self,
        conversation_id: &str,
        transcript: &str,
        summary: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE call_log SET transcript = $1, summary = $2 WHERE conversation_id = $3")
            .bind(transcript)
            .bind(summary)
            .bind(conversation_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The post-call webhook's verdict on a conversation; false when no call has it.
    pub async fn record_post_call(&self, result: &PostCallResult<'_>) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE call_log SET transcript = $1, summary = $2, call_successful = $3, agent_duration_secs = $4 WHERE conversation_id = $5",
        )
        .bind(result.transcript)
        .bind(result.summary)
        .bind(result.call_successful)
        .bind(result.duration_secs)
        .bind(result.conversation_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Keeps one webhook delivery (matched or not).
    pub async fn insert_webhook_event(
        &self,
        event_type: &str,
        conversation_id: Option<&str>,
        matched: bool,
        payload: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO webhook_events (received_at, event_type, conversation_id, matched, payload) VALUES ($1, $2, $3, $4, $5)")
            .bind(super::now_ms())
            .bind(event_type)
            .bind(conversation_id)
            .bind(i64::from(matched))
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Remembers a signed delivery; `false` when it was seen before (a replay).
    /// Entries older than `keep_ms` are forgotten on the way: by then their
    /// timestamps are outside the tolerance window anyway.
    pub async fn accept_webhook_delivery(&self, signature: &str, keep_ms: i64) -> Result<bool, StoreError> {
        let now = super::now_ms();
        sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(now - keep_ms)
            .execute(&self.pool)
            .await?;
        let inserted =
            sqlx::query("INSERT INTO webhook_deliveries (signature, received_at) VALUES ($1, $2) ON CONFLICT (signature) DO NOTHING")
                .bind(signature)
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Webhook deliveries for a conversation: (type, matched, payload).
    pub async fn webhook_events(&self, conversation_id: &str) -> Result<Vec<(String, bool, String)>, StoreError> {
        let rows = sqlx::query("SELECT event_type, matched, payload FROM webhook_events WHERE conversation_id = $1 ORDER BY id")
            .bind(conversation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let matched: i64 = r.try_get("matched")?;
                Ok((r.try_get("event_type")?, matched != 0, r.try_get("payload")?))
            })
            .collect()
    }

    /// A cheap round trip, for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 AS one").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// Figures for the admin API's statistics since `since` (unix ms).
    pub async fn statistics(&self, since: i64) -> Result<Statistics, StoreError> {
        let rows = sqlx::query(
            "SELECT protocol, COALESCE(end_reason, 'in_progress') AS reason, COUNT(*) AS n FROM call_log WHERE started_at >= $1 GROUP BY protocol, COALESCE(end_reason, 'in_progress')",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = Statistics::default();
        for r in &rows {
            let protocol: String = r.try_get("protocol")?;
            let reason: String = r.try_get("reason")?;
            let n: i64 = r.try_get("n")?;
            *stats.calls_by_protocol.entry(protocol).or_default() += n;
            *stats.calls_by_outcome.entry(reason).or_default() += n;
            stats.calls += n;
        }
        let rows = sqlx::query(
            "SELECT clone_outcome, COUNT(*) AS n FROM call_log WHERE started_at >= $1 AND clone_outcome IS NOT NULL GROUP BY clone_outcome",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let outcome: String = r.try_get("clone_outcome")?;
            let n: i64 = r.try_get("n")?;
            stats.clone_outcomes.insert(outcome, n);
        }
        let rows = sqlx::query(
            "SELECT latency_ms FROM voice_clone_log WHERE started_at >= $1 AND latency_ms IS NOT NULL AND voice_id IS NOT NULL ORDER BY latency_ms LIMIT 100000",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let latencies = rows
            .iter()
            .map(|r| r.try_get::<i64, _>("latency_ms"))
            .collect::<Result<Vec<_>, _>>()?;
        if !latencies.is_empty() {
            stats.clone_ms_avg = Some(latencies.iter().sum::<i64>() as f64 / latencies.len() as f64);
            stats.clone_ms_p95 = latencies.get((latencies.len() * 95).div_ceil(100).saturating_sub(1)).copied();
        }
        stats.clones = latencies.len() as i64;
        Ok(stats)
    }

    // ---- caller_voice_mapping ------------------------------------------------------

    pub async fn upsert_mapping(&self, m: &CallerMapping) -> Result<(), StoreError> {
        let samples = serde_json::to_string(&m.samples).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO caller_voice_mapping (caller_id, display_name, samples, sample_hash, labels, enabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (caller_id) DO UPDATE SET display_name = excluded.display_name, samples = excluded.samples, \
             sample_hash = excluded.sample_hash, labels = excluded.labels, enabled = excluded.enabled, updated_at = excluded.updated_at",
        )
        .bind(&m.caller_id)
        .bind(&m.display_name)
        .bind(samples)
        .bind(&m.sample_hash)
        .bind(m.labels.to_string())
        .bind(i64::from(m.enabled))
        .bind(m.created_at)
        .bind(m.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mapping(&self, caller_id: &str) -> Result<Option<CallerMapping>, StoreError> {
        let row = sqlx::query(
            "SELECT caller_id, display_name, samples, sample_hash, labels, enabled, created_at, updated_at \
             FROM caller_voice_mapping WHERE caller_id = $1",
        )
        .bind(caller_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| mapping(&r)).transpose()
    }

    pub async fn mappings(&self) -> Result<Vec<CallerMapping>, StoreError> {
        let rows = sqlx::query(
            "SELECT caller_id, display_name, samples, sample_hash, labels, enabled, created_at, updated_at \
             FROM caller_voice_mapping ORDER BY caller_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mapping).collect()
    }

    pub async fn remove_mapping(&self, caller_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM caller_voice_mapping WHERE caller_id = $1")
            .bind(caller_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- voice_clone_cache ---------------------------------------------------------

    pub async fn put_cached_voice(&self, v: &CachedVoice) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO voice_clone_cache (caller_id, voice_id, sample_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (caller_id) DO UPDATE SET voice_id = excluded.voice_id, sample_hash = excluded.sample_hash, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(&v.caller_id)
        .bind(&v.voice_id)
        .bind(&v.sample_hash)
        .bind(v.created_at)
        .bind(v.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A usable cached clone: unexpired at `now` and made from `sample_hash`.
    pub async fn cached_voice(&self, caller_id: &str, sample_hash: &str, now: i64) -> Result<Option<CachedVoice>, StoreError> {
        let row = sqlx::query(
            "SELECT caller_id, voice_id, sample_hash, created_at, expires_at FROM voice_clone_cache \
             WHERE caller_id = $1 AND sample_hash = $2 AND expires_at > $3",
        )
        .bind(caller_id)
        .bind(sample_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| cached_voice(&r)).transpose()
    }

    /// Entries that must be deleted at ElevenLabs: expired ones.
    pub async fn expired_voices(&self, now: i64) -> Result<Vec<CachedVoice>, StoreError> {
        let rows = sqlx::query(
            "SELECT caller_id, voice_id, sample_hash, created_at, expires_at FROM voice_clone_cache WHERE expires_at <= $1 ORDER BY expires_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cached_voice).collect()
    }

    /// Whether any cache row (expired or not) names this voice: such a voice is
    /// the sweepers' business, not an orphan.
    pub async fn voice_is_cached(&self, voice_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT caller_id FROM voice_clone_cache WHERE voice_id = $1 LIMIT 1")
            .bind(voice_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The cache entry for a caller whatever its state (to delete a replaced voice).
    pub async fn cached_voice_any(&self, caller_id: &str) -> Result<Option<CachedVoice>, StoreError> {
        let row =
            sqlx::query("SELECT caller_id, voice_id, sample_hash, created_at, expires_at FROM voice_clone_cache WHERE caller_id = $1")
                .bind(caller_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| cached_voice(&r)).transpose()
    }

    /// Removes the entry only if it still holds `voice_id` (a newer clone may have
    /// replaced it meanwhile).
    pub async fn remove_cached_voice_if(&self, caller_id: &str, voice_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM voice_clone_cache WHERE caller_id = $1 AND voice_id = $2")
            .bind(caller_id)
            .bind(voice_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// On PostgreSQL, a session advisory lock on the caller: held while this node
    /// clones, so no other node clones the same caller. The connection is closed
    /// (not returned to the pool) when the lock is dropped, which releases it even
    /// if this task dies. `None` when another node holds it. On SQLite (one node)
    /// there is nothing to lock: `Ok(None)`.
    pub async fn try_clone_lock(&self, caller_id: &str) -> Result<Option<CloneLock>, StoreError> {
        if self.backend != super::Backend::Postgres {
            return Ok(None);
        }
        let mut conn = self.pool.acquire().await?;
        let key = lock_key(caller_id);
        let row = sqlx::query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        let locked: bool = row.try_get("locked")?;
        if !locked {
            return Ok(None);
        }
        conn.close_on_drop();
        Ok(Some(CloneLock { _conn: conn }))
    }

    pub async fn remove_cached_voice(&self, caller_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM voice_clone_cache WHERE caller_id = $1")
            .bind(caller_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- clone log and events ------------------------------------------------------

    pub async fn insert_clone_attempt(&self, a: &CloneAttempt) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_clone_attempt(&mut tx, a).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_clone_event(&self, e: &CloneEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_clone_event(&mut tx, e).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn clone_attempts(&self, caller_id: &str) -> Result<Vec<CloneAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, caller_id, call_id, started_at, finished_at, latency_ms, http_status, error, voice_id \
             FROM voice_clone_log WHERE caller_id = $1 ORDER BY started_at, id",
        )
        .bind(caller_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CloneAttempt {
                    event_id: r.try_get("event_id")?,
                    caller_id: r.try_get("caller_id")?,
                    call_id: r.try_get("call_id")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    latency_ms: r.try_get("latency_ms")?,
                    http_status: r.try_get("http_status")?,
                    error: r.try_get("error")?,
                    voice_id: r.try_get("voice_id")?,
                })
            })
            .collect()
    }

    /// Every clone event of a call, in time order.
    pub async fn clone_events(&self, call_id: &str) -> Result<Vec<CloneEvent>, StoreError> {
        let mut out = Vec::new();
        for r in sqlx::query(
            "SELECT event_id, call_id, caller_id, voice_id, source, waited_ms, created_at FROM clone_ready_events WHERE call_id = $1",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?
        {
            out.push(CloneEvent::Ready {
                event_id: r.try_get("event_id")?,
                call_id: r.try_get("call_id")?,
                caller_id: r.try_get("caller_id")?,
                voice_id: r.try_get("voice_id")?,
                source: r.try_get("source")?,
                waited_ms: r.try_get("waited_ms")?,
                created_at: r.try_get("created_at")?,
            });
        }
        for r in sqlx::query(
            "SELECT event_id, call_id, caller_id, reason, fallback_voice_id, waited_ms, created_at FROM clone_failed_events WHERE call_id = $1",
        )
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?
        {
            out.push(CloneEvent::Failed {
                event_id: r.try_get("event_id")?,
                call_id: r.try_get("call_id")?,
                caller_id: r.try_get("caller_id")?,
                reason: r.try_get("reason")?,
                fallback_voice_id: r.try_get("fallback_voice_id")?,
                waited_ms: r.try_get("waited_ms")?,
                created_at: r.try_get("created_at")?,
            });
        }
        for r in
            sqlx::query("SELECT event_id, call_id, voice_id, waited_ms, gap_ms, created_at FROM clone_transfer_events WHERE call_id = $1")
                .bind(call_id)
                .fetch_all(&self.pool)
                .await?
        {
            out.push(CloneEvent::Transfer {
                event_id: r.try_get("event_id")?,
                call_id: r.try_get("call_id")?,
                voice_id: r.try_get("voice_id")?,
                waited_ms: r.try_get("waited_ms")?,
                gap_ms: r.try_get("gap_ms")?,
                created_at: r.try_get("created_at")?,
            });
        }
        out.sort_by_key(|e| match e {
            CloneEvent::Ready { created_at, .. } | CloneEvent::Failed { created_at, .. } | CloneEvent::Transfer { created_at, .. } => {
                *created_at
            }
        });
        Ok(out)
    }

    /// Writes a batch in one transaction (the writer's path). Every statement is
    /// idempotent, so a batch retried after an unclear failure stores nothing twice.
    pub async fn write_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        // Calls go in multi-row upserts (one round trip per 100 rows, which is what
        // keeps a distant database from falling behind); a call seen twice in the
        // batch is written once, at its highest revision.
        let mut calls: Vec<&CallRow> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for r in records {
            if let Record::Call(row) = r {
                match index.get(row.call_id.as_str()) {
                    Some(&i) if calls[i].revision < row.revision => calls[i] = row,
                    Some(_) => {}
                    None => {
                        index.insert(&row.call_id, calls.len());
                        calls.push(row);
                    }
                }
            }
        }
        let mut tx = self.pool.begin().await?;
        for chunk in calls.chunks(CALL_ROWS_PER_STATEMENT) {
            upsert_calls(&mut tx, chunk).await?;
        }
        for r in records {
            match r {
                Record::Call(_) => {}
                Record::CloneAttempt(a) => insert_clone_attempt(&mut tx, a).await?,
                Record::CloneEvent(e) => insert_clone_event(&mut tx, e).await?,
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn upsert_calls(tx: &mut Transaction<'_, Any>, rows: &[&CallRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::with_capacity(INSERT_CALL_HEAD.len() + UPSERT_CALL_TAIL.len() + rows.len() * CALL_PARAMS * 5);
    sql.push_str(INSERT_CALL_HEAD);
    for i in 0..rows.len() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for p in 0..CALL_PARAMS {
            if p > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(i * CALL_PARAMS + p + 1).to_string());
        }
        sql.push(')');
    }
    sql.push_str(UPSERT_CALL_TAIL);
    // Built from constants and placeholder numbers only: no value is interpolated.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in rows {
        q = q
            .bind(row.call_id.clone())
            .bind(row.revision)
            .bind(row.node_id.clone())
            .bind(row.protocol.clone())
            .bind(row.external_id.clone())
            .bind(row.caller.clone())
            .bind(row.callee.clone())
            .bind(row.started_at)
            .bind(row.answered_at)
            .bind(row.bridged_at)
            .bind(row.ended_at)
            .bind(row.end_reason.clone())
            .bind(row.end_status)
            .bind(row.clone_outcome.clone())
            .bind(row.voice_id.clone())
            .bind(row.conversation_id.clone())
            .bind(row.rtp_in_packets)
            .bind(row.rtp_in_lost)
            .bind(row.rtp_in_max_jitter_us)
            .bind(row.rtp_out_packets)
            .bind(row.rtp_in_mos_x100);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn insert_clone_attempt(tx: &mut Transaction<'_, Any>, a: &CloneAttempt) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO voice_clone_log (event_id, caller_id, call_id, started_at, finished_at, latency_ms, http_status, error, voice_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&a.event_id)
    .bind(&a.caller_id)
    .bind(&a.call_id)
    .bind(a.started_at)
    .bind(a.finished_at)
    .bind(a.latency_ms)
    .bind(a.http_status)
    .bind(&a.error)
    .bind(&a.voice_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_clone_event(tx: &mut Transaction<'_, Any>, e: &CloneEvent) -> Result<(), StoreError> {
    let q = match e {
        CloneEvent::Ready {
            event_id,
            call_id,
            caller_id,
            voice_id,
            source,
            waited_ms,
            created_at,
        } => sqlx::query(
            "INSERT INTO clone_ready_events (event_id, call_id, caller_id, voice_id, source, waited_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(call_id)
        .bind(caller_id)
        .bind(voice_id)
        .bind(source)
        .bind(*waited_ms)
        .bind(*created_at),
        CloneEvent::Failed {
            event_id,
            call_id,
            caller_id,
            reason,
            fallback_voice_id,
            waited_ms,
            created_at,
        } => sqlx::query(
            "INSERT INTO clone_failed_events (event_id, call_id, caller_id, reason, fallback_voice_id, waited_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(call_id)
        .bind(caller_id)
        .bind(reason)
        .bind(fallback_voice_id)
        .bind(*waited_ms)
        .bind(*created_at),
        CloneEvent::Transfer {
            event_id,
            call_id,
            voice_id,
            waited_ms,
            gap_ms,
            created_at,
        } => sqlx::query(
            "INSERT INTO clone_transfer_events (event_id, call_id, voice_id, waited_ms, gap_ms, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(call_id)
        .bind(voice_id)
        .bind(*waited_ms)
        .bind(*gap_ms)
        .bind(*created_at),
    };
    q.execute(&mut **tx).await?;
    Ok(())
}

fn stored_call(r: &AnyRow) -> Result<StoredCall, StoreError> {
    Ok(StoredCall {
        row: CallRow {
            call_id: r.try_get("call_id")?,
            revision: r.try_get("revision")?,
            node_id: r.try_get("node_id")?,
            protocol: r.try_get("protocol")?,
            external_id: r.try_get("external_id")?,
            caller: r.try_get("caller")?,
            callee: r.try_get("callee")?,
            started_at: r.try_get("started_at")?,
            answered_at: r.try_get("answered_at")?,
            bridged_at: r.try_get("bridged_at")?,
            ended_at: r.try_get("ended_at")?,
            end_reason: r.try_get("end_reason")?,
            end_status: r.try_get("end_status")?,
            clone_outcome: r.try_get("clone_outcome")?,
            voice_id: r.try_get("voice_id")?,
            conversation_id: r.try_get("conversation_id")?,
            rtp_in_packets: r.try_get("rtp_in_packets")?,
            rtp_in_lost: r.try_get("rtp_in_lost")?,
            rtp_in_max_jitter_us: r.try_get("rtp_in_max_jitter_us")?,
            rtp_out_packets: r.try_get("rtp_out_packets")?,
            rtp_in_mos_x100: r.try_get("rtp_in_mos_x100")?,
        },
        transcript: r.try_get("transcript")?,
        summary: r.try_get("summary")?,
        call_successful: r.try_get("call_successful")?,
        agent_duration_secs: r.try_get("agent_duration_secs")?,
    })
}

fn mapping(r: &AnyRow) -> Result<CallerMapping, StoreError> {
    let samples: String = r.try_get("samples")?;
    let samples: Vec<Sample> = serde_json::from_str(&samples).map_err(|e| StoreError::Corrupt(format!("samples: {e}")))?;
    let labels: String = r.try_get("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt(format!("labels: {e}")))?;
    let enabled: i64 = r.try_get("enabled")?;
    Ok(CallerMapping {
        caller_id: r.try_get("caller_id")?,
        display_name: r.try_get("display_name")?,
        samples,
        sample_hash: r.try_get("sample_hash")?,
        labels,
        enabled: enabled != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A held cluster-wide clone lock (see [`Store::try_clone_lock`]).
pub struct CloneLock {
    _conn: sqlx::pool::PoolConnection<Any>,
}

/// A stable 64-bit key for a caller id (FNV-1a), namespaced so it cannot collide
/// with other users of advisory locks that pick small integers.
fn lock_key(caller_id: &str) -> i64 {
    let h = format!("precall-clone:{caller_id}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    h as i64
}

fn cached_voice(r: &AnyRow) -> Result<CachedVoice, StoreError> {
    Ok(CachedVoice {
        caller_id: r.try_get("caller_id")?,
        voice_id: r.try_get("voice_id")?,
        sample_hash: r.try_get("sample_hash")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// What the post-call webhook stores on a call.
#[derive(Debug, Clone, PartialEq)]
pub struct PostCallResult<'a> {
    pub conversation_id: &'a str,
    pub transcript: &'a str,
    pub summary: Option<&'a str>,
    pub call_successful: Option<&'a str>,
    pub duration_secs: Option<i64>,
}

/// The admin API's statistics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Statistics {
    pub calls: i64,
    pub calls_by_outcome: std::collections::BTreeMap<String, i64>,
    pub calls_by_protocol: std::collections::BTreeMap<String, i64>,
    pub clone_outcomes: std::collections::BTreeMap<String, i64>,
    /// Successful clone requests and their latency.
    pub clones: i64,
    pub clone_ms_avg: Option<f64>,
    pub clone_ms_p95: Option<i64>,
}
