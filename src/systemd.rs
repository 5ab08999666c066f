//! systemd integration: `READY=1` once the daemon can serve, `STATUS=` lines
//! with live calls, `WATCHDOG=1` pings only while the SIP task is making
//! progress, and `STOPPING=1` on shutdown. Everything is a no-op when not run by
//! systemd (no `NOTIFY_SOCKET`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::server::Stats;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn reloading(status: &str) {
    send(&[NotifyState::Reloading, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn status_line(stats: &Stats) -> String {
    let draining = if stats.draining.load(Ordering::Relaxed) { "draining; " } else { "" };
    format!(
        "{draining}{} live calls, {} answered since start, {} refused",
        stats.live_calls.load(Ordering::Relaxed),
        stats.calls_total.load(Ordering::Relaxed),
        stats.calls_rejected.load(Ordering::Relaxed)
    )
}

/// The watchdog interval systemd asked for, as `sd_watchdog_enabled(3)` reads it:
/// `WATCHDOG_USEC`, for us unless `WATCHDOG_PID` names another process. (The
/// `sd-notify` crate also requires `WATCHDOG_PID` to be set, which libsystemd
/// does not.)
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `STATUS=` every 10 s, and `WATCHDOG=1` at half the watchdog interval
/// when systemd asked for one, but only if the SIP task's heartbeat moved since
/// the last ping: a stalled SIP task gets the daemon restarted.
pub fn spawn_status_and_watchdog(stats: Arc<Stats>) {
    let watchdog = watchdog_interval().map(|d| d / 2);
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let every = watchdog.map_or(Duration::from_secs(10), |w| w.min(Duration::from_secs(10)));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut last_beat = u64::MAX;
        let mut last_status = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            tick.tick().await;
            let beat = stats.heartbeat.load(Ordering::Relaxed);
            if watchdog.is_some() {
                if beat != last_beat && stats.sip_alive.load(Ordering::Relaxed) {
                    send(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!("SIP task made no progress for a watchdog period; not pinging systemd");
                }
            }
            last_beat = beat;
            if last_status.elapsed() >= Duration::from_secs(10) {
                status(&status_line(&stats));
                last_status = std::time::Instant::now();
            }
        }
    });
}
