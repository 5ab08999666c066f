//! Accepting connections when `accept` fails. Out of file descriptors, a
//! listener fails every call at once: retrying immediately spins a core and
//! floods the log. Both listeners (SIP over TCP, HTTP) back off exponentially
//! from 10 ms to 1 s, log once per back-off cycle, and count each cycle.

use std::time::Duration;

/// The back-off state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    /// Names the listener in the log line.
    listener: &'static str,
    /// The counter of failure cycles in `/metrics`.
    counter: &'static str,
}

impl AcceptBackoff {
    pub fn new(listener: &'static str, counter: &'static str) -> Self {
        AcceptBackoff {
            delay: Duration::ZERO,
            listener,
            counter,
        }
    }

    /// A connection was accepted: the next failure starts a new cycle.
    pub fn accepted(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// `accept` failed: waits before the next try (doubling, 10 ms to 1 s).
    pub async fn failed(&mut self, error: &std::io::Error) {
        if self.delay.is_zero() {
            tracing::warn!(listener = self.listener, %error, "accept failed; backing off");
            metrics::counter!(self.counter).increment(1);
        }
        tokio::time::sleep(self.next_delay()).await;
    }

    fn next_delay(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_doubling_to_a_second_and_resets() {
        let mut b = AcceptBackoff::new("test", "precall_test_accept_errors_total");
        let waits: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.accepted();
        assert_eq!(b.next_delay().as_millis(), 10);
    }
}
