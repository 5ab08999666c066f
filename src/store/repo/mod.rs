//! Typed repository functions: the only SQL in precall, one file per table
//! family. Portable between SQLite and PostgreSQL: `$N` placeholders,
//! `ON CONFLICT` upserts, BIGINT timestamps and flags.

mod calls;
mod clone_log;
mod voices;

pub use calls::{PostCallResult, Statistics};
pub use voices::CloneLock;

use calls::{CALL_ROWS_PER_STATEMENT, upsert_calls};
use clone_log::{insert_clone_attempt, insert_clone_event};

use super::records::{CallRow, Record};
use super::{Store, StoreError};

impl Store {
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
