//! SRTP (RFC 3711) with SDES keys (RFC 4568): the policy, the crypto suites
//! precall speaks, the `a=crypto` attribute, and a call's two cryptographic
//! contexts. The transform itself is `webrtc-srtp`, a pure-Rust implementation
//! that carries the RFC 3711 and RFC 7714 vectors; precall only chooses keys
//! and counts what fails.
//!
//! Keys are plain bytes in `Copy` structs so that negotiation stays a pure
//! function of its inputs: the random local key is drawn at the IO edge and
//! handed in, like the RTP seeds.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use webrtc_srtp::protection_profile::ProtectionProfile;

/// `rtp.srtp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Plain RTP only: SRTP offers are refused with 488 (or answered on a
    /// plain alternative stream when one is offered).
    Off,
    /// SRTP when the caller offers it, plain RTP otherwise.
    #[default]
    Optional,
    /// SRTP only: plain-RTP offers get 488 and a `Warning`.
    Required,
}

/// The SDES crypto suites precall answers, in its order of preference when it
/// makes the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    /// RFC 7714.
    AeadAes128Gcm,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32, Suite::AeadAes128Gcm];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    /// Master key plus master salt, the `inline:` key's length.
    pub fn key_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => 30,
            Suite::AeadAes128Gcm => 28,
        }
    }

    /// What SRTP adds to an RTP packet (the authentication tag).
    pub fn overhead(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
            Suite::AeadAes128Gcm => 16,
        }
    }
}

/// The largest trailer any suite adds to a packet.
pub const MAX_OVERHEAD: usize = 16;
/// The longest key material (`inline:` value, decoded).
pub const MAX_KEY: usize = 30;

/// Key material for one suite: master key then master salt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyMaterial {
    bytes: [u8; MAX_KEY],
    len: u8,
}

impl KeyMaterial {
    /// The first `suite.key_len()` bytes of `random`.
    pub fn from_random(suite: Suite, random: &[u8; MAX_KEY]) -> KeyMaterial {
        KeyMaterial {
            bytes: *random,
            len: suite.key_len() as u8,
        }
    }

    /// Key material from bytes (at most [`MAX_KEY`]).
    pub fn new(b: &[u8]) -> Option<KeyMaterial> {
        Self::from_slice(b)
    }

    fn from_slice(b: &[u8]) -> Option<KeyMaterial> {
        if b.len() > MAX_KEY {
            return None;
        }
        let mut bytes = [0; MAX_KEY];
        bytes[..b.len()].copy_from_slice(b);
        Some(KeyMaterial { bytes, len: b.len() as u8 })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys (logs end up in journald and bug reports).
        write!(f, "KeyMaterial({} bytes)", self.len)
    }
}

/// One `a=crypto` line (RFC 4568 §9.1) precall can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: KeyMaterial,
}

/// Why an `a=crypto` line cannot be used. Unknown suites are not an error:
/// the offer lists alternatives and we skip what we do not speak.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    #[error("a=crypto is malformed")]
    Malformed,
    #[error("a=crypto uses a suite precall does not speak")]
    UnknownSuite,
    #[error("a=crypto key has the wrong length for its suite")]
    KeyLength,
    #[error("a=crypto uses an MKI or session parameters precall does not support")]
    Unsupported,
}

impl Crypto {
    /// Parses the value after `a=crypto:`: `<tag> <suite> inline:<key>[|lifetime][|mki:len] [params]`.
    pub fn parse(value: &str) -> Result<Crypto, CryptoError> {
        let mut words = value.split_whitespace();
        let tag: u32 = words
            .next()
            .and_then(|t| t.parse().ok())
            .filter(|t| *t < 1_000_000_000)
            .ok_or(CryptoError::Malformed)?;
        let suite = Suite::from_name(words.next().ok_or(CryptoError::Malformed)?).ok_or(CryptoError::UnknownSuite)?;
        let params = words.next().ok_or(CryptoError::Malformed)?;
        // Session parameters (UNENCRYPTED_SRTP, KDR=…) change the transform; refuse
        // this line rather than get it wrong.
        if words.next().is_some() {
            return Err(CryptoError::Unsupported);
        }
        // Only one key: several `inline:` keys joined by ';' need MKIs.
        if params.contains(';') {
            return Err(CryptoError::Unsupported);
        }
        let inline = params.strip_prefix("inline:").ok_or(CryptoError::Malformed)?;
        let mut parts = inline.split('|');
        let key = parts.next().ok_or(CryptoError::Malformed)?;
        for extra in parts {
            // A lifetime (`2^31` or a number) is fine; an MKI (`1:4`) is not.
            if extra.contains(':') {
                return Err(CryptoError::Unsupported);
            }
        }
        if key.len() > 64 {
            return Err(CryptoError::KeyLength);
        }
        let decoded = STANDARD.decode(key).map_err(|_| CryptoError::Malformed)?;
        if decoded.len() != suite.key_len() {
            return Err(CryptoError::KeyLength);
        }
        let key = KeyMaterial::from_slice(&decoded).ok_or(CryptoError::KeyLength)?;
        Ok(Crypto { tag, suite, key })
    }

