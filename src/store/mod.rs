//! The call and clone audit trail in SQL, through sqlx's `Any` driver so one code
//! path serves the embedded SQLite default and PostgreSQL in production.
//!
//! Nothing outside this module writes SQL. The call path never waits for the
//! database: it hands [`Record`]s to the [`writer`], which batches them, retries
//! with backoff while the database is away, and spills to a local file past its
//! memory bound.

pub mod records;
mod repo;
pub mod samples;
pub mod writer;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use thiserror::Error;

pub use records::{CachedVoice, CallRow, CallerMapping, CloneAttempt, CloneEvent, Record, Sample};
pub use repo::{CloneLock, PostCallResult, Statistics};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored value is not what precall wrote: {0}")]
    Corrupt(String),
    #[error("cannot create the data directory {path}: {error}")]
    DataDir { path: String, error: std::io::Error },
}

impl StoreError {
    /// Whether retrying later can succeed (the database is unreachable or busy),
    /// as opposed to the database refusing this statement.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(_)) => false,
            StoreError::Database(_) | StoreError::Migrate(_) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }
}

/// A pool on one backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects now (for the CLI and tests: errors surface at once).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let (options, backend) = Self::options(url, max_connections)?;
        let pool = options.connect(url).await?;
        Ok(Store { pool, backend })
    }

    /// A pool that connects on first use, so the daemon starts (and answers calls)
    /// even while the database is down; the writer retries until it is back.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let (options, backend) = Self::options(url, max_connections)?;
        let pool = options.connect_lazy(url)?;
        Ok(Store { pool, backend })
    }

    fn options(url: &str, max_connections: u32) -> Result<(AnyPoolOptions, Backend), StoreError> {
        install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        options = match backend {
            // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY and
            // keeps `sqlite::memory:` a single database.
            Backend::Sqlite => options
                .max_connections(1)
                .min_connections(0)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
                            .await?;
                        Ok(())
                    })
                }),
            Backend::Postgres => options.max_connections(max_connections.max(1)),
        };
        Ok((options, backend))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the backend's migrations; applying them again is a no-op.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Runs one literal statement. Tests use it to make the database misbehave;
    /// production code goes through the typed functions in `repo`.
    #[doc(hidden)]
    pub async fn execute_raw_for_tests(&self, sql: &'static str) -> Result<(), StoreError> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The URL with any password replaced, for messages and `check-config`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:********{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch, UTC: how every timestamp is stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_redaction() {
        assert_eq!(Backend::from_url("sqlite://data/precall.db?mode=rwc").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("postgres://u:p@h/db").unwrap(), Backend::Postgres);
        assert!(matches!(Backend::from_url("mysql://x"), Err(StoreError::UnsupportedUrl(_))));
        assert_eq!(
            redact("postgres://user:secret@db:5432/precall"),
            "postgres://user:********@db:5432/precall"
        );
        assert_eq!(redact("postgres://user@db/precall"), "postgres://user@db/precall");
        assert_eq!(redact("sqlite://data/precall.db"), "sqlite://data/precall.db");
    }
}
