//! Offer/answer after admission: the ACK's answer to a delayed offer, re-INVITE
//! and UPDATE offers (hold, codec or address changes), offerless re-INVITEs.

use std::time::Instant;

use super::{CallMachine, Output};
use crate::call::CallInput;
use crate::media::srtp::{SrtpParams, SrtpSession};
use crate::sip::message::Rejection;
use crate::sip::sdp::{self, Direction, Negotiated, SessionDescription};
impl CallMachine {
    /// The answer an ACK carries: to our offer in the 200 of a delayed-offer
    /// INVITE (the call starts here), or of an offerless re-INVITE mid-call (the
    /// session stays as it is unless the answer is a valid echo of our offer).
    pub(super) fn ack_answer(&mut self, body: &[u8], now: Instant) {
        let mid_call = self.call.confirmed_at().is_some();
        let current = self.negotiated.filter(|_| mid_call);
        let answer = SessionDescription::parse(body).and_then(|sd| sdp::accept_answer(&sd, &self.local, current.as_ref()));
        let n = match (answer, self.negotiated) {
            (Ok(n), Some(old)) if mid_call && (n.codec, n.opus) != (old.codec, old.opus) => {
                tracing::info!(call = %self.row.call_id, "re-INVITE answer names a codec we did not offer; keeping the session");
                return;
            }
            (Ok(n), _) => n,
            (Err(e), _) if mid_call => {
                tracing::info!(call = %self.row.call_id, error = %e, "re-INVITE's ACK carried no usable answer; keeping the session");
                return;
            }
            (Err(e), _) => {
                tracing::info!(call = %self.row.call_id, error = %e, "ACK carried no usable SDP answer; ending the call");
                self.call.handle(now, CallInput::ConfirmedWithoutAnswer);
                return;
            }
        };
        self.negotiated = Some(n);
        self.install_srtp(now, &n);
        self.renegotiated(&n, now);
        self.call.handle(now, CallInput::Negotiated);
        self.call.handle(now, CallInput::Confirmed);
        self.set_direction(now, n.direction);
    }

    pub(super) fn reoffer(&mut self, body: &[u8]) -> Result<(Negotiated, String), Rejection> {
        self.local.version += 1;
        if body.is_empty() {
            // An offerless re-INVITE: offer the session as it stands (the answer
            // comes in the ACK).
            let n = self
                .negotiated
                .ok_or_else(|| Rejection::new(488, "Not Acceptable Here: no media yet"))?;
            return Ok((n, sdp::reoffer(&self.local, &n)));
        }
        let sd = SessionDescription::parse(body).map_err(|e| e.rejection())?;
        let (n, answer) = sdp::answer(&sd, &self.local).map_err(|e| e.rejection())?;
        self.negotiated = Some(n);
        Ok((n, answer))
    }

    /// Sets up (or keeps, or drops) the SRTP contexts for a settled session.
    /// The same keys keep their contexts, so the rollover counter and replay
    /// window survive a session refresh; new keys start afresh (RFC 4568 §7.1.4).
    pub(in crate::call) fn install_srtp(&mut self, now: Instant, n: &Negotiated) {
        if let Some(d) = n.dtls {
            // Keys come from a handshake; the same peer keeps the session it has.
            if self.dtls == Some(d) || (self.dtls.is_none() && self.srtp.is_some() && self.dtls_done_for == Some(d)) {
                return;
            }
            self.srtp = None;
            self.dtls = Some(d);
            self.outputs.push_back(Output::StartDtls {
                params: d,
                remote: n.remote,
            });
            return;
        }
        self.dtls = None;
        self.dtls_done_for = None;
        let Some(params) = n.srtp else {
            self.srtp = None;
            return;
        };
        if self.srtp.as_ref().is_some_and(|s| s.params() == params) {
            return;
        }
        self.start_srtp(now, params);
    }

    fn start_srtp(&mut self, now: Instant, params: SrtpParams) {
        match SrtpSession::new(params) {
            Ok(s) => {
                tracing::debug!(call = %self.row.call_id, suite = params.suite.name(), "SRTP keys installed");
                self.srtp = Some(s);
                // Room for the largest packet anyone may send us.
                self.plain.resize(crate::media::rtp::MAX_DATAGRAM, 0);
            }
            Err(e) => {
                tracing::error!(call = %self.row.call_id, error = %e, "cannot set up SRTP");
                self.call.handle(now, CallInput::End(super::EndReason::Error(format!("SRTP: {e}"))));
            }
        }
    }

    /// The DTLS handshake finished: media may flow, encrypted; or the call
    /// cannot be secured and ends.
    pub(super) fn dtls_done(&mut self, now: Instant, keys: Result<SrtpParams, String>) {
        let Some(d) = self.dtls.take() else { return };
        match keys {
            Ok(params) => {
                tracing::info!(call = %self.row.call_id, suite = params.suite.name(), "DTLS-SRTP established");
                self.dtls_done_for = Some(d);
                self.start_srtp(now, params);
            }
            Err(why) => {
                tracing::warn!(call = %self.row.call_id, error = %why, "DTLS-SRTP failed; ending the call");
                self.call
                    .handle(now, CallInput::End(super::EndReason::Error(format!("DTLS: {why}"))));
            }
        }
    }

    /// A DTLS handshake is running: no media either way until it ends.
    pub(super) fn awaiting_keys(&self) -> bool {
        self.dtls.is_some()
    }

    /// A new SDP exchange settled the session. Learning reopens only when it
    /// moves the media: a session refresh with the same address gives no one a
    /// window to hijack.
    pub(super) fn renegotiated(&mut self, n: &Negotiated, now: Instant) {
        if self.sdp_remote != Some(n.remote) {
            self.sdp_remote = Some(n.remote);
            self.dest = Some(n.remote);
            self.latch.reset(n.remote, now);
        }
        if let Some(s) = self.sender.as_mut() {
            s.set_payload_type(n.payload_type);
        }
    }

    pub(super) fn set_direction(&mut self, now: Instant, ours: Direction) {
        let caller_sends = matches!(ours, Direction::SendRecv | Direction::RecvOnly);
        self.call.handle(
            now,
            CallInput::Direction {
                we_send: ours.sends(),
                caller_sends,
            },
        );
    }
}
