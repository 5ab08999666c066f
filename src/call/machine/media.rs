//! The call's RTP edge: the paced media timeline (greeting, hold, agent or
//! apology frames, built into a fixed burst buffer; no allocation per packet)
//! and the caller's packets (source latching, statistics, DTMF, caller audio
//! to the agent).

use std::net::SocketAddr;
use std::time::Instant;

use super::CallMachine;
use crate::call::agent::AgentLink;
use crate::call::{CallInput, EndReason};
use crate::media::g711::G711;
use crate::media::rtp::HEADER_LEN;
use crate::media::rtp::RtpPacket;
use crate::media::session::{Latch, MAX_BURST, MAX_PACKET, RtpSender};
use crate::media::wire::WireCodec;
/// Frames built by one media-clock tick, waiting for [`CallMachine::poll_transmit`].
pub(super) struct Burst {
    pub(super) packets: [[u8; MAX_PACKET]; MAX_BURST as usize],
    pub(super) lens: [usize; MAX_BURST as usize],
    pub(super) queued: usize,
    pub(super) next: usize,
}

/// The largest gap in a stream's frame numbers counted as lost frames (2 s).
const MAX_FRAME_GAP: u16 = 100;

impl Burst {
    pub(super) fn new() -> Self {
        Burst {
            packets: [[0; MAX_PACKET]; MAX_BURST as usize],
            lens: [0; MAX_BURST as usize],
            queued: 0,
            next: 0,
        }
    }
}

