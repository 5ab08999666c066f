//! The record writer: the only path from the call path to the database.
//!
//! The call path calls [`RecordSink::submit`], which never waits. The writer task
//! drains the queue into memory at once, whatever the database is doing, and
//! writes batches in transactions. While the database is away it retries with
//! exponential backoff (capped), keeps up to `memory_limit` records in memory and
//! appends the rest to a spill file (JSON lines) in the data directory; once the
//! database is back, memory goes first, then the spill file. Every statement is
//! idempotent (revisioned upserts, unique event ids), so a replay stores nothing
//! twice. On start the writer first replays a spill file left by an earlier run,
//! then closes calls this node left open (`daemon_restart`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::records::{CallRow, Record};

/// How often the writer records that this node is alive (`node_heartbeats`).
const HEARTBEAT: Duration = Duration::from_secs(10);
use super::{Store, StoreError, now_ms};

/// How the writer behaves; from `[database]` settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Records queued between the call path and the writer.
    pub queue: usize,
    /// Records kept in memory while the database is away; the rest spill to disk.
    pub memory_limit: usize,
    /// Largest batch per transaction.
    pub batch: usize,
    pub spill_file: PathBuf,
    pub node_id: String,
    pub auto_migrate: bool,
    pub max_backoff: Duration,
}

/// Counters for health and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub spilled: AtomicU64,
    pub pending: AtomicU64,
    /// Records the database refused (kept in `rejected.jsonl`).
    pub rejected: AtomicU64,
}

/// The call path's handle: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct RecordSink {
    tx: mpsc::Sender<Command>,
    pub stats: Arc<WriterStats>,
}

enum Command {
    Write(Box<Record>),
    /// Reply once everything submitted before this is in the database.
    Flush(oneshot::Sender<()>),
    /// Write what can be written before the deadline, spill the rest, reply, stop.
    Shutdown(tokio::time::Instant, oneshot::Sender<()>),
}

impl RecordSink {
    /// A new revision of a live call's record: bump the revision, apply
    /// `change`, submit a copy. The one way both ingresses update `call_log`
    /// while a call runs, so no path can forget the bump (the upsert ignores a
    /// row whose revision is not higher than the stored one).
    pub fn revise(&self, row: &mut CallRow, change: impl FnOnce(&mut CallRow)) {
        row.revision += 1;
        change(row);
        self.submit(Record::Call(Box::new(row.clone())));
    }

    /// The last revision of a call's record (its end), taken by value.
    pub fn submit_final(&self, mut row: CallRow) {
        row.revision += 1;
        self.submit(Record::Call(Box::new(row)));
    }

    /// Hands a record to the writer. If the queue is full (the writer is stuck on
    /// a slow disk), a task carries the record instead of the caller waiting: the
    /// number of such tasks is bounded by the calls in flight.
    pub fn submit(&self, record: Record) {
        match self.tx.try_send(Command::Write(Box::new(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("record writer is gone; a record was not stored");
            }
        }
    }

    /// Stops the writer: records reach the database if it answers within
    /// `timeout`, and the spill file otherwise, so nothing is lost at shutdown.
    pub async fn shutdown(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        if self.tx.send(Command::Shutdown(deadline, tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout + Duration::from_secs(2), rx).await;
        }
    }

    /// Waits until everything submitted so far is in the database (tests, health).
    /// Gives up after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).await.is_err() {
            return false;
        }
        tokio::time::timeout(timeout, rx).await.is_ok_and(|r| r.is_ok())
    }
}

/// Starts the writer task on `store`.
pub fn spawn(store: Store, config: WriterConfig) -> RecordSink {
    let (tx, rx) = mpsc::channel(config.queue.max(16));
    let stats = Arc::new(WriterStats::default());
    let writer = Writer {
        store,
        config,
        rx,
        pending: VecDeque::new(),
        stats: stats.clone(),
        flushes: Vec::new(),
        ready: false,
        shutdown: None,
    };
    tokio::spawn(writer.run());
    RecordSink { tx, stats }
}

