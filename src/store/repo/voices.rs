//! `caller_voice_mapping` and `voice_clone_cache`, and the cluster-wide clone
//! lock that keeps two nodes from cloning one caller.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::records::{CachedVoice, CallerMapping, Sample};
use crate::store::{Store, StoreError};

impl Store {
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
        if self.backend != crate::store::Backend::Postgres {
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
    _conn: sqlx::pool::PoolConnection<sqlx::Any>,
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