    /// Appends `a=crypto:…\r\n`.
    pub fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "a=crypto:{} {} inline:{}\r\n",
            self.tag,
            self.suite.name(),
            STANDARD.encode(self.key.as_bytes())
        );
    }
}

/// What the offer/answer settled for SRTP: the suite, our key (what we encrypt
/// with) and theirs (what we decrypt with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpParams {
    /// The `a=crypto` tag both sides use.
    pub tag: u32,
    pub suite: Suite,
    pub local: KeyMaterial,
    pub remote: KeyMaterial,
}

#[derive(Debug, Error)]
pub enum SrtpError {
    #[error("SRTP authentication failed")]
    Auth,
    #[error("SRTP packet replayed")]
    Replay,
    #[error("not an SRTP packet")]
    Malformed,
    #[error("SRTP packet does not fit the buffer")]
    TooLong,
    #[error("SRTP: {0}")]
    Other(String),
}

impl From<webrtc_srtp::Error> for SrtpError {
    fn from(e: webrtc_srtp::Error) -> Self {
        use webrtc_srtp::Error as E;
        match e {
            // GCM reports a bad tag as the AEAD's opaque error.
            E::ErrFailedToVerifyAuthTag | E::RtpFailedToVerifyAuthTag | E::RtcpFailedToVerifyAuthTag | E::AesGcm(_) => SrtpError::Auth,
            E::SrtpSsrcDuplicated(..) | E::SrtcpSsrcDuplicated(..) | E::ErrDuplicated => SrtpError::Replay,
            E::ErrTooShortRtp | E::ErrTooShortRtcp => SrtpError::Malformed,
            other => SrtpError::Other(other.to_string()),
        }
    }
}

/// Replay window (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: usize = 128;

/// A call's SRTP: one context that encrypts what we send, one that decrypts
/// what the caller sends (a context is one-way), each for RTP and RTCP.
pub struct SrtpSession {
    params: SrtpParams,
    outbound: Context,
    inbound: Context,
    /// Packets dropped for a bad authentication tag, and as replays.
    pub auth_failures: u64,
    pub replays: u64,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("suite", &self.params.suite)
            .field("auth_failures", &self.auth_failures)
            .field("replays", &self.replays)
            .finish()
    }
}

fn context(suite: Suite, key: &KeyMaterial) -> Result<Context, SrtpError> {
    let (master, salt) = key.as_bytes().split_at(16);
    Ok(Context::new(
        master,
        salt,
        suite.profile(),
        Some(srtp_replay_protection(REPLAY_WINDOW)),
        Some(srtcp_replay_protection(REPLAY_WINDOW)),
    )?)
}

impl SrtpSession {
    pub fn new(params: SrtpParams) -> Result<Self, SrtpError> {
        Ok(SrtpSession {
            params,
            outbound: context(params.suite, &params.local)?,
            inbound: context(params.suite, &params.remote)?,
            auth_failures: 0,
            replays: 0,
        })
    }

    pub fn params(&self) -> SrtpParams {
        self.params
    }

    /// Encrypts the RTP packet in `buf[..len]` in place and returns the new
    /// length (the tag is appended; `buf` must have [`MAX_OVERHEAD`] spare).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let out = self.outbound.encrypt_rtp(buf.get(..len).ok_or(SrtpError::TooLong)?)?;
        copy_into(buf, &out)
    }

    /// Decrypts and authenticates `packet` into `out`, returning the plain
    /// RTP length. Failures are counted; the caller drops the packet.
    pub fn unprotect_rtp(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let result = self.inbound.decrypt_rtp(packet).map_err(SrtpError::from);
        self.count(result).and_then(|plain| copy_into(out, &plain))
    }

    /// SRTCP (RFC 3711 §3.4): the same keys, their own index and replay window.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let out = self.outbound.encrypt_rtcp(buf.get(..len).ok_or(SrtpError::TooLong)?)?;
        copy_into(buf, &out)
    }

    pub fn unprotect_rtcp(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, SrtpError> {
        let result = self.inbound.decrypt_rtcp(packet).map_err(SrtpError::from);
        self.count(result).and_then(|plain| copy_into(out, &plain))
    }

    fn count(&mut self, r: Result<bytes::Bytes, SrtpError>) -> Result<bytes::Bytes, SrtpError> {
        match &r {
            Err(SrtpError::Auth) => self.auth_failures += 1,
            Err(SrtpError::Replay) => self.replays += 1,
            _ => {}
        }
        r
    }
}

fn copy_into(buf: &mut [u8], data: &[u8]) -> Result<usize, SrtpError> {
    let dst = buf.get_mut(..data.len()).ok_or(SrtpError::TooLong)?;
    dst.copy_from_slice(data);
    Ok(data.len())
}

#[cfg(test)]
mod tests;
