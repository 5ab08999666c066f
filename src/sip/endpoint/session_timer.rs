//! Session timers (RFC 4028) for the UAS: honour the caller's
//! `Session-Expires`/`Min-SE`, refresh with UPDATE when we are the refresher,
//! and end the call with BYE only when the refresher (the caller) lets the
//! session lapse. Calls on trunks that insist on timers then last as long as
//! the caller wants, not 15 or 30 minutes.

use std::time::{Duration, Instant};

use super::{Endpoint, Output, SipEvent, TimerId};
use crate::sip::endpoint::CallKey;
use crate::sip::message::{Rejection, Request};

/// `sip.session_expires_seconds` / `sip.session_min_se_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The interval we ask for when the caller supports timers but names none.
    pub default: Duration,
    /// The shortest interval we accept (RFC 4028 minimum: 90 s).
    pub min_se: Duration,
}

/// The longest session interval we agree to. RFC 4028 §9 lets the UAS lower the
/// caller's interval (never below its Min-SE), so a peer's 2^64-1 becomes a day:
/// deadlines are then always representable, and a lapsed caller is noticed.
pub const MAX_SESSION_INTERVAL: Duration = Duration::from_secs(86_400);

impl Default for SessionTimerConfig {
    fn default() -> Self {
        SessionTimerConfig {
            default: Duration::from_secs(1800),
            min_se: Duration::from_secs(90),
        }
    }
}

/// A dialog's session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionTimer {
    pub interval: Duration,
    /// We send the refreshes (refresher=uas).
    pub we_refresh: bool,
    /// The caller listed `timer` in Supported, so the 2xx carries `Require: timer`.
    pub caller_supports: bool,
    /// Next refresh (ours) or the deadline for the caller's.
    pub due: Instant,
}

impl SessionTimer {
    /// `Session-Expires` in a response (the INVITE's 2xx, or the 2xx to the
    /// caller's refresh): `refresher` names the role in *that* transaction,
    /// where the caller is the UAC and we are the UAS (RFC 4028 §9).
    pub fn header(&self) -> String {
        let who = if self.we_refresh { "uas" } else { "uac" };
        format!("{};refresher={who}", self.interval.as_secs())
    }

    /// `Session-Expires` in a refresh we send: we are the UAC of that
    /// transaction and the refresher, so `refresher=uac` (RFC 4028 §7.4).
    pub fn our_refresh_header(&self) -> String {
        format!("{};refresher=uac", self.interval.as_secs())
    }

    /// Arms the timer from `now` (the 2xx, or a refresh).
    fn arm(&mut self, now: Instant) {
        let interval = self.interval.min(MAX_SESSION_INTERVAL);
        let wait = if self.we_refresh {
            interval / 2
        } else {
            // §10: the refreshee gives up at the interval minus min(32 s, interval/3).
            interval.saturating_sub((interval / 3).min(Duration::from_secs(32)))
        };
        self.due = crate::deadline::after(now, wait);
    }
}

/// A delta-seconds value (RFC 3261 §25.1: 1*DIGIT, possibly huge), clamped to
/// [`MAX_SESSION_INTERVAL`] so that no later arithmetic can overflow.
fn delta_seconds(v: &str) -> Option<Duration> {
    crate::deadline::clamp_secs(v.split(';').next()?, MAX_SESSION_INTERVAL)
}

