//! The integration suite, one binary: the daemon over real sockets (SIP, RTP,
//! HTTP, WebSocket), the CLI, SQLite and PostgreSQL, and the RFC 4475 torture
//! messages. One binary links once and runs every test on one thread pool
//! (matklad's "delete cargo integration tests"); `tests/timing.rs` (run alone,
//! in release) and `tests/opus.rs` (a feature) stay on their own.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod bridge;
mod calls;
mod cli;
mod clone;
mod guard;
mod http;
mod inbound_auth;
mod outage;
mod properties;
mod register;
mod rfc4475;
mod session_timer;
mod store;
mod systemd;
mod tls;
