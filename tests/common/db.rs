//! Databases for tests: a fresh SQLite file, or a fresh PostgreSQL database on the
//! server at `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped afterwards. When no PostgreSQL answers, the PostgreSQL half of a test is
//! skipped with a message, unless `REQUIRE_POSTGRES_TESTS=1` (set by `.ci/run`),
//! which turns the absence into a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn required() -> bool {
    std::env::var("REQUIRE_POSTGRES_TESTS").is_ok_and(|v| v == "1")
}

/// A fresh PostgreSQL database, dropped on `drop_db`.
pub struct PgDb {
    pub url: String,
    pub name: String,
    /// host:port of the server, for the outage proxy.
    pub server: SocketAddr,
}

/// Creates a fresh database, or `None` (with a note) when no server is there.
pub async fn fresh_postgres(label: &str) -> Option<PgDb> {
    sqlx::any::install_default_drivers();
    let admin = admin_url();
    let mut conn = match sqlx::AnyConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !required(),
                "PostgreSQL is required (REQUIRE_POSTGRES_TESTS=1) but {admin} is unreachable: {e}"
            );
            eprintln!(
                "note: skipping the PostgreSQL half of {label}: {admin} unreachable ({e}); set REQUIRE_POSTGRES_TESTS=1 to fail instead"
            );
            return None;
        }
    };
    let name = format!("precall_test_{}_{:x}", label, rand_suffix());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
    let hostport = base
        .rsplit('@')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .trim_start_matches("postgres://")
        .to_owned();
    let server = tokio::net::lookup_host(hostport.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| "127.0.0.1:5432".parse().unwrap());
    Some(PgDb {
        url: format!("{base}/{name}"),
        name,
        server,
    })
}

impl PgDb {
    pub async fn drop_db(self) {
        let Ok(mut conn) = sqlx::AnyConnection::connect(&admin_url()).await else {
            return;
        };
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }

    /// The URL with host and port replaced (to go through a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (scheme_user, rest) = self.url.split_once('@').expect("url has user@host");
        let db = rest.split_once('/').map_or("", |(_, d)| d);
        format!("{scheme_user}@{addr}/{db}")
    }
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// A TCP proxy that can cut the database off: while paused it closes every live
/// connection and refuses new ones, exactly what a database restart or a network
/// partition looks like to the pool.
pub struct Proxy {
    pub addr: SocketAddr,
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (paused, conns) = (paused.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if paused.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    conns.lock().await.push(task);
                }
            })
        };
        Proxy {
            addr,
            paused,
            conns,
            accept,
        }
    }

    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        for task in self.conns.lock().await.drain(..) {
            task.abort();
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
