//! Registering to a SIP trunk (RFC 3261 §10), sans-IO: many trunks deliver
//! calls only to a registered user agent.
//!
//! One [`Registration`] per `[[sip.registrations]]` entry. It sends REGISTER,
//! answers 401/407 digest challenges (MD5 or SHA-256, `qop=auth`, reusing the
//! nonce with an increasing `nc`; the `digest_auth` crate does the hashing),
//! re-registers at 80 % of the granted expiry, retries failures with
//! exponential backoff (1 s doubling to 5 min), retransmits over UDP on
//! Timer E's schedule, and unregisters (`Expires: 0`) at shutdown. The SIP
//! task feeds it responses and timer ticks and sends what it returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{MessageWriter, Response};
use super::tokens::Tokens;

/// One registration, from settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// `sip:registrar.example.com[:port]`: the Request-URI.
    pub registrar: String,
    /// Where REGISTERs are sent (the registrar, or the outbound proxy).
    pub target: SocketAddr,
    /// The address of record: `sip:user@example.com`.
    pub aor: String,
    pub username: String,
    pub password: String,
    pub expires: u32,
    /// UDP, or a TCP or TLS connection precall opens.
    pub transport: RegTransport,
}

/// How REGISTERs travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegTransport {
    Udp,
    Tcp,
    /// TLS to the registrar, its certificate checked against this host name.
    Tls,
}

impl RegTransport {
    fn via_token(self) -> &'static str {
        match self {
            RegTransport::Udp => "UDP",
            RegTransport::Tcp => "TCP",
            RegTransport::Tls => "TLS",
        }
    }

    fn contact_param(self) -> &'static str {
        match self {
            RegTransport::Udp => "",
            RegTransport::Tcp => ";transport=tcp",
            RegTransport::Tls => ";transport=tls",
        }
    }
}

/// Where a registration stands (for logs, `/health` and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegState {
    Registering,
    Registered {
        expires: u32,
    },
    /// The last attempt failed; the next is scheduled.
    Failed {
        why: String,
    },
    Unregistering,
    Unregistered,
}

impl RegState {
    pub fn is_registered(&self) -> bool {
        matches!(self, RegState::Registered { .. })
    }

    /// The state as one stable word, for `/health` and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RegState::Registering => "registering",
            RegState::Registered { .. } => "registered",
            RegState::Failed { .. } => "failed",
            RegState::Unregistering => "unregistering",
            RegState::Unregistered => "unregistered",
        }
    }
}

