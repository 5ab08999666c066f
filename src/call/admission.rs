//! Whether and how a new INVITE becomes a call, with no IO: the node's limits
//! in a fixed order (draining, `limits.max_calls`, the set-up rate), then the
//! offer (a multipart body's SDP part; `488` with a `Warning` when nothing in it
//! is acceptable), then everything the call machine starts from. The SIP task
//! supplies the port it bound and the randomness; it only carries out the
//! answer (`200` or the [`Rejection`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::CallLimits;
use super::machine::{AgentPlan, CallSetup, MediaEdge, Seeds};
use crate::media::prompt::{Player, Prompt};
use crate::media::srtp::MAX_KEY;
use crate::sip::Transport;
use crate::sip::guard::SetupRate;
use crate::sip::message::{Rejection, Request};
use crate::sip::sdp::{self, LocalMedia, MediaSecurity, Negotiated, SessionDescription};
use crate::store::CallRow;

/// The node as admission sees it at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub draining: bool,
    pub live_calls: usize,
    pub max_calls: usize,
    /// `limits.retry_after_seconds`, for capacity refusals.
    pub retry_after: u64,
    /// `limits.max_setup_rate`, named in the refusal.
    pub max_setup_rate: f64,
}

/// The first check that refuses the call, in the order an operator reads
/// them: a draining node, a full node, then the set-up rate (whose token is
/// only spent on a call that passed the others).
pub fn check_capacity(now: Instant, c: &Capacity, rate: &mut SetupRate) -> Result<(), Rejection> {
    let retry_after = c.retry_after.to_string();
    if c.draining {
        return Err(Rejection::new(503, "Service Unavailable: shutting down").with_header("Retry-After", retry_after));
    }
    if c.live_calls >= c.max_calls {
        let why = format!("Service Unavailable: at capacity ({} calls)", c.max_calls);
        return Err(Rejection::new(503, why).with_header("Retry-After", retry_after));
    }
    if !rate.admit(now) {
        // Capacity, not failure: a short Retry-After, and a dispatcher in
        // front tries another node without marking this one down.
        metrics::counter!("precall_setup_rate_limited_total").increment(1);
        let why = format!("Service Unavailable: at the set-up rate limit ({}/s)", c.max_setup_rate);
        return Err(Rejection::new(503, why).with_header("Retry-After", "1"));
    }
    Ok(())
}

/// The media side of the answer: with an offer in the INVITE, what was
/// negotiated and our answer; without one (a delayed offer), our offer, and
/// the ACK will bring the answer.
pub fn negotiate(request: &Request, local: &LocalMedia) -> Result<(Option<Negotiated>, String), Rejection> {
    match sdp::offer_in(request)? {
        Some(offer) => {
            let sd = SessionDescription::parse(&offer).map_err(|e| e.rejection())?;
            let (n, answer) = sdp::answer(&sd, local).map_err(|e| e.rejection())?;
            Ok((Some(n), answer))
        }
        None => Ok((None, sdp::offer(local))),
    }
}

/// Our side of the session for a call on `port`.
pub fn local_media(addr: IpAddr, port: u16, session_id: u64, security: MediaSecurity) -> LocalMedia {
    LocalMedia {
        addr,
        port,
        session_id,
        version: 1,
        security,
    }
}

/// The media security a call may have: the SRTP policy, and whether SDES keys
/// are safe on the transport the INVITE came over (TLS, or the operator
/// allowed insecure SDES). `key` is random material from the IO edge, and
/// `dtls_fingerprint` our DTLS certificate's (`None`: no DTLS-SRTP).
pub fn media_security(
    policy: crate::media::srtp::Policy,
    transport: Transport,
    allow_insecure_sdes: bool,
    key: [u8; MAX_KEY],
    dtls_fingerprint: Option<[u8; 32]>,
) -> MediaSecurity {
    let insecure_signalling = match transport {
        _ if transport.is_secure() || allow_insecure_sdes => None,
        Transport::Tcp(_) => Some("TCP"),
        _ => Some("UDP"),
    };
    MediaSecurity {
        policy,
        insecure_signalling,
        key,
        dtls_fingerprint,
    }
}

