//! The call's lifecycle: its states, timers and end reasons, and when the
//! agent may connect. It decides; [`super::machine::CallMachine`] carries out.
//!
//! It owns the call's timers (maximum duration, RTP inactivity, hold), decides
//! the end reason recorded for every call, and decides when the agent
//! conversation opens: once the call is confirmed by the ACK, its media
//! negotiated (for a delayed offer, by the ACK's answer) and its voice decided,
//! whichever of the three comes last, and only once.

use std::collections::VecDeque;
use std::time::Instant;

use super::{CallLimits, EndReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// INVITE received; 200 not yet acknowledged (media may already flow).
    Answering,
    /// Playing the greeting (then hold audio) to the caller.
    Greeting,
    /// We sent BYE (or the UAS core did); waiting for the dialog to end.
    Ending,
    Ended,
}

/// Inputs from signalling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallInput {
    /// We sent the 200 with an SDP answer: media may start.
    Answered,
    /// The ACK arrived (with the answer to our offer, for a delayed offer).
    Confirmed,
    /// The ACK of a delayed-offer call arrived without a usable answer.
    ConfirmedWithoutAnswer,
    /// The SIP task is gone (the daemon is failing): no BYE can be sent, so the
    /// call ends at once instead of waiting for a dialog that no one drives.
    SignallingLost,
    Cancelled,
    ByeReceived,
    /// No ACK: the SIP layer already sent BYE.
    AckTimeout,
    /// The session timer ran out: the SIP layer already sent BYE.
    SessionExpired,
    /// The dialog is gone (our BYE completed or timed out).
    Terminated,
    /// The daemon is stopping and the drain period is over.
    Shutdown,
    /// The call's own logic decided to hang up (the agent ended, or failed and the apology played).
    End(EndReason),
    /// Hold state from a re-INVITE: whether we may send, and whether the caller
    /// will send (`inactive` hold suspends the RTP timeout).
    Direction {
        we_send: bool,
        caller_sends: bool,
    },
    /// The offer/answer exchange has settled the media (at admission for an
    /// offer in the INVITE, with the ACK's answer for a delayed offer).
    Negotiated,
    /// The voice the agent speaks in is decided (a clone, the cache, or the default).
    VoiceDecided(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
    /// Start the paced media timeline now.
    StartMedia,
    /// Stop sending (and stop caring about) RTP.
    StopMedia,
    /// Send BYE with this reason.
    Hangup(EndReason),
    /// Open the agent conversation in this voice (at most once per call).
    ConnectAgent(String),
    /// The call is over; record it and free its resources.
    Ended(EndReason),
}

#[derive(Debug)]
pub struct Lifecycle {
    state: CallState,
    limits: CallLimits,
    created: Instant,
    media_started: Option<Instant>,
    confirmed: Option<Instant>,
    last_rtp: Option<Instant>,
    caller_sends: bool,
    we_send: bool,
    ending: Option<EndReason>,
    actions: VecDeque<CallAction>,
    negotiated: bool,
    voice: Option<String>,
    agent_connected: bool,
}