const T1: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Registration {
    cfg: RegistrationConfig,
    /// Our Contact (and the address in Via).
    local: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    state: RegState,
    challenge: Option<(digest_auth::WwwAuthenticateHeader, &'static str)>,
    /// Challenges answered in a row without success (a wrong password loops otherwise).
    auth_attempts: u32,
    /// The request in flight: its branch, bytes, next retransmission and give-up time.
    in_flight: Option<(String, Vec<u8>, Instant, Duration, Instant)>,
    next_at: Option<Instant>,
    backoff: Duration,
    /// Expires of the REGISTER in flight (0 = unregister).
    asking: u32,
    tokens: Tokens,
}

impl Registration {
    pub fn new(cfg: RegistrationConfig, local: SocketAddr, now: Instant) -> Self {
        Self::with_tokens(cfg, local, now, Tokens::from_os())
    }

    /// A registration whose Call-ID, tag and branches come from `tokens`.
    pub fn with_tokens(cfg: RegistrationConfig, local: SocketAddr, now: Instant, tokens: Tokens) -> Self {
        Registration {
            cfg,
            local,
            call_id: format!("{}@precall", tokens.token(16)),
            from_tag: tokens.token(10),
            cseq: 0,
            state: RegState::Registering,
            challenge: None,
            auth_attempts: 0,
            in_flight: None,
            next_at: Some(now),
            backoff: Duration::from_secs(1),
            asking: 0,
            tokens,
        }
    }

    pub fn aor(&self) -> &str {
        &self.cfg.aor
    }

    pub fn target(&self) -> SocketAddr {
        self.cfg.target
    }

    pub fn state(&self) -> &RegState {
        &self.state
    }

    /// Whether `resp` answers our REGISTER in flight.
    pub fn owns(&self, resp: &Response) -> bool {
        resp.call_id == self.call_id && self.in_flight.as_ref().is_some_and(|(b, ..)| resp.via.branch() == Some(b.as_str()))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self.in_flight.as_ref().map(|(_, _, at, _, give_up)| (*at).min(*give_up));
        [retransmit, self.next_at].into_iter().flatten().min()
    }

    /// Timer tick: what to send now, if anything.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some((_, bytes, at, interval, give_up)) = self.in_flight.as_mut() {
            if now >= *give_up {
                self.in_flight = None;
                return self.failed(now, "no answer from the registrar (timeout)".into());
            }
            if now >= *at {
                *interval = (*interval * 2).min(Duration::from_secs(4));
                *at = now + *interval;
                return Some(bytes.clone());
            }
            return None;
        }
        if self.next_at.is_some_and(|t| now >= t) {
            self.next_at = None;
            if matches!(self.state, RegState::Unregistering | RegState::Unregistered) {
                return None;
            }
            return Some(self.send(now, self.cfg.expires));
        }
        None
    }

    /// Unregister (shutdown): `Expires: 0`, when registered.
    pub fn unregister(&mut self, now: Instant) -> Option<Vec<u8>> {
        let was = std::mem::replace(&mut self.state, RegState::Unregistering);
        self.next_at = None;
        if !was.is_registered() {
            self.in_flight = None;
            self.state = RegState::Unregistered;
            return None;
        }
        Some(self.send(now, 0))
    }

    /// Whether an unregister is still waiting for its answer.
    pub fn unregistering(&self) -> bool {
        self.state == RegState::Unregistering && self.in_flight.is_some()
    }

    /// A response to our REGISTER.
    pub fn handle_response(&mut self, now: Instant, resp: &Response) -> Option<Vec<u8>> {
        if !self.owns(resp) || resp.status < 200 {
            return None;
        }
        self.in_flight = None;
        let unregistering = self.asking == 0;
        match resp.status {
            200..=299 if unregistering => {
                self.state = RegState::Unregistered;
                None
            }
            200..=299 => {
                self.auth_attempts = 0;
                self.backoff = Duration::from_secs(1);
                let expires = granted(resp, &self.local).unwrap_or(self.asking).max(1);
                self.state = RegState::Registered { expires };
                // Re-register at 80 % of what the registrar granted.
                self.next_at = Some(now + Duration::from_secs(u64::from(expires)) * 4 / 5);
                None
            }
            401 | 407 => {
                let name = if resp.status == 401 {
                    "WWW-Authenticate"
                } else {
                    "Proxy-Authenticate"
                };
                let Some(challenge) = resp.headers.get(name).and_then(|h| digest_auth::parse(h).ok()) else {
                    return self.failed(now, format!("{} without a usable {name}", resp.status));
                };
                // A stale nonce is not a wrong password: answer it without counting.
                if !challenge.stale {
                    self.auth_attempts += 1;
                }
                if self.auth_attempts > 2 {
                    self.challenge = None;
                    self.auth_attempts = 0;
                    return self.failed(now, format!("{} {}: credentials refused", resp.status, resp.reason));
                }
                let header = if resp.status == 401 {
                    "Authorization"
                } else {
                    "Proxy-Authorization"
                };
                self.challenge = Some((challenge, header));
                Some(self.send(now, self.asking))
            }
            423 => {
                // Interval Too Brief: ask for the registrar's minimum.
                let min = resp.headers.get("Min-Expires").and_then(|v| v.trim().parse().ok());
                match min {
                    Some(m) if m > self.cfg.expires => {
                        self.cfg.expires = m;
                        Some(self.send(now, m))
                    }
                    _ => self.failed(now, "423 without a usable Min-Expires".into()),
                }
            }
            s => self.failed(now, format!("{s} {}", resp.reason)),
        }
    }

    fn failed(&mut self, now: Instant, why: String) -> Option<Vec<u8>> {
        if self.state == RegState::Unregistering {
            self.state = RegState::Unregistered;
            return None;
        }
        tracing::warn!(aor = %self.cfg.aor, %why, retry_in_s = self.backoff.as_secs(), "registration failed");
        self.state = RegState::Failed { why };
        self.next_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        None
    }

    fn send(&mut self, now: Instant, expires: u32) -> Vec<u8> {
        self.cseq += 1;
        self.asking = expires;
        if expires > 0 && !self.state.is_registered() {
            self.state = RegState::Registering;
        }
        let branch = format!("z9hG4bK{}", self.tokens.token(16));
        let contact = self.contact();
        let mut w = MessageWriter::request("REGISTER", &self.cfg.registrar);
        let token = self.cfg.transport.via_token();
        w.header("Via", format!("SIP/2.0/{token} {};branch={branch};rport", self.local));
        w.header("Max-Forwards", 70);
        w.header("From", format!("<{}>;tag={}", self.cfg.aor, self.from_tag));
        w.header("To", format!("<{}>", self.cfg.aor));
        w.header("Call-ID", &self.call_id);
        w.header("CSeq", format!("{} REGISTER", self.cseq));
        w.header("Contact", format!("<{contact}>"));
        w.header("Expires", expires);
        w.header("Allow", super::endpoint::ALLOW);
        w.header("Supported", "timer");
        if let Some((challenge, header)) = self.challenge.as_mut() {
            let ctx = digest_auth::AuthContext::new_with_method(
                self.cfg.username.as_str(),
                self.cfg.password.as_str(),
                self.cfg.registrar.as_str(),
                Option::<&[u8]>::None,
                digest_auth::HttpMethod::from("REGISTER"),
            );
            if let Ok(answer) = challenge.respond(&ctx) {
                w.header(header, answer.to_header_string());
            }
        }
        w.header("User-Agent", concat!("precall/", env!("CARGO_PKG_VERSION")));
        let bytes = w.finish(None, &[]);
        // Over TCP nothing is retransmitted (§17.1.1.2): only the 64·T1 deadline applies.
        let first_retransmit = if self.stream() { now + 64 * T1 } else { now + T1 };
        self.in_flight = Some((branch, bytes.clone(), first_retransmit, T1, now + 64 * T1));
        bytes
    }

    fn contact(&self) -> String {
        let user = self
            .cfg
            .aor
            .strip_prefix("sip:")
            .and_then(|r| r.split('@').next())
            .filter(|u| !u.is_empty())
            .unwrap_or("precall");
        let transport = self.cfg.transport.contact_param();
        format!("sip:{user}@{}{transport}", self.local)
    }

    /// REGISTERs go over a connection (TCP or TLS), not UDP.
    pub fn stream(&self) -> bool {
        self.cfg.transport != RegTransport::Udp
    }

    pub fn transport(&self) -> RegTransport {
        self.cfg.transport
    }
}

