//! Deadline arithmetic that cannot panic.
//!
//! `Instant + Duration` panics on overflow, and several durations come from
//! peers (a `Session-Expires` of 2^64-1 once took the SIP task down). Every
//! deadline that depends on a value a peer or an operator chose goes through
//! [`after`], which saturates at a far but representable instant instead.

use std::time::{Duration, Instant};

/// Deadlines further out than this are treated as "never" (about 30 years).
pub const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `now + wait`, saturating at `now + NEVER`.
#[inline]
pub fn after(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(NEVER))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Whole seconds from a peer's header, clamped to `max` (a value longer than
/// `u64` digits saturates rather than failing).
pub fn clamp_secs(digits: &str, max: Duration) -> Option<Duration> {
    let digits = digits.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(max))
}

/// Counts the turns a loop takes without waiting. An event loop may legitimately
/// do a little work several times in a row (a frame that is already due), never
/// thousands of times: past `limit` the loop must wait, and the spin is logged
/// and counted (`precall_loop_spins_total`), so a path that forgets to advance
/// its deadline costs a millisecond per turn instead of a whole worker thread.
#[derive(Debug)]
pub struct SpinGuard {
    name: &'static str,
    turns: u32,
    limit: u32,
}

impl SpinGuard {
    pub const fn new(name: &'static str, limit: u32) -> Self {
        SpinGuard { name, turns: 0, limit }
    }

    /// A turn that did not wait. `true` when the loop must now wait.
    #[must_use]
    pub fn turned(&mut self) -> bool {
        self.turns = self.turns.saturating_add(1);
        if self.turns < self.limit {
            return false;
        }
        self.turns = 0;
        tracing::error!(
            task = self.name,
            limit = self.limit,
            "a loop turned without waiting; forcing a pause (this is a bug)"
        );
        metrics::counter!("precall_loop_spins_total", "task" => self.name).increment(1);
        true
    }

    /// The loop waited (a timer or a socket).
    pub fn waited(&mut self) {
        self.turns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_loop_is_made_to_wait() {
        let mut g = SpinGuard::new("test", 3);
        assert!(!g.turned());
        assert!(!g.turned());
        assert!(g.turned());
        assert!(!g.turned());
        g.waited();
        assert!(!g.turned());
    }

    #[test]
    fn huge_waits_saturate() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
    }

    #[test]
    fn seconds_are_clamped_not_rejected() {
        let max = Duration::from_secs(100);
        assert_eq!(clamp_secs("18446744073709551615", max), Some(max));
        assert_eq!(clamp_secs("999999999999999999999999999", max), Some(max));
        assert_eq!(clamp_secs(" 90 ", max), Some(Duration::from_secs(90)));
        assert_eq!(clamp_secs("-1", max), None);
        assert_eq!(clamp_secs("", max), None);
        assert_eq!(clamp_secs("1e9", max), None);
    }
}