impl CallMachine {
    /// The next RTP packet to send and where.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, &[u8])> {
        let b = &mut *self.burst;
        if b.next >= b.queued {
            b.queued = 0;
            b.next = 0;
            return None;
        }
        let Some(to) = self.dest else {
            b.queued = 0;
            b.next = 0;
            return None;
        };
        let i = b.next;
        b.next += 1;
        Some((to, &b.packets[i][..b.lens[i]]))
    }

    pub(super) fn start_media(&mut self, now: Instant) {
        let pt = self.negotiated.map_or(0, |n| n.payload_type);
        let mut sender = RtpSender::new(self.seeds.ssrc, pt, self.seeds.sequence, self.seeds.timestamp, now);
        match WireCodec::new(self.negotiated.is_some_and(|n| n.opus)) {
            Ok(w) => {
                sender.set_clock_rate(w.clock_rate());
                self.wire = Some(w);
            }
            Err(e) => {
                tracing::error!(call = %self.row.call_id, error = %e, "cannot start the call's codec");
                self.call.handle(now, CallInput::End(EndReason::Error(e)));
            }
        }
        self.sender = Some(sender);
        self.media_started = Some(now);
    }

    /// Builds every frame due at `now`. Whenever the clock runs it advances,
    /// negotiated or not: a deadline that stays in the past would turn the call
    /// loop without ever waiting.
    pub(super) fn media_tick(&mut self, now: Instant) {
        let Some(s) = self.sender.as_mut().filter(|_| !self.stopped) else {
            return;
        };
        let (due, skipped) = s.due(now);
        self.skipped += skipped;
        for _ in 0..skipped {
            self.player.skip();
        }
        let codec = self.negotiated.map_or(G711::Ulaw, |n| n.codec);
        let sending = self.call.sending() && self.negotiated.is_some_and(|n| n.direction.sends()) && self.dtls.is_none();
        let mut end = None;
        let burst = &mut *self.burst;
        for _ in 0..due {
            if !sending || burst.queued >= burst.packets.len() {
                // On hold the clock still runs, so the timeline resumes in step.
                self.player.skip();
                s.skip_one();
                continue;
            }
            let frame = match self.agent.as_mut() {
                Some(link) => {
                    let (payload, ends) = link.frame(now, &mut self.player, &self.apology);
                    end = end.or(ends);
                    payload
                }
                None => self.player.next_frame(codec),
            };
            let payload = match self.wire.as_mut() {
                Some(w) => w.outbound(frame),
                None => frame,
            };
            let i = burst.queued;
            // The tag's room stays free, so encryption never runs out of buffer.
            let len = s.write_next(payload, &mut burst.packets[i][..MAX_PACKET - crate::media::srtp::MAX_OVERHEAD]);
            burst.lens[i] = match self.srtp.as_mut() {
                None => len,
                Some(srtp) => match srtp.protect_rtp(&mut burst.packets[i], len) {
                    Ok(n) => n,
                    Err(e) => {
                        // Never send in clear what should be encrypted.
                        tracing::warn!(call = %self.row.call_id, error = %e, "cannot encrypt an RTP packet; not sent");
                        continue;
                    }
                },
            };
            burst.queued += 1;
        }
        self.drain_agent();
        if let Some(gap_ms) = self.agent.as_deref().and_then(AgentLink::hand_off).map(|h| h.gap_ms)
            && self.row.bridged_at.is_none()
        {
            self.record_hand_off(now, gap_ms);
        }
        if let Some(reason) = end {
            self.call.handle(now, CallInput::End(reason));
        }
    }

    pub(super) fn inbound_rtp(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        if self.awaiting_keys() {
            // Nothing is accepted in clear on a stream that will be encrypted.
            self.ignored += 1;
            return;
        }
        if self.srtp.is_none() {
            return self.inbound_plain_rtp(data, from, now);
        }
        // Authenticate before anything else sees the packet: a forged or
        // replayed packet must not latch the media address nor reach the agent.
        let mut plain = std::mem::take(&mut self.plain);
        let result = self.srtp.as_mut().map(|s| s.unprotect_rtp(data, &mut plain));
        match result {
            Some(Ok(n)) => self.inbound_plain_rtp(&plain[..n], from, now),
            Some(Err(e)) => {
                tracing::trace!(call = %self.row.call_id, error = %e, "SRTP packet dropped");
                self.ignored += 1;
            }
            None => {}
        }
        self.plain = plain;
    }

    fn inbound_plain_rtp(&mut self, data: &[u8], from: SocketAddr, now: Instant) {
        let Ok(packet) = RtpPacket::parse(data) else {
            self.receiver.count_malformed();
            return;
        };
        let header = packet.header;
        let event_pt = self.negotiated.and_then(|n| n.telephone_event);
        let payload_ok = self
            .negotiated
            .is_some_and(|n| header.payload_type == n.payload_type || Some(header.payload_type) == event_pt);
        let Latch::Accept { send_to } = self.latch.on_packet(now, from, &header, payload_ok) else {
            self.ignored += 1;
            return;
        };
        // Symmetric RTP (comedia): answer where the caller's media comes from.
        if self.dest != Some(send_to) {
            tracing::debug!(call = %self.row.call_id, sdp = ?self.dest, actual = %send_to, "latching RTP to the caller's source address");
            self.dest = Some(send_to);
        }
        self.receiver.on_packet(now, &packet);
        self.call.on_rtp(now);
        if Some(header.payload_type) == event_pt {
            if let Some(digit) = self.dtmf.on_packet(header.timestamp, packet.payload) {
                self.digit(digit);
            }
        } else if let Some(link) = self.agent.as_mut() {
            let payload = match self.wire.as_mut().and_then(|w| w.inbound(packet.payload, &mut self.inbound)) {
                Some(transcoded) => transcoded,
                None => packet.payload,
            };
            link.caller_packet(now, header.sequence, payload);
            self.drain_agent();
        }
    }

    /// A caller frame from a [`super::MediaEdge::Frames`] edge: activity for
    /// the call's timers, and audio for the agent.
    pub(super) fn inbound_frame(&mut self, seq: u16, payload: &[u8], now: Instant) {
        self.call.on_rtp(now);
        let s = &mut self.frames_in;
        s.packets += 1;
        s.bytes += payload.len() as u64;
        let step = self.last_frame.map_or(1, |last| seq.wrapping_sub(last));
        // A step beyond this is a restart of the numbering, not a loss.
        if (1..=MAX_FRAME_GAP).contains(&step) {
            s.expected += u64::from(step);
            s.lost += u64::from(step - 1);
            self.last_frame = Some(seq);
        } else if step > MAX_FRAME_GAP && step < u16::MAX / 2 {
            s.expected += 1;
            s.resyncs += 1;
            self.last_frame = Some(seq);
        }
        if let Some(link) = self.agent.as_mut() {
            link.caller_packet(now, seq, payload);
            self.drain_agent();
        }
    }

    /// A digit the caller pressed (RFC 4733 or out of band): kept for the log,
    /// and context for the agent.
    pub(super) fn digit(&mut self, digit: char) {
        tracing::debug!(call = %self.row.call_id, %digit, "DTMF");
        if self.digits.len() < 64 {
            self.digits.push(digit);
        }
        if let Some(link) = self.agent.as_mut() {
            link.digit(digit);
        }
        self.drain_agent();
    }

    /// The next frame's payload, for a [`super::MediaEdge::Frames`] edge (the
    /// stream has its own framing; the RTP header is ours alone).
    pub fn poll_frame(&mut self) -> Option<&[u8]> {
        let b = &mut *self.burst;
        if b.next >= b.queued {
            b.queued = 0;
            b.next = 0;
            return None;
        }
        let i = b.next;
        b.next += 1;
        Some(&b.packets[i][HEADER_LEN..b.lens[i]])
    }
}
