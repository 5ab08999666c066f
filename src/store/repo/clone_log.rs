//! `voice_clone_log` (every clone request) and the clone event tables.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::store::records::{CloneAttempt, CloneEvent};
use crate::store::{Store, StoreError};
use Kind::{Int, Text};

impl Store {
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
        for table in &EVENT_TABLES {
            let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
            let sql = format!("SELECT {} FROM {} WHERE call_id = $1", columns.join(", "), table.name);
            // Built from the constant table descriptions only.
            for row in sqlx::query(sqlx::AssertSqlSafe(sql)).bind(call_id).fetch_all(&self.pool).await? {
                out.push(table.read(&row)?);
            }
        }
        out.sort_by_key(|e| match e {
            CloneEvent::Ready { created_at, .. } | CloneEvent::Failed { created_at, .. } | CloneEvent::Transfer { created_at, .. } => {
                *created_at
            }
        });
        Ok(out)
    }
}

pub(super) async fn insert_clone_attempt(tx: &mut Transaction<'_, Any>, a: &CloneAttempt) -> Result<(), StoreError> {
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

pub(super) async fn insert_clone_event(tx: &mut Transaction<'_, Any>, e: &CloneEvent) -> Result<(), StoreError> {
    let (table, fields) = EventTable::of(e)?;
    let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (event_id) DO NOTHING",
        table.name,
        columns.join(", "),
        placeholders.join(", ")
    );
    // Built from the constant table descriptions only: values are bound.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (column, kind) in table.columns {
        let value = fields.get(*column);
        q = match kind {
            Kind::Int => q.bind(value.and_then(serde_json::Value::as_i64)),
            Kind::Text => q.bind(value.and_then(serde_json::Value::as_str).map(str::to_owned)),
        };
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// How a column is stored.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
}

/// One clone event table: the [`CloneEvent`] variant it holds (its serde tag)
/// and its columns, named as the variant's fields. The INSERT and the SELECT
/// are both built from this, so the three tables cannot drift apart.
struct EventTable {
    name: &'static str,
    variant: &'static str,
    columns: &'static [(&'static str, Kind)],
}

// One line a column reads as the schema does; rustfmt would spread each
// table over a screen.
#[rustfmt::skip]
const EVENT_TABLES: [EventTable; 3] = [
    EventTable { name: "clone_ready_events", variant: "Ready", columns: &[
        ("event_id", Text), ("call_id", Text), ("caller_id", Text), ("voice_id", Text),
        ("source", Text), ("waited_ms", Int), ("created_at", Int),
    ] },
    EventTable { name: "clone_failed_events", variant: "Failed", columns: &[
        ("event_id", Text), ("call_id", Text), ("caller_id", Text), ("reason", Text),
        ("fallback_voice_id", Text), ("waited_ms", Int), ("created_at", Int),
    ] },
    EventTable { name: "clone_transfer_events", variant: "Transfer", columns: &[
        ("event_id", Text), ("call_id", Text), ("voice_id", Text),
        ("waited_ms", Int), ("gap_ms", Int), ("created_at", Int),
    ] },
];

impl EventTable {
    /// The table an event goes to, and its fields by name.
    fn of(e: &CloneEvent) -> Result<(&'static EventTable, serde_json::Map<String, serde_json::Value>), StoreError> {
        let serde_json::Value::Object(fields) = serde_json::to_value(e).map_err(|err| StoreError::Corrupt(err.to_string()))? else {
            return Err(StoreError::Corrupt("a clone event is not an object".into()));
        };
        let variant = fields.get(TAG).and_then(serde_json::Value::as_str).unwrap_or_default();
        let table = EVENT_TABLES
            .iter()
            .find(|t| t.variant == variant)
            .ok_or_else(|| StoreError::Corrupt(format!("no table for clone event {variant:?}")))?;
        Ok((table, fields))
    }

    /// A row of this table as its event.
    fn read(&self, row: &AnyRow) -> Result<CloneEvent, StoreError> {
        let mut fields = serde_json::Map::new();
        fields.insert(TAG.into(), self.variant.into());
        for (column, kind) in self.columns {
            let value = match kind {
                Kind::Int => row.try_get::<Option<i64>, _>(*column)?.map(serde_json::Value::from),
                Kind::Text => row.try_get::<Option<String>, _>(*column)?.map(serde_json::Value::from),
            };
            fields.insert((*column).into(), value.unwrap_or(serde_json::Value::Null));
        }
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| StoreError::Corrupt(format!("{}: {e}", self.name)))
    }
}

/// `CloneEvent`'s serde tag (`#[serde(tag = "kind")]`).
const TAG: &str = "kind";