/// The audio every call plays, shared.
#[derive(Debug, Clone)]
pub struct Prompts {
    pub greeting: Prompt,
    pub hold: Option<Prompt>,
    pub apology: Prompt,
}

/// What a SIP call starts from, beyond its negotiation.
#[derive(Debug, Clone)]
pub struct Policy {
    pub limits: CallLimits,
    pub answer_delay: Duration,
    pub cloning: bool,
    pub agent: Option<AgentPlan>,
    pub strict_rtp_source: bool,
}

/// Everything the call machine of an admitted SIP call starts from.
pub fn setup(
    local: LocalMedia,
    (negotiated, answer): (Option<Negotiated>, String),
    row: CallRow,
    prompts: &Prompts,
    policy: &Policy,
    seeds: Seeds,
) -> CallSetup {
    CallSetup {
        local,
        negotiated,
        player: Player::new(prompts.greeting.clone(), prompts.hold.clone()),
        apology: prompts.apology.clone(),
        limits: policy.limits,
        answer_delay: policy.answer_delay,
        answer_sdp: answer.into_bytes(),
        row,
        cloning: policy.cloning,
        agent: policy.agent.clone(),
        strict_rtp_source: policy.strict_rtp_source,
        seeds,
        edge: MediaEdge::Rtp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(body: &str) -> Request {
        let text = format!(
            "INVITE sip:+15550001111@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK-1\r\n\
             From: <sip:+15551234567@192.0.2.7>;tag=a\r\nTo: <sip:+15550001111@192.0.2.1>\r\n\
             Call-ID: adm-1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@192.0.2.7>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let raw = crate::sip::message::parse(text.as_bytes()).expect("parses");
        Request::validate(raw).expect("a valid INVITE")
    }

    fn capacity() -> Capacity {
        Capacity {
            draining: false,
            live_calls: 0,
            max_calls: 10,
            retry_after: 30,
            max_setup_rate: 5.0,
        }
    }

    #[test]
    fn refusals_come_in_order_and_only_admitted_calls_spend_the_rate() {
        let t0 = Instant::now();
        let mut rate = SetupRate::new(t0, 5.0, 5.0);
        let full = Capacity {
            draining: true,
            live_calls: 10,
            ..capacity()
        };
        let r = check_capacity(t0, &full, &mut rate).unwrap_err();
        assert_eq!((r.status, r.reason.as_str()), (503, "Service Unavailable: shutting down"));
        let r = check_capacity(t0, &Capacity { draining: false, ..full }, &mut rate).unwrap_err();
        assert_eq!(r.reason, "Service Unavailable: at capacity (10 calls)");
        assert!(r.headers.iter().any(|(n, v)| *n == "Retry-After" && v == "30"));
        // Neither refusal spent a token: five calls pass, the sixth is over the rate.
        for _ in 0..5 {
            check_capacity(t0, &capacity(), &mut rate).unwrap();
        }
        let r = check_capacity(t0, &capacity(), &mut rate).unwrap_err();
        assert_eq!(r.reason, "Service Unavailable: at the set-up rate limit (5/s)");
        assert!(r.headers.iter().any(|(n, v)| *n == "Retry-After" && v == "1"));
        check_capacity(t0 + Duration::from_millis(200), &capacity(), &mut rate).expect("a token back after 1/5 s");
    }

    #[test]
    fn an_offer_is_answered_a_missing_one_is_offered_and_a_bad_one_gets_488() {
        let local = local_media([192, 0, 2, 1].into(), 30000, 9, MediaSecurity::default());
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
        let (n, answer) = negotiate(&invite(offer), &local).unwrap();
        assert_eq!(n.map(|n| n.payload_type), Some(8));
        assert!(answer.contains("m=audio 30000 RTP/AVP 8"), "{answer}");
        let (n, ours) = negotiate(&invite(""), &local).unwrap();
        assert!(n.is_none() && ours.contains("m=audio 30000 RTP/AVP 0 8"), "{ours}");
        let srtp = offer.replace("RTP/AVP 8", "RTP/SAVP 8");
        let r = negotiate(&invite(&srtp), &local).unwrap_err();
        assert_eq!(r.status, 488);
        assert!(r.headers.iter().any(|(n, _)| *n == "Warning"), "{r:?}");
    }
}
