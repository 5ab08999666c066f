//! Digest authentication of incoming INVITEs (RFC 3261 §22, RFC 7616 hashes),
//! for PBXs and trunks that should prove who they are.
//!
//! Nonces are stateless: `<unix ms, hex>.<HMAC-SHA256(process secret, ms), hex>`,
//! so any node restart invalidates old ones and nothing is stored per caller.
//! A nonce older than its lifetime is *stale*: the caller gets a fresh
//! challenge with `stale=true` and retries without asking its user again. The
//! digest itself is computed by the `digest_auth` crate (MD5 or SHA-256,
//! `qop=auth`) and compared in constant time.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// `sip.auth_realm` and the users allowed to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub realm: String,
    /// (username, password)
    pub users: Vec<(String, String)>,
    pub nonce_lifetime: Duration,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials for our realm: challenge.
    Missing,
    /// Our nonce, but too old: challenge with `stale=true`.
    Stale,
    /// Wrong user, password or nonce: challenge again.
    Invalid,
}

/// Stateless nonces: `<ms>.<HMAC(key, ms)>`, where `ms` counts from the
/// authenticator's epoch (the first instant it was asked about). Time and the
/// key are injected, so a simulated run is reproducible; a restart changes the
/// key, which makes every older nonce invalid, not merely stale.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    secret: [u8; 32],
    epoch: std::sync::OnceLock<Instant>,
}

impl Authenticator {
    pub fn new(config: AuthConfig, secret: [u8; 32]) -> Self {
        Authenticator {
            config,
            secret,
            epoch: std::sync::OnceLock::new(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    fn sign(&self, ms: u64) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(&ms.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The `WWW-Authenticate` value of a fresh challenge.
    pub fn challenge(&self, now: Instant, stale: bool) -> String {
        let ms = self.ms(now);
        let nonce = format!("{ms:x}.{}", self.sign(ms));
        let stale = if stale { ", stale=true" } else { "" };
        format!(
            r#"Digest realm="{}", nonce="{nonce}", qop="auth", algorithm=MD5{stale}"#,
            self.config.realm
        )
    }

    /// Checks an `Authorization` (or `Proxy-Authorization`) value for `method`;
    /// the username on success.
    pub fn verify(&self, now: Instant, method: &str, authorization: Option<&str>) -> Result<String, AuthFailure> {
        let header = authorization.ok_or(AuthFailure::Missing)?;
        let parsed = digest_auth::AuthorizationHeader::parse(header).map_err(|_| AuthFailure::Invalid)?;
        if parsed.realm != self.config.realm {
            return Err(AuthFailure::Missing);
        }
        let (ms_hex, mac) = parsed.nonce.split_once('.').ok_or(AuthFailure::Invalid)?;
        let ms = u64::from_str_radix(ms_hex, 16).map_err(|_| AuthFailure::Invalid)?;
        if !bool::from(self.sign(ms).as_bytes().ct_eq(mac.as_bytes())) {
            return Err(AuthFailure::Invalid);
        }
        let Some((user, password)) = self.config.users.iter().find(|(u, _)| *u == parsed.username) else {
            return Err(AuthFailure::Invalid);
        };
        let mut ctx = digest_auth::AuthContext::new_with_method(
            user.as_str(),
            password.as_str(),
            parsed.uri.as_str(),
            Option::<&[u8]>::None,
            digest_auth::HttpMethod::from(method),
        );
        if let Some(c) = &parsed.cnonce {
            ctx.set_custom_cnonce(c.as_str());
        }
        let mut expected = parsed.clone();
        expected.digest(&ctx);
        if !bool::from(expected.response.as_bytes().ct_eq(parsed.response.as_bytes())) {
            return Err(AuthFailure::Invalid);
        }
        let age = self.ms(now).saturating_sub(ms);
        if age > self.config.nonce_lifetime.as_millis() as u64 {
            return Err(AuthFailure::Stale);
        }
        Ok(user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(lifetime: Duration) -> Authenticator {
        Authenticator::new(
            AuthConfig {
                realm: "precall".into(),
                users: vec![("pbx".into(), "s3cret".into())],
                nonce_lifetime: lifetime,
            },
            [7; 32],
        )
    }

    fn answer(challenge: &str, user: &str, password: &str) -> String {
        let mut prompt = digest_auth::parse(challenge).unwrap();
        let ctx = digest_auth::AuthContext::new_with_method(
            user,
            password,
            "sip:100@192.0.2.10",
            Option::<&[u8]>::None,
            digest_auth::HttpMethod::from("INVITE"),
        );
        prompt.respond(&ctx).unwrap().to_header_string()
    }

    #[test]
    fn a_right_answer_passes_and_wrong_ones_do_not() {
        let a = auth(Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(a.verify(t0, "INVITE", None), Err(AuthFailure::Missing));
        let challenge = a.challenge(t0, false);
        assert!(challenge.contains(r#"realm="precall""#) && challenge.contains(r#"qop="auth""#));
        assert_eq!(a.verify(t0, "INVITE", Some(&answer(&challenge, "pbx", "s3cret"))), Ok("pbx".into()));
        assert_eq!(
            a.verify(t0, "INVITE", Some(&answer(&challenge, "pbx", "guess"))),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            a.verify(t0, "INVITE", Some(&answer(&challenge, "eve", "s3cret"))),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            a.verify(t0, "BYE", Some(&answer(&challenge, "pbx", "s3cret"))),
            Err(AuthFailure::Invalid),
            "bound to the method"
        );
        // A nonce made up by the caller (or another node's) is refused.
        let forged = answer(&challenge.replace("nonce=\"", "nonce=\"1"), "pbx", "s3cret");
        assert_eq!(a.verify(t0, "INVITE", Some(&forged)), Err(AuthFailure::Invalid));
    }

    #[test]
    fn an_old_nonce_is_stale_not_wrong() {
        let a = auth(Duration::ZERO);
        let t0 = Instant::now();
        let challenge = a.challenge(t0, false);
        let t0 = t0 + Duration::from_millis(5);
        assert_eq!(
            a.verify(t0, "INVITE", Some(&answer(&challenge, "pbx", "s3cret"))),
            Err(AuthFailure::Stale)
        );
        assert!(a.challenge(t0, true).ends_with("stale=true"));
    }
}