/// The expiry the registrar granted our Contact: its `expires` parameter, or the
/// `Expires` header.
fn granted(resp: &Response, local: &SocketAddr) -> Option<u32> {
    let ours = local.to_string();
    let from_contact = resp.headers.list("Contact").find(|c| c.contains(&ours)).and_then(|c| {
        c.split(';')
            .find_map(|p| p.trim().strip_prefix("expires=").and_then(|v| v.trim().parse().ok()))
    });
    from_contact.or_else(|| resp.headers.get("Expires").and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn cfg() -> RegistrationConfig {
        RegistrationConfig {
            registrar: "sip:registrar.example.com".into(),
            target: "192.0.2.50:5060".parse().unwrap(),
            aor: "sip:1000@example.com".into(),
            username: "1000".into(),
            password: "secret".into(),
            expires: 600,
            transport: RegTransport::Udp,
        }
    }

    /// A response to `req` with `status` and extra header lines.
    fn answer(req: &[u8], status: &str, extra: &str) -> Response {
        let text = String::from_utf8_lossy(req);
        let mut out = format!("SIP/2.0 {status}\r\n");
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            let line = text.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap();
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str(extra);
        out.push_str("Content-Length: 0\r\n\r\n");
        Response::validate(message::parse(out.as_bytes()).unwrap()).unwrap()
    }

    fn header(req: &[u8], name: &str) -> Option<String> {
        String::from_utf8_lossy(req)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    }

    #[test]
    fn challenge_register_refresh_and_unregister() {
        let t0 = Instant::now();
        let local: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        let mut r = Registration::new(cfg(), local, t0);
        let first = r.handle_timeout(t0).expect("REGISTER at start");
        assert!(first.starts_with(b"REGISTER sip:registrar.example.com SIP/2.0\r\n"));
        assert_eq!(header(&first, "Expires").as_deref(), Some("600"));
        assert_eq!(header(&first, "Contact").as_deref(), Some("<sip:1000@192.0.2.10:5060>"));
        // Challenged with qop=auth and SHA-256: the answer carries a valid digest.
        let challenge = r#"Digest realm="example.com", nonce="n0nce", qop="auth", algorithm=SHA-256"#;
        let second = r
            .handle_response(
                t0,
                &answer(&first, "401 Unauthorized", &format!("WWW-Authenticate: {challenge}\r\n")),
            )
            .expect("REGISTER with credentials");
        let auth = header(&second, "Authorization").expect("Authorization");
        let parsed = digest_auth::AuthorizationHeader::parse(&auth).unwrap();
        assert_eq!(
            (parsed.nc, parsed.username.as_str(), parsed.uri.as_str()),
            (1, "1000", "sip:registrar.example.com")
        );
        let mut expected = parsed.clone();
        let mut ctx = digest_auth::AuthContext::new_with_method(
            "1000",
            "secret",
            "sip:registrar.example.com",
            Option::<&[u8]>::None,
            digest_auth::HttpMethod::from("REGISTER"),
        );
        ctx.set_custom_cnonce(parsed.cnonce.clone().unwrap());
        expected.digest(&ctx);
        assert_eq!(expected.response, parsed.response, "the digest verifies");
        assert!(header(&second, "CSeq").unwrap().starts_with("2 "));
        // 200 with a shorter grant on our Contact: re-register at 80 % of it.
        let ok = answer(&second, "200 OK", "Contact: <sip:1000@192.0.2.10:5060>;expires=100\r\n");
        assert_eq!(r.handle_response(t0, &ok), None);
        assert_eq!(r.state(), &RegState::Registered { expires: 100 });
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(80)));
        let refresh = r.handle_timeout(t0 + Duration::from_secs(80)).expect("refresh");
        let auth = header(&refresh, "Authorization").expect("the nonce is reused");
        assert_eq!(digest_auth::AuthorizationHeader::parse(&auth).unwrap().nc, 2, "with nc incremented");
        r.handle_response(t0, &answer(&refresh, "200 OK", "Expires: 100\r\n"));
        let bye = r.unregister(t0 + Duration::from_secs(90)).expect("unREGISTER");
        assert_eq!(header(&bye, "Expires").as_deref(), Some("0"));
        assert!(r.unregistering());
        r.handle_response(t0, &answer(&bye, "200 OK", ""));
        assert_eq!(r.state(), &RegState::Unregistered);
    }

    #[test]
    fn failures_back_off_and_wrong_passwords_stop_looping() {
        let t0 = Instant::now();
        let mut r = Registration::new(cfg(), "192.0.2.10:5060".parse().unwrap(), t0);
        let mut req = r.handle_timeout(t0).unwrap();
        let challenge = "WWW-Authenticate: Digest realm=\"x\", nonce=\"n\"\r\n";
        for _ in 0..2 {
            req = r
                .handle_response(t0, &answer(&req, "401 Unauthorized", challenge))
                .expect("retry with credentials");
        }
        assert_eq!(
            r.handle_response(t0, &answer(&req, "401 Unauthorized", challenge)),
            None,
            "gives up"
        );
        assert!(matches!(r.state(), RegState::Failed { .. }));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        let again = r.handle_timeout(t0 + Duration::from_secs(1)).unwrap();
        r.handle_response(t0, &answer(&again, "503 Service Unavailable", ""));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(2)), "backoff doubles");
        // No answer at all: Timer E retransmissions, then a failure after 64·T1.
        let t1 = t0 + Duration::from_secs(2);
        let lost = r.handle_timeout(t1).unwrap();
        assert_eq!(r.handle_timeout(t1 + T1), Some(lost.clone()), "retransmitted");
        assert_eq!(r.handle_timeout(t1 + 64 * T1), None);
        assert!(matches!(r.state(), RegState::Failed { why } if why.contains("timeout")));
    }
}
