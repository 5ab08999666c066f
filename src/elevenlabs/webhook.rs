//! `ElevenLabs-Signature` verification for the post-call webhook, as the SDK's
//! `construct_event` does it (`docs/protocols.md` §4, vector E1): HMAC-SHA256 of
//! `"<t>.<raw body>"` with the webhook secret, hex, compared in constant time
//! with the header's `v0=` value.
//!
//! Stricter than the SDK, which accepts any timestamp up to 30 minutes old and
//! any in the future: precall takes `elevenlabs.webhook_tolerance_seconds`
//! (5 minutes by default) either way, and exactly one `t=` and one `v0=` of the
//! right form, so a header cannot carry a second signature to try. ElevenLabs
//! signs each delivery when it sends it, so a fresh delivery is seconds old;
//! replays inside the window are refused by the store (`webhook_deliveries`).

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The default `elevenlabs.webhook_tolerance_seconds`.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebhookError {
    #[error("missing or malformed ElevenLabs-Signature header")]
    Malformed,
    #[error("timestamp outside the tolerance zone")]
    Stale,
    #[error("signature mismatch")]
    Mismatch,
}

/// An incremental verifier, so a large body can be streamed to disk while it is
/// being authenticated.
pub struct Verifier {
    mac: Hmac<sha2::Sha256>,
    expected: String,
}

impl Verifier {
    /// Checks the header's form and timestamp (`now` in unix seconds, and the
    /// tolerance either way in seconds).
    pub fn new(secret: &str, header: &str, now: i64, tolerance: i64) -> Result<Self, WebhookError> {
        let mut timestamp = None;
        let mut expected = None;
        for part in header.split(',') {
            let part = part.trim();
            if let Some(t) = part.strip_prefix("t=") {
                if timestamp.replace(t).is_some() {
                    return Err(WebhookError::Malformed);
                }
            } else if let Some(v) = part.strip_prefix("v0=") {
                let well_formed = v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !well_formed || expected.replace(part.to_owned()).is_some() {
                    return Err(WebhookError::Malformed);
                }
            }
        }
        let (Some(t), Some(expected)) = (timestamp, expected) else {
            return Err(WebhookError::Malformed);
        };
        if t.is_empty() || t.len() > 12 || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WebhookError::Malformed);
        }
        let ts: i64 = t.parse().map_err(|_| WebhookError::Malformed)?;
        if ts.abs_diff(now) > tolerance.unsigned_abs() {
            return Err(WebhookError::Stale);
        }
        if secret.is_empty() {
            return Err(WebhookError::Mismatch);
        }
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| WebhookError::Mismatch)?;
        mac.update(t.as_bytes());
        mac.update(b".");
        Ok(Verifier { mac, expected })
    }

    pub fn update(&mut self, body: &[u8]) {
        self.mac.update(body);
    }

    pub fn finish(self) -> Result<(), WebhookError> {
        let got = format!("v0={}", hex::encode(self.mac.finalize().into_bytes()));
        if bool::from(got.as_bytes().ct_eq(self.expected.as_bytes())) {
            Ok(())
        } else {
            Err(WebhookError::Mismatch)
        }
    }
}

/// Verifies a whole body at once.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), WebhookError> {
    let mut v = Verifier::new(secret, header, now, DEFAULT_TOLERANCE_SECS)?;
    v.update(body);
    v.finish()
}

/// Signs a body the way ElevenLabs does (for tests and the simulator).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wsec_0123456789abcdef0123456789abcdef";
    const BODY: &str = r#"{"type":"post_call_transcription","event_timestamp":1739537297,"data":{"agent_id":"agent_123","conversation_id":"conv_456","status":"done","transcript":[{"role":"agent","message":"Hello!","time_in_call_secs":0}],"metadata":{"start_time_unix_secs":1739537270,"call_duration_secs":22},"analysis":{"call_successful":"success","transcript_summary":"Greeting."}}}"#;
    const HEADER: &str = "t=1739537297,v0=661e4c0b79c46dd603a653d369e11ccdb528bcc69a524914115251c4304ea199";
    const T: i64 = 1739537297;

    #[test]
    fn e1_vector() {
        assert_eq!(sign(SECRET, T, BODY.as_bytes()), HEADER);
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T + 60), Ok(()));
        // The SDK accepts 30 minutes; precall five, either way.
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T + 31 * 60), Err(WebhookError::Stale));
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T + 6 * 60), Err(WebhookError::Stale));
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T - 3600), Err(WebhookError::Stale));
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T - 240), Ok(()));
        assert_eq!(verify(SECRET, HEADER, BODY.as_bytes(), T + 299), Ok(()));
        let respaced = BODY.replace(":", ": ");
        assert_eq!(verify(SECRET, HEADER, respaced.as_bytes(), T), Err(WebhookError::Mismatch));
        assert_eq!(verify("wrong", HEADER, BODY.as_bytes(), T), Err(WebhookError::Mismatch));
        assert_eq!(verify(SECRET, "v0=abc", BODY.as_bytes(), T), Err(WebhookError::Malformed));
        assert_eq!(verify(SECRET, "t=x,v0=abc", BODY.as_bytes(), T), Err(WebhookError::Malformed));
    }

    #[test]
    fn one_signature_of_one_form_only() {
        let forged = "v0=0000000000000000000000000000000000000000000000000000000000000000";
        let (t, good) = HEADER.split_once(',').unwrap();
        for header in [
            format!("{t},{forged},{good}"),
            format!("{t},{good},{forged}"),
            format!("{t},{t},{good}"),
            format!("{t},{}", good.to_uppercase().replace("V0=", "v0=")),
            format!("{t},{good}00"),
            "t=-1739537297,v0=661e4c0b79c46dd603a653d369e11ccdb528bcc69a524914115251c4304ea199".to_owned(),
            format!("t=99999999999999999999,{good}"),
        ] {
            assert_eq!(
                verify(SECRET, &header, BODY.as_bytes(), T),
                Err(WebhookError::Malformed),
                "{header}"
            );
        }
        assert_eq!(verify(SECRET, &format!("{t}, {good}"), BODY.as_bytes(), T), Ok(()));
    }

    #[test]
    fn streaming_matches_one_shot() {
        let mut v = Verifier::new(SECRET, HEADER, T, DEFAULT_TOLERANCE_SECS).unwrap();
        for chunk in BODY.as_bytes().chunks(7) {
            v.update(chunk);
        }
        assert_eq!(v.finish(), Ok(()));
    }
}
