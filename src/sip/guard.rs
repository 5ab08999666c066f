//! Protection for a public SIP port, sans-IO: a source allowlist and per-source
//! token buckets, checked on every datagram or TCP message before it is parsed.
//!
//! - `sip.allow_cidrs` (trunk and PBX addresses): anything else gets `403`, or is
//!   dropped without an answer with `sip.drop_unknown = true` (the usual choice
//!   against scanners, which then learn nothing).
//! - New INVITEs per source (`sip.invite_rate`/`invite_burst`): beyond them
//!   `503` with `Retry-After`, so a PBX backs off while a flood gets no calls.
//! - All requests per source (`sip.request_rate`/`request_burst`): beyond them,
//!   dropped.
//!
//! The per-source limits are for strangers on a public port. A trunk, a PBX or
//! a proxy (Kamailio) is one address carrying everyone's calls: throttling it
//! per source refuses real calls at the rate the node was built for, and makes
//! a dispatcher declare the node dead. So sources in `sip.allow_cidrs` (when
//! set) and in `sip.trusted_cidrs` skip them; they are bounded by the node's
//! own capacity instead (`limits.max_calls` and the node-wide [`SetupRate`],
//! applied at admission to every new call).
//!
//! The table of sources is bounded: idle entries are pruned, and when it is
//! full of active sources new ones are dropped rather than let it grow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::message::Rejection;

/// Sources tracked at most.
const MAX_SOURCES: usize = 65_536;
/// Prune when the table grows past this.
const PRUNE_AT: usize = 4096;
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub allow: Vec<ipnet::IpNet>,
    /// Exempt from the per-source limits, like `allow` (`sip.trusted_cidrs`).
    pub trusted: Vec<ipnet::IpNet>,
    pub drop_unknown: bool,
    /// New INVITEs per second per source, and the burst allowed.
    pub invite_rate: f64,
    pub invite_burst: f64,
    /// Requests of any kind per second per source, and the burst.
    pub request_rate: f64,
    pub request_burst: f64,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Answer (statelessly) with this and go no further.
    Refuse(Rejection),
    /// Say nothing.
    Drop,
}

/// Why messages were turned away, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardStats {
    pub forbidden: u64,
    pub invite_limited: u64,
    pub request_limited: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        // A hair of tolerance: a refill of exactly one token must not come out
        // as 0.999… and refuse a request that is precisely on the rate.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    requests: Bucket,
    invites: Bucket,
    last_seen: Instant,
    last_logged: Option<Instant>,
}

