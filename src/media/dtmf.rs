//! RFC 4733 telephone-events received from the caller: one digit per event,
//! reported on the event's first packet (lowest latency), with the retransmitted
//! end packets and the repeated updates of the same event ignored.

/// The named events of RFC 4733 §3.2 that a phone sends: 0–9, *, #, A–D, flash.
pub fn event_char(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        16 => Some('!'),
        _ => None,
    }
}

/// Tracks the current event so each key press yields one digit.
#[derive(Debug, Clone, Default)]
pub struct DtmfReceiver {
    /// RTP timestamp of the event being received (same for all its packets).
    current: Option<u32>,
}

impl DtmfReceiver {
    /// Feeds one telephone-event payload with its RTP timestamp; returns the
    /// digit when this packet starts a new event.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let [event, _flags, _, _] = *payload.get(..4)? else { return None };
        if self.current == Some(timestamp) {
            return None;
        }
        self.current = Some(timestamp);
        event_char(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_digit_per_event_despite_updates_and_end_retransmissions() {
        let mut r = DtmfReceiver::default();
        let mut got = String::new();
        // Event 1: three updates, then the end packet sent three times (§2.5.1.4).
        for (ts, payload) in [
            (1000, [1, 0x0a, 0x00, 0xa0]),
            (1000, [1, 0x0a, 0x01, 0x40]),
            (1000, [1, 0x0a, 0x01, 0xe0]),
            (1000, [1, 0x8a, 0x03, 0x20]),
            (1000, [1, 0x8a, 0x03, 0x20]),
            (1000, [1, 0x8a, 0x03, 0x20]),
            (3000, [11, 0x0a, 0x00, 0xa0]),
            (3000, [11, 0x8a, 0x03, 0x20]),
            (5000, [10, 0x8a, 0x00, 0xa0]),
            (7000, [14, 0x0a, 0x00, 0xa0]),
        ] {
            if let Some(c) = r.on_packet(ts, &payload) {
                got.push(c);
            }
        }
        assert_eq!(got, "1#*C");
        assert_eq!(r.on_packet(9000, &[1, 2]), None, "short payloads are ignored");
        assert_eq!(r.on_packet(9000, &[200, 0, 0, 0]), None, "unknown events are ignored");
        assert_eq!(event_char(16), Some('!'));
    }
}