struct Writer {
    store: Store,
    config: WriterConfig,
    rx: mpsc::Receiver<Command>,
    pending: VecDeque<Record>,
    stats: Arc<WriterStats>,
    flushes: Vec<oneshot::Sender<()>>,
    /// Migrations applied and crash leftovers closed.
    ready: bool,
    shutdown: Option<(tokio::time::Instant, oneshot::Sender<()>)>,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut open = true;
        // The first beat comes once the crash leftovers are closed (they use the last one).
        let mut next_beat = tokio::time::Instant::now();
        loop {
            // Take everything queued, without waiting.
            while let Ok(cmd) = self.rx.try_recv() {
                self.accept(cmd);
            }
            if self.pending.is_empty() && self.spill_len() == 0 && self.ready {
                self.answer_flushes();
                if let Some((_, reply)) = self.shutdown.take() {
                    let _ = reply.send(());
                    return;
                }
                if !open {
                    return;
                }
                let beat_due = tokio::time::sleep_until(next_beat);
                tokio::select! {
                    cmd = self.rx.recv() => match cmd {
                        Some(cmd) => self.accept(cmd),
                        None => open = false,
                    },
                    _ = beat_due => {}
                }
                if tokio::time::Instant::now() >= next_beat {
                    next_beat = tokio::time::Instant::now() + HEARTBEAT;
                    if let Err(e) = self.store.beat(&self.config.node_id, now_ms()).await {
                        tracing::debug!(error = %e, "node heartbeat not written");
                    }
                }
                continue;
            }
            if self
                .shutdown
                .as_ref()
                .is_some_and(|(deadline, _)| tokio::time::Instant::now() >= *deadline)
            {
                self.spill_all_and_stop();
                return;
            }
            let step = match self.shutdown.as_ref().map(|(d, _)| *d) {
                Some(deadline) => tokio::time::timeout_at(deadline, self.step())
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Corrupt("shutdown deadline".into()))),
                None => self.step().await,
            };
            match step {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, pending = self.pending.len(), spill_bytes = self.spill_len(), retry_in_ms = backoff.as_millis() as u64, "database write failed; keeping records and retrying");
                    // Keep draining the queue while we wait, so the call path never backs up.
                    let wait = match &self.shutdown {
                        Some((deadline, _)) => backoff.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                        None => backoff,
                    };
                    let sleep = tokio::time::sleep(wait);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            cmd = self.rx.recv(), if open => match cmd {
                                Some(cmd) => self.accept(cmd),
                                None => open = false,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
            self.stats.pending.store(self.pending.len() as u64, Ordering::Relaxed);
        }
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Write(record) => {
                if self.pending.len() < self.config.memory_limit {
                    self.pending.push_back(*record);
                } else if let Err(e) = self.spill(&record) {
                    tracing::error!(error = %e, "cannot spill a record to disk; it is lost");
                }
            }
            Command::Flush(reply) => self.flushes.push(reply),
            Command::Shutdown(deadline, reply) => self.shutdown = Some((deadline, reply)),
        }
    }

    /// The database did not come back in time: keep everything on disk for the
    /// next start.
    fn spill_all_and_stop(&mut self) {
        let pending: Vec<Record> = self.pending.drain(..).collect();
        let mut lost = 0;
        for r in &pending {
            if self.spill(r).is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::error!(lost, "could not spill records at shutdown");
        } else if !pending.is_empty() {
            tracing::warn!(records = pending.len(), file = %self.config.spill_file.display(), "database unreachable at shutdown; records kept in the spill file");
        }
        if let Some((_, reply)) = self.shutdown.take() {
            let _ = reply.send(());
        }
    }

    /// One unit of work: get ready, then write a batch from memory or the spill file.
    async fn step(&mut self) -> Result<(), StoreError> {
        if !self.ready {
            if self.config.auto_migrate {
                self.store.migrate().await?;
            }
            self.replay_spill().await?;
            let closed = self
                .store
                .close_open_calls(&self.config.node_id, "daemon_restart", now_ms())
                .await?;
            if closed > 0 {
                tracing::warn!(closed, node = %self.config.node_id, "closed calls left open by an earlier run");
            }
            self.ready = true;
            return Ok(());
        }
        if !self.pending.is_empty() {
            let n = self.pending.len().min(self.config.batch);
            let batch: Vec<Record> = self.pending.range(..n).cloned().collect();
            self.write(&batch).await?;
            self.pending.drain(..n);
            return Ok(());
        }
        self.replay_spill().await
    }

    /// Writes a batch; if the database refuses it (not merely unreachable), writes
    /// the records one by one and sets aside any it refuses, so one bad record
    /// cannot hold up every call after it.
    async fn write(&mut self, batch: &[Record]) -> Result<(), StoreError> {
        match self.store.write_batch(batch).await {
            Ok(()) => {
                self.stats.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "database refused a batch; writing its records one by one");
                for record in batch {
                    match self.store.write_batch(std::slice::from_ref(record)).await {
                        Ok(()) => {
                            self.stats.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => self.set_aside(record, &e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Keeps a record the database refuses in `rejected.jsonl` beside the spill
    /// file, for an operator to inspect and replay.
    fn set_aside(&mut self, record: &Record, error: &StoreError) {
        let path = self.config.spill_file.with_file_name("rejected.jsonl");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let line = serde_json::json!({ "error": error.to_string(), "record": record });
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => tracing::error!(error = %error, file = %path.display(), "database refused a record; kept aside"),
            Err(io) => tracing::error!(error = %error, io = %io, "database refused a record and it could not be kept aside"),
        }
    }

    fn spill(&mut self, record: &Record) -> std::io::Result<()> {
        if let Some(dir) = self.config.spill_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&self.config.spill_file)?;
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        self.stats.spilled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn spill_len(&self) -> u64 {
        std::fs::metadata(&self.config.spill_file).map_or(0, |m| m.len())
    }

    /// Writes the spill file's records in batches, then removes it. The file is
    /// renamed first, so records spilled meanwhile go to a fresh file; a crash
    /// midway leaves the renamed file, which the next start replays again.
    async fn replay_spill(&mut self) -> Result<(), StoreError> {
        let replay = self.config.spill_file.with_extension("replay");
        if !replay.exists() {
            if self.spill_len() == 0 {
                return Ok(());
            }
            std::fs::rename(&self.config.spill_file, &replay).map_err(|e| StoreError::Corrupt(format!("spill file: {e}")))?;
        }
        let records = read_spill(&replay).map_err(|e| StoreError::Corrupt(format!("spill file: {e}")))?;
        tracing::info!(records = records.len(), "replaying spilled records");
        for chunk in records.chunks(self.config.batch) {
            self.write(chunk).await?;
        }
        let _ = std::fs::remove_file(&replay);
        Ok(())
    }

    fn answer_flushes(&mut self) {
        for reply in self.flushes.drain(..) {
            let _ = reply.send(());
        }
    }
}

fn read_spill(path: &Path) -> std::io::Result<Vec<Record>> {
    let reader = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            // A torn last line from a crash mid-write: skip it, keep the rest.
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable spilled record"),
        }
    }
    Ok(out)
}