#[derive(Debug)]
pub struct Guard {
    config: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    stats: GuardStats,
}

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        Guard {
            config,
            sources: HashMap::new(),
            stats: GuardStats::default(),
        }
    }

    pub fn stats(&self) -> GuardStats {
        self.stats
    }

    /// Checks one message from `source` (its first bytes tell a request and its
    /// method, without a parse). The second value is true when this refusal
    /// should be logged (at most once per 10 s per source).
    pub fn check(&mut self, now: Instant, source: IpAddr, data: &[u8]) -> (Verdict, bool) {
        if !self.config.allow.is_empty() && !self.config.allow.iter().any(|n| n.contains(&source)) {
            self.stats.forbidden += 1;
            let log = self.should_log(now, source);
            if self.config.drop_unknown || !is_request(data) || data.starts_with(b"ACK ") {
                return (Verdict::Drop, log);
            }
            return (
                Verdict::Refuse(Rejection::new(403, "Forbidden: your address is not allowed to call here")),
                log,
            );
        }
        if !is_request(data) {
            return (Verdict::Pass, false);
        }
        if self.is_trusted(source) {
            return (Verdict::Pass, false);
        }
        if self.sources.len() >= PRUNE_AT && !self.sources.contains_key(&source) {
            self.sources.retain(|_, s| now.saturating_duration_since(s.last_seen) < IDLE);
            if self.sources.len() >= MAX_SOURCES {
                self.stats.request_limited += 1;
                return (Verdict::Drop, false);
            }
        }
        let c = &self.config;
        let fresh = |burst| Bucket { tokens: burst, at: now };
        let s = self.sources.entry(source).or_insert(Source {
            requests: fresh(c.request_burst),
            invites: fresh(c.invite_burst),
            last_seen: now,
            last_logged: None,
        });
        s.last_seen = now;
        if !s.requests.take(now, c.request_rate, c.request_burst) {
            self.stats.request_limited += 1;
            return (Verdict::Drop, self.should_log(now, source));
        }
        if data.starts_with(b"INVITE ") && !s.invites.take(now, c.invite_rate, c.invite_burst) {
            self.stats.invite_limited += 1;
            let r = Rejection::new(503, "Service Unavailable: too many calls from your address").with_header("Retry-After", "5");
            return (Verdict::Refuse(r), self.should_log(now, source));
        }
        (Verdict::Pass, false)
    }

    /// A configured trunk, PBX or proxy: listed in a non-empty allowlist or in
    /// the trusted list.
    fn is_trusted(&self, source: IpAddr) -> bool {
        let c = &self.config;
        (!c.allow.is_empty() && c.allow.iter().any(|n| n.contains(&source))) || c.trusted.iter().any(|n| n.contains(&source))
    }

    fn should_log(&mut self, now: Instant, source: IpAddr) -> bool {
        let Some(s) = self.sources.get_mut(&source) else {
            // A source outside the allowlist has no entry: log through a small
            // separate rate limit keyed the same way.
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
            let idle = Bucket { tokens: 0.0, at: now };
            self.sources.insert(
                source,
                Source {
                    requests: idle,
                    invites: idle,
                    last_seen: now,
                    last_logged: Some(now),
                },
            );
            return true;
        };
        if s.last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10))
        {
            s.last_logged = Some(now);
            return true;
        }
        false
    }
}

/// The node-wide cap on new calls per second (`limits.max_setup_rate`), the
/// bound that applies to trusted sources too: a token bucket on injected time.
#[derive(Debug, Clone, Copy)]
pub struct SetupRate {
    bucket: Bucket,
    rate: f64,
    burst: f64,
}

impl SetupRate {
    pub fn new(now: Instant, rate: f64, burst: f64) -> Self {
        SetupRate {
            bucket: Bucket { tokens: burst, at: now },
            rate,
            burst,
        }
    }

    /// Takes one call's set-up; `false` when over the rate.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.bucket.take(now, self.rate, self.burst)
    }
}