impl Lifecycle {
    pub fn new(now: Instant, limits: CallLimits) -> Self {
        Lifecycle {
            state: CallState::Answering,
            limits,
            created: now,
            media_started: None,
            confirmed: None,
            last_rtp: None,
            caller_sends: true,
            we_send: true,
            ending: None,
            actions: VecDeque::new(),
            negotiated: false,
            voice: None,
            agent_connected: false,
        }
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    /// Whether the media timeline should be sending to the caller right now.
    pub fn sending(&self) -> bool {
        self.media_started.is_some() && self.we_send && matches!(self.state, CallState::Answering | CallState::Greeting)
    }

    pub fn poll_action(&mut self) -> Option<CallAction> {
        self.actions.pop_front()
    }

    pub fn confirmed_at(&self) -> Option<Instant> {
        self.confirmed
    }

    pub fn handle(&mut self, now: Instant, input: CallInput) {
        if self.state == CallState::Ended {
            return;
        }
        match input {
            CallInput::Answered => self.start_media(now),
            CallInput::Confirmed => {
                self.confirmed.get_or_insert(now);
                // A delayed-offer call starts media only once the ACK brings the answer.
                self.start_media(now);
                if self.state == CallState::Answering {
                    self.state = CallState::Greeting;
                }
            }
            CallInput::ConfirmedWithoutAnswer => {
                self.confirmed.get_or_insert(now);
                if self.state == CallState::Answering {
                    self.state = CallState::Greeting;
                }
                self.hangup(EndReason::NoSdpAnswer);
            }
            CallInput::SignallingLost => {
                let reason = self.ending.take().unwrap_or(EndReason::Shutdown);
                self.end(reason);
            }
            CallInput::Cancelled => self.end(EndReason::Cancelled),
            CallInput::ByeReceived => {
                let reason = self.ending.take().unwrap_or(EndReason::CallerBye);
                self.end(reason);
            }
            CallInput::AckTimeout => {
                self.ending = Some(EndReason::AckTimeout);
                self.stop_media_and_wait();
            }
            CallInput::SessionExpired => {
                self.ending = Some(EndReason::SessionExpired);
                self.stop_media_and_wait();
            }
            CallInput::Terminated => {
                let reason = self.ending.take().unwrap_or(EndReason::Error("dialog terminated".into()));
                self.end(reason);
            }
            CallInput::Shutdown => self.hangup(EndReason::Shutdown),
            CallInput::End(reason) => self.hangup(reason),
            CallInput::Direction { we_send, caller_sends } => {
                if self.on_hold() != (!we_send || !caller_sends) {
                    // Going on or coming off hold: the caller gets a fresh window
                    // under the timeout that now applies.
                    self.last_rtp = Some(now);
                }
                self.we_send = we_send;
                self.caller_sends = caller_sends;
            }
            CallInput::Negotiated => self.negotiated = true,
            CallInput::VoiceDecided(voice) => {
                self.voice.get_or_insert(voice);
            }
        }
        self.maybe_connect_agent();
    }

    /// The hand-off decision, revisited after every input: the agent opens when
    /// the last of confirmation, negotiation and the voice arrives, however long
    /// the ACK took, and never for a call that is ending.
    fn maybe_connect_agent(&mut self) {
        if self.agent_connected
            || self.confirmed.is_none()
            || !self.negotiated
            || !matches!(self.state, CallState::Answering | CallState::Greeting)
        {
            return;
        }
        if let Some(voice) = self.voice.clone() {
            self.agent_connected = true;
            self.actions.push_back(CallAction::ConnectAgent(voice));
        }
    }

    /// A valid RTP packet from the caller.
    #[inline]
    pub fn on_rtp(&mut self, now: Instant) {
        self.last_rtp = Some(now);
    }

    /// The next instant `handle_timeout` must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !matches!(self.state, CallState::Answering | CallState::Greeting) {
            return None;
        }
        let max = crate::deadline::after(self.created, self.limits.max_duration);
        let rtp = self.rtp_deadline();
        Some(rtp.map_or(max, |r| r.min(max)))
    }

    /// On hold the caller has said (by direction) that one side of the media is
    /// off: a `sendonly` hold often means silence from a phone too, so the
    /// longer hold timeout applies instead of the RTP timeout.
    fn on_hold(&self) -> bool {
        !self.we_send || !self.caller_sends
    }

    fn rtp_deadline(&self) -> Option<Instant> {
        let since = self.last_rtp.or(self.media_started)?;
        let timeout = if self.on_hold() {
            self.limits.hold_timeout
        } else {
            self.limits.rtp_timeout
        };
        Some(crate::deadline::after(since, timeout))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !matches!(self.state, CallState::Answering | CallState::Greeting) {
            return;
        }
        if now >= crate::deadline::after(self.created, self.limits.max_duration) {
            self.hangup(EndReason::MaxDuration);
        } else if self.rtp_deadline().is_some_and(|d| now >= d) {
            self.hangup(EndReason::RtpTimeout);
        }
    }

    fn start_media(&mut self, now: Instant) {
        if self.media_started.is_none() {
            self.media_started = Some(now);
            self.actions.push_back(CallAction::StartMedia);
        }
    }

    fn hangup(&mut self, reason: EndReason) {
        if matches!(self.state, CallState::Ending | CallState::Ended) {
            return;
        }
        self.ending = Some(reason.clone());
        self.actions.push_back(CallAction::Hangup(reason));
        self.stop_media_and_wait();
    }

    fn stop_media_and_wait(&mut self) {
        if self.media_started.is_some() {
            self.actions.push_back(CallAction::StopMedia);
        }
        self.state = CallState::Ending;
    }

    fn end(&mut self, reason: EndReason) {
        if self.media_started.is_some() && self.state != CallState::Ending {
            self.actions.push_back(CallAction::StopMedia);
        }
        self.state = CallState::Ended;
        self.actions.push_back(CallAction::Ended(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> CallLimits {
        CallLimits {
            max_duration: Duration::from_secs(3600),
            rtp_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(300),
        }
    }

    fn drain(call: &mut Lifecycle) -> Vec<CallAction> {
        std::iter::from_fn(|| call.poll_action()).collect()
    }

    #[test]
    fn an_ack_without_the_answer_hangs_up_without_media() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::ConfirmedWithoutAnswer);
        assert_eq!(drain(&mut c), vec![CallAction::Hangup(EndReason::NoSdpAnswer)]);
        assert_eq!(c.state(), CallState::Ending);
        c.handle(t0, CallInput::Terminated);
        assert_eq!(drain(&mut c), vec![CallAction::Ended(EndReason::NoSdpAnswer)]);
    }

    #[test]
    fn losing_signalling_ends_the_call_at_once() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        c.handle(t0, CallInput::Shutdown);
        drain(&mut c);
        c.handle(t0, CallInput::SignallingLost);
        assert_eq!(drain(&mut c), vec![CallAction::Ended(EndReason::Shutdown)]);
        assert_eq!(c.state(), CallState::Ended);
    }

    #[test]
    fn answered_call_plays_then_caller_hangs_up() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        assert_eq!(drain(&mut c), vec![CallAction::StartMedia]);
        assert!(c.sending());
        c.handle(t0 + Duration::from_millis(3), CallInput::Confirmed);
        assert_eq!(c.state(), CallState::Greeting);
        assert!(drain(&mut c).is_empty(), "media already started");
        c.handle(t0 + Duration::from_secs(5), CallInput::ByeReceived);
        assert_eq!(drain(&mut c), vec![CallAction::StopMedia, CallAction::Ended(EndReason::CallerBye)]);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn rtp_timeout_counts_only_caller_media() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        c.handle(t0, CallInput::Confirmed);
        drain(&mut c);
        // Caller sends for 10 s, then goes silent.
        for i in 0..500u32 {
            c.on_rtp(t0 + Duration::from_millis(20) * i);
        }
        let last = t0 + Duration::from_millis(20) * 499;
        assert_eq!(c.poll_timeout(), Some(last + Duration::from_secs(60)));
        c.handle_timeout(last + Duration::from_secs(59));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(last + Duration::from_secs(60));
        assert_eq!(
            drain(&mut c),
            vec![CallAction::Hangup(EndReason::RtpTimeout), CallAction::StopMedia]
        );
        assert_eq!(c.state(), CallState::Ending);
        c.handle(last + Duration::from_secs(61), CallInput::Terminated);
        assert_eq!(drain(&mut c), vec![CallAction::Ended(EndReason::RtpTimeout)]);
    }

    #[test]
    fn caller_that_never_sends_rtp_times_out_from_answer() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn hold_swaps_the_rtp_timeout_for_the_hold_timeout() {
        let t0 = Instant::now();
        // sendonly from the caller (we stop sending) and inactive both hold.
        for (we_send, caller_sends) in [(false, true), (false, false), (true, false)] {
            let mut c = Lifecycle::new(t0, limits());
            c.handle(t0, CallInput::Answered);
            c.handle(t0, CallInput::Confirmed);
            let hold = t0 + Duration::from_secs(1);
            c.handle(hold, CallInput::Direction { we_send, caller_sends });
            assert_eq!(c.sending(), we_send);
            assert_eq!(c.poll_timeout(), Some(hold + Duration::from_secs(300)));
            // 90 s of silence on hold: the call stays up.
            c.handle_timeout(hold + Duration::from_secs(90));
            assert!(drain(&mut c).iter().all(|a| !matches!(a, CallAction::Hangup(_))));
            assert_eq!(c.state(), CallState::Greeting);
            // Back from hold: a fresh window under the RTP timeout.
            let resume = t0 + Duration::from_secs(200);
            c.handle(
                resume,
                CallInput::Direction {
                    we_send: true,
                    caller_sends: true,
                },
            );
            assert!(c.sending());
            assert_eq!(c.poll_timeout(), Some(resume + Duration::from_secs(60)));
            // A hold that outlasts the hold timeout ends the call as an RTP timeout.
            let mut c = Lifecycle::new(t0, limits());
            c.handle(t0, CallInput::Answered);
            c.handle(t0, CallInput::Direction { we_send, caller_sends });
            c.handle_timeout(t0 + Duration::from_secs(300));
            assert!(drain(&mut c).contains(&CallAction::Hangup(EndReason::RtpTimeout)));
        }
    }

    fn connects(c: &mut Lifecycle) -> Vec<String> {
        drain(c)
            .into_iter()
            .filter_map(|a| match a {
                CallAction::ConnectAgent(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// Issue 13 #1 as a state-machine property: the agent opens when the last
    /// of ACK, negotiation and voice arrives, in any order and after any delay,
    /// exactly once, and never for a call that never confirms or is ending.
    #[test]
    fn the_agent_connects_when_the_last_condition_arrives_in_any_order() {
        let t0 = Instant::now();
        let inputs = [CallInput::Confirmed, CallInput::Negotiated, CallInput::VoiceDecided("v".into())];
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let mut c = Lifecycle::new(t0, limits());
            let mut connected = Vec::new();
            for (step, i) in order.iter().enumerate() {
                // An ACK one second (or a minute) late changes nothing.
                let at = t0 + Duration::from_secs(step as u64 * 30);
                c.handle(at, inputs[*i].clone());
                connected.extend(connects(&mut c));
                if step < 2 {
                    assert!(connected.is_empty(), "{order:?}: connected before step 3");
                }
            }
            assert_eq!(connected, vec!["v".to_owned()], "{order:?}");
            c.handle(t0, CallInput::VoiceDecided("w".into()));
            c.handle(t0, CallInput::Confirmed);
            c.handle(t0, CallInput::Negotiated);
            assert!(connects(&mut c).is_empty(), "{order:?}: only once");
        }
        // Never confirmed: never connected.
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Negotiated);
        c.handle(t0, CallInput::VoiceDecided("v".into()));
        c.handle(t0 + Duration::from_secs(32), CallInput::AckTimeout);
        assert!(connects(&mut c).is_empty());
        // Confirmed without an answer (a delayed offer's empty ACK): ending, never connected.
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::VoiceDecided("v".into()));
        c.handle(t0, CallInput::ConfirmedWithoutAnswer);
        c.handle(t0, CallInput::Negotiated);
        assert!(connects(&mut c).is_empty());
    }

    #[test]
    fn max_duration_and_ack_timeout_and_cancel() {
        let t0 = Instant::now();
        let short = CallLimits {
            max_duration: Duration::from_secs(10),
            rtp_timeout: Duration::from_secs(60),
            hold_timeout: Duration::from_secs(300),
        };
        let mut c = Lifecycle::new(t0, short);
        c.handle(t0, CallInput::Answered);
        c.on_rtp(t0 + Duration::from_secs(9));
        c.handle_timeout(t0 + Duration::from_secs(10));
        assert!(drain(&mut c).contains(&CallAction::Hangup(EndReason::MaxDuration)));

        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        c.handle(t0 + Duration::from_secs(32), CallInput::AckTimeout);
        c.handle(t0 + Duration::from_secs(33), CallInput::Terminated);
        assert_eq!(drain(&mut c).last(), Some(&CallAction::Ended(EndReason::AckTimeout)));

        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Cancelled);
        assert_eq!(drain(&mut c), vec![CallAction::Ended(EndReason::Cancelled)]);
        c.handle(t0, CallInput::ByeReceived);
        assert!(drain(&mut c).is_empty(), "an ended call ignores late input");
    }

    #[test]
    fn shutdown_hangs_up_once() {
        let t0 = Instant::now();
        let mut c = Lifecycle::new(t0, limits());
        c.handle(t0, CallInput::Answered);
        drain(&mut c);
        c.handle(t0, CallInput::Shutdown);
        c.handle(t0, CallInput::Shutdown);
        assert_eq!(drain(&mut c), vec![CallAction::Hangup(EndReason::Shutdown), CallAction::StopMedia]);
        // The peer may answer our BYE with its own BYE crossing it; either ends the call.
        c.handle(t0, CallInput::ByeReceived);
        assert_eq!(drain(&mut c), vec![CallAction::Ended(EndReason::Shutdown)]);
    }
}