impl Endpoint {
    /// What an INVITE asks of session timers: `Ok(None)` when it asks nothing,
    /// `Err(422)` when its interval is below our Min-SE.
    pub(crate) fn session_request(&self, now: Instant, req: &Request) -> Result<Option<SessionTimer>, Rejection> {
        let cfg = self.config.session;
        let supports = req.headers.list("Supported").any(|t| t.eq_ignore_ascii_case("timer"));
        // `x` is the header's compact form.
        let asked = req.headers.get("Session-Expires").or_else(|| req.headers.get("x"));
        let interval = match asked.and_then(delta_seconds) {
            Some(secs) => {
                if secs < cfg.min_se {
                    return Err(Rejection::new(422, "Session Interval Too Small").with_header("Min-SE", cfg.min_se.as_secs().to_string()));
                }
                secs
            }
            None if supports => {
                let their_min = req.headers.get("Min-SE").and_then(delta_seconds);
                cfg.default.max(their_min.unwrap_or_default())
            }
            None => return Ok(None),
        };
        let refresher = asked.and_then(|v| {
            v.split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("refresher=").map(|r| r.trim().to_ascii_lowercase()))
        });
        // §9: the UAC refreshes when it supports timers and did not hand the job to us.
        let we_refresh = match refresher.as_deref() {
            Some("uas") => true,
            Some("uac") => false,
            _ => !supports,
        };
        let mut timer = SessionTimer {
            interval,
            we_refresh,
            caller_supports: supports,
            due: now,
        };
        timer.arm(now);
        Ok(Some(timer))
    }

    /// Headers for a 2xx that carries the session timer.
    pub(crate) fn session_headers(&self, call: CallKey) -> Vec<(&'static str, String)> {
        let Some(t) = self.dialogs.get(&call).and_then(|d| d.session) else {
            return Vec::new();
        };
        let mut h = vec![("Session-Expires", t.header())];
        if t.caller_supports {
            h.push(("Require", "timer".to_owned()));
        }
        h
    }

    /// The session (re)starts: the 2xx to the INVITE, or a refresh arrived.
    pub(crate) fn session_started(&mut self, now: Instant, call: CallKey) {
        let Some(t) = self.dialogs.get_mut(&call).and_then(|d| d.session.as_mut()) else {
            return;
        };
        t.arm(now);
        let due = t.due;
        self.schedule(due, TimerId::Session(call));
    }

    /// A refresh from the caller (re-INVITE or UPDATE): the interval may change.
    pub(crate) fn session_refreshed(&mut self, now: Instant, call: CallKey, req: &Request) {
        let asked = req
            .headers
            .get("Session-Expires")
            .or_else(|| req.headers.get("x"))
            .and_then(delta_seconds);
        let min_se = self.config.session.min_se;
        if let Some(t) = self.dialogs.get_mut(&call).and_then(|d| d.session.as_mut())
            && let Some(secs) = asked.filter(|s| *s >= min_se)
        {
            t.interval = secs;
        }
        self.session_started(now, call);
    }

    pub(crate) fn session_timer(&mut self, now: Instant, call: CallKey) {
        let Some(t) = self.dialogs.get(&call).and_then(|d| d.session) else {
            return;
        };
        if t.due > now {
            return; // re-armed since this timer was set
        }
        if t.we_refresh {
            self.send_refresh(now, call);
            self.session_started(now, call);
        } else {
            tracing::info!(call = %call, "session timer expired: the caller did not refresh");
            self.send_bye(now, call, "session expired");
            self.outputs.push_back(Output::Event(SipEvent::SessionExpired { call }));
        }
    }

    /// A refresh: UPDATE, or a re-INVITE with our current SDP when the caller
    /// does not allow UPDATE (§7.4).
    fn send_refresh(&mut self, now: Instant, call: CallKey) {
        let Some(d) = self.dialogs.get(&call) else { return };
        let Some(t) = d.session else { return };
        let headers = [("Session-Expires", t.our_refresh_header()), ("Supported", "timer".to_owned())];
        match d.local_sdp.clone().filter(|_| d.refresh_with_invite) {
            Some(sdp) => self.send_in_dialog_body(now, call, "INVITE", &headers, Some(("application/sdp", &sdp))),
            None => self.send_in_dialog(now, call, "UPDATE", &headers),
        }
    }

    /// The answer to our refresh; 408/481 mean the session is gone (§10). A
    /// caller that refuses UPDATE (405/501) gets re-INVITEs from now on, the
    /// first one at once.
    pub(crate) fn session_refresh_answered(&mut self, now: Instant, call: CallKey, status: u16) {
        if status == 405 || status == 501 {
            if let Some(d) = self.dialogs.get_mut(&call)
                && !d.refresh_with_invite
                && d.local_sdp.is_some()
            {
                d.refresh_with_invite = true;
                self.send_refresh(now, call);
            }
            return;
        }
        if status == 408 || status == 481 {
            tracing::info!(call = %call, status, "session refresh failed: ending the call");
            self.send_bye(now, call, "session expired");
            self.outputs.push_back(Output::Event(SipEvent::SessionExpired { call }));
        }
    }
}