fn is_request(data: &[u8]) -> bool {
    !data.starts_with(b"SIP/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GuardConfig {
        GuardConfig {
            allow: Vec::new(),
            trusted: Vec::new(),
            drop_unknown: false,
            invite_rate: 2.0,
            invite_burst: 3.0,
            request_rate: 10.0,
            request_burst: 10.0,
        }
    }

    const INVITE: &[u8] = b"INVITE sip:x@y SIP/2.0\r\n";
    const OPTIONS: &[u8] = b"OPTIONS sip:x@y SIP/2.0\r\n";

    #[test]
    fn the_allowlist_refuses_or_drops_strangers() {
        let t0 = Instant::now();
        let trunk: IpAddr = "192.0.2.10".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let mut g = Guard::new(GuardConfig {
            allow: vec!["192.0.2.0/28".parse().unwrap()],
            ..config()
        });
        assert_eq!(g.check(t0, trunk, INVITE).0, Verdict::Pass);
        let (v, log) = g.check(t0, stranger, INVITE);
        assert!(matches!(v, Verdict::Refuse(r) if r.status == 403));
        assert!(log);
        assert!(!g.check(t0, stranger, INVITE).1, "logged once, not per message");
        assert_eq!(
            g.check(t0, stranger, b"ACK sip:x SIP/2.0\r\n").0,
            Verdict::Drop,
            "never answer an ACK"
        );
        let mut quiet = Guard::new(GuardConfig {
            allow: vec!["192.0.2.0/28".parse().unwrap()],
            drop_unknown: true,
            ..config()
        });
        assert_eq!(quiet.check(t0, stranger, INVITE).0, Verdict::Drop);
        assert_eq!(quiet.stats().forbidden, 1);
    }

    #[test]
    fn invites_beyond_the_rate_get_503_and_the_bucket_refills() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut g = Guard::new(config());
        for _ in 0..3 {
            assert_eq!(g.check(t0, ip, INVITE).0, Verdict::Pass);
        }
        let (v, _) = g.check(t0, ip, INVITE);
        assert!(
            matches!(v, Verdict::Refuse(ref r) if r.status == 503 && r.headers.iter().any(|(n, _)| *n == "Retry-After")),
            "{v:?}"
        );
        assert_eq!(g.check(t0, other, INVITE).0, Verdict::Pass, "another source is unaffected");
        assert_eq!(g.check(t0, ip, OPTIONS).0, Verdict::Pass, "other requests have their own budget");
        assert_eq!(
            g.check(t0 + Duration::from_millis(600), ip, INVITE).0,
            Verdict::Pass,
            "refilled at 2/s"
        );
        assert_eq!(
            g.check(t0, ip, b"SIP/2.0 200 OK\r\n").0,
            Verdict::Pass,
            "responses are not rate limited"
        );
    }

    /// Issue 13 #2: a trunk is one address carrying everyone's calls. Allowed
    /// and trusted sources are never throttled per source; strangers still are.
    #[test]
    fn trunks_and_proxies_are_exempt_from_the_per_source_limits() {
        let t0 = Instant::now();
        let trunk: IpAddr = "192.0.2.10".parse().unwrap();
        let proxy: IpAddr = "203.0.113.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let mut allowlisted = Guard::new(GuardConfig {
            allow: vec!["192.0.2.0/28".parse().unwrap()],
            ..config()
        });
        let mut public = Guard::new(GuardConfig {
            trusted: vec!["203.0.113.5/32".parse().unwrap()],
            ..config()
        });
        // 100 calls/s for 10 s (INVITE, ACK, BYE each), far beyond the 2/s limit.
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 10);
            for msg in [INVITE, b"ACK sip:x@y SIP/2.0\r\n".as_slice(), b"BYE sip:x@y SIP/2.0\r\n".as_slice()] {
                assert_eq!(allowlisted.check(now, trunk, msg).0, Verdict::Pass, "allowlisted, message {i}");
                assert_eq!(public.check(now, proxy, msg).0, Verdict::Pass, "trusted, message {i}");
            }
        }
        assert_eq!(allowlisted.stats(), GuardStats::default());
        let refused = (0..10).filter(|_| public.check(t0, stranger, INVITE).0 != Verdict::Pass).count();
        assert_eq!(refused, 7, "a stranger on the public port is still limited");
    }

    #[test]
    fn the_setup_rate_bounds_every_source_and_refills() {
        let t0 = Instant::now();
        let mut r = SetupRate::new(t0, 100.0, 100.0);
        assert_eq!((0..150).filter(|_| r.admit(t0)).count(), 100, "the burst");
        // 100/s sustained is admitted in full.
        let admitted = (1..=1000u32)
            .filter(|i| r.admit(t0 + Duration::from_millis(u64::from(*i) * 10)))
            .count();
        assert_eq!(admitted, 1000);
        assert!(!r.admit(t0 + Duration::from_millis(10_000)), "nothing left at the same instant");
    }

    #[test]
    fn a_request_flood_is_dropped_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut g = Guard::new(config());
        let passed = (0..100).filter(|_| g.check(t0, ip, OPTIONS).0 == Verdict::Pass).count();
        assert_eq!(passed, 10);
        assert_eq!(g.stats().request_limited, 90);
        for i in 0..(PRUNE_AT as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            g.check(t0, ip, OPTIONS);
        }
        g.check(t0 + IDLE * 2, "192.0.2.99".parse().unwrap(), OPTIONS);
        assert!(g.sources.len() < 10, "idle sources pruned: {}", g.sources.len());
    }
}
