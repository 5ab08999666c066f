//! `call_log` and what hangs off it: node heartbeats, the post-call webhook's
//! results and deliveries, and the admin statistics.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::store::records::{CallRow, StoredCall};
use crate::store::{Store, StoreError};

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
pub(super) const CALL_ROWS_PER_STATEMENT: usize = 100;

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
            .bind(crate::store::now_ms())
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
        let now = crate::store::now_ms();
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
}

pub(super) async fn upsert_calls(tx: &mut Transaction<'_, Any>, rows: &[&CallRow]) -> Result<(), StoreError> {
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
