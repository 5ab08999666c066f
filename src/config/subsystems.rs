//! The typed settings each subsystem runs on, compiled from the raw sections in
//! this one place: the daemon, the call machine and the clone service take
//! these, and none of them reads `Settings::raw` for its own knobs.

use std::time::Duration;

use super::Settings;
use crate::call::CallLimits;
use crate::clone::CloneConfig;
use crate::sip::endpoint::{EndpointConfig, SessionTimerConfig};
use crate::sip::guard::GuardConfig;
use crate::sip::transport::TcpLimits;

impl Settings {
    /// The SIP endpoint: our identity, session timers, inbound digest auth.
    pub fn endpoint_config(&self) -> EndpointConfig {
        let sip = &self.raw.sip;
        EndpointConfig {
            user_agent: sip.user_agent.clone(),
            timers: Default::default(),
            public_addr: self.public_addr,
            session: SessionTimerConfig {
                default: Duration::from_secs(sip.session_expires_seconds),
                min_se: Duration::from_secs(sip.session_min_se_seconds),
            },
            auth: self.sip_auth.clone(),
        }
    }

    /// Who may send us SIP, and how fast.
    pub fn guard_config(&self) -> GuardConfig {
        let sip = &self.raw.sip;
        GuardConfig {
            allow: self.sip_allow.clone(),
            trusted: self.sip_trusted.clone(),
            drop_unknown: sip.drop_unknown,
            invite_rate: sip.invite_rate,
            invite_burst: sip.invite_burst,
            request_rate: sip.request_rate,
            request_burst: sip.request_burst,
        }
    }

    /// SIP over TCP: connection cap and timeouts.
    pub fn tcp_limits(&self) -> TcpLimits {
        let sip = &self.raw.sip;
        TcpLimits {
            max_connections: sip.max_tcp_connections,
            message_timeout: Duration::from_secs(sip.tcp_message_timeout_seconds),
            idle_timeout: Duration::from_secs(sip.tcp_idle_timeout_seconds),
        }
    }

    /// The limits every call enforces on itself, SIP or Twilio.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            max_duration: Duration::from_secs(self.raw.limits.max_call_seconds),
            rtp_timeout: Duration::from_secs(self.raw.rtp.timeout_seconds),
            hold_timeout: Duration::from_secs(self.raw.rtp.hold_timeout_seconds),
        }
    }

    /// How long live calls keep running after SIGTERM before they get BYE.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.raw.limits.drain_seconds)
    }

    /// The clone service.
    pub fn clone_config(&self) -> CloneConfig {
        let c = &self.raw.clone;
        CloneConfig {
            max_wait: Duration::from_secs(c.max_wait_seconds),
            cache_ttl: Duration::from_secs(c.cache_ttl_hours.saturating_mul(3600)),
            default_voice_id: self.raw.elevenlabs.default_voice_id.clone(),
            remove_background_noise: c.remove_background_noise,
            data_dir: self.data_dir.clone(),
            request_timeout: Duration::from_secs(c.request_timeout_seconds),
            orphan_grace: Duration::from_secs(c.orphan_grace_seconds),
        }
    }
}
