//! DTLS-SRTP (RFC 5763, RFC 5764): the handshake on the call's own RTP
//! socket, the certificate fingerprint check against the SDP, and the SRTP
//! keys exported from the session. The DTLS state machine is `webrtc-dtls`
//! (pure Rust); precall supplies the datagram path and checks the peer.
//!
//! The call task demultiplexes its socket (RFC 7983: first byte 20–63 is
//! DTLS) and hands DTLS datagrams to [`handshake`], which runs beside the call;
//! the call machine sends and accepts no media until the keys arrive, so
//! nothing crosses the network in clear while the handshake runs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dtls_util::Conn;
use dtls_util::KeyingMaterialExporter as _;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;

use super::srtp::{KeyMaterial, SrtpParams, Suite};

/// How long a handshake may take before the call gives up on it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// DTLS datagrams queued for the handshake; more are dropped (the peer
/// retransmits its flight).
pub const QUEUE: usize = 32;

/// Whether the first byte of a datagram on the media port makes it DTLS.
pub fn is_dtls(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| (20..=63).contains(b))
}

#[derive(Debug, Error)]
pub enum DtlsError {
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("DTLS handshake timed out")]
    Timeout,
    #[error("the peer's certificate does not match the SDP fingerprint")]
    Fingerprint,
    #[error("DTLS negotiated no SRTP profile precall speaks")]
    Profile,
    #[error("cannot export SRTP keys: {0}")]
    Export(String),
    #[error("no DTLS certificate: {0}")]
    Identity(String),
}

/// This process's DTLS certificate (self-signed, as RFC 5763 expects: the
/// SDP fingerprint is what authenticates it) and its SHA-256 fingerprint.
pub struct Identity {
    certificate: Certificate,
    pub fingerprint: [u8; 32],
}

static IDENTITY: OnceLock<Result<Identity, String>> = OnceLock::new();

/// The certificate, generated once on first use.
pub fn identity() -> Result<&'static Identity, DtlsError> {
    IDENTITY
        .get_or_init(|| {
            let certificate = Certificate::generate_self_signed(vec!["precall".to_owned()]).map_err(|e| e.to_string())?;
            let der = certificate.certificate.first().ok_or("empty certificate")?;
            let fingerprint = Sha256::digest(der.as_ref()).into();
            Ok(Identity { certificate, fingerprint })
        })
        .as_ref()
        .map_err(|e| DtlsError::Identity(e.clone()))
}

/// `AB:CD:…`, as `a=fingerprint:sha-256` writes it.
pub fn format_fingerprint(f: &[u8; 32]) -> String {
    let mut s = String::with_capacity(95);
    for (i, b) in f.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Reads `sha-256 AB:CD:…` (case-insensitive); other hashes are not accepted.
pub fn parse_fingerprint(value: &str) -> Option<[u8; 32]> {
    let (alg, hex) = value.trim().split_once(' ')?;
    if !alg.eq_ignore_ascii_case("sha-256") {
        return None;
    }
    let mut out = [0u8; 32];
    let mut parts = hex.trim().split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// What the offer/answer settled for DTLS: our role and the peer's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsParams {
    /// We send the ClientHello (`a=setup:active` on our side).
    pub client: bool,
    pub remote_fingerprint: [u8; 32],
}

/// The datagram path a handshake runs over: reads come from the call task's
/// demultiplexer, writes go out of the call's RTP socket to where the peer's
/// DTLS last came from (or the SDP address before that).
struct Path {
    socket: Arc<UdpSocket>,
    /// Where the handshake talks to: see [`Pin`].
    peer: Mutex<Pin>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
}

/// Which source the handshake belongs to. Without this, whoever sent the last
/// DTLS datagram to the media port would be answered, and a third party could
/// break a caller's handshake (it could never get keys: the fingerprint check
/// stops it, but the call would end). The first source is pinned; only the
/// address the SDP declared may take over from it (a stranger who raced the
/// real peer's first flight loses); everything else is dropped.
#[derive(Debug, Clone, Copy)]
struct Pin {
    declared: SocketAddr,
    pinned: Option<SocketAddr>,
}

impl Pin {
    fn new(declared: SocketAddr) -> Self {
        Pin { declared, pinned: None }
    }

    /// Whether a datagram from `from` belongs to the handshake.
    fn admit(&mut self, from: SocketAddr) -> bool {
        match self.pinned {
            Some(p) if p == from => true,
            Some(_) if from != self.declared => false,
            _ => {
                self.pinned = Some(from);
                true
            }
        }
    }

    /// Where to send: the pinned source, or the declared address before any.
    fn peer(&self) -> SocketAddr {
        self.pinned.unwrap_or(self.declared)
    }
}

impl Path {
    fn peer(&self) -> SocketAddr {
        self.peer.lock().unwrap_or_else(|p| p.into_inner()).peer()
    }
}

#[async_trait::async_trait]
impl Conn for Path {
    async fn connect(&self, _addr: SocketAddr) -> dtls_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> dtls_util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> dtls_util::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        let (data, from) = loop {
            let (data, from) = rx.recv().await.ok_or(dtls_util::Error::ErrUseClosedNetworkConn)?;
            if self.peer.lock().unwrap_or_else(|p| p.into_inner()).admit(from) {
                break (data, from);
            }
            tracing::debug!(%from, "DTLS datagram from a source that is not the handshake's dropped");
        };
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> dtls_util::Result<usize> {
        Ok(self.socket.send_to(buf, self.peer()).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> dtls_util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> dtls_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer())
    }

    async fn close(&self) -> dtls_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A finished handshake: the keys, and the session, which must stay up for
/// the call (the peer may retransmit its last flight).
pub struct Established {
    pub keys: SrtpParams,
    pub session: DTLSConn,
}

/// Runs the handshake and derives the SRTP keys (RFC 5764 §4.2).
pub async fn handshake(
    params: DtlsParams,
    socket: Arc<UdpSocket>,
    first_peer: SocketAddr,
    rx: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
) -> Result<Established, DtlsError> {
    let identity = identity()?;
    let path = Arc::new(Path {
        socket,
        peer: Mutex::new(Pin::new(first_peer)),
        rx: tokio::sync::Mutex::new(rx),
    });
    let config = Config {
        certificates: vec![identity.certificate.clone()],
        srtp_protection_profiles: vec![
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        ],
        extended_master_secret: ExtendedMasterSecretType::Request,
        // Self-signed on both sides: the SDP fingerprint, checked below, is
        // what authenticates the peer.
        insecure_skip_verify: true,
        client_auth: ClientAuthType::RequireAnyClientCert,
        ..Config::default()
    };
    let session = tokio::time::timeout(HANDSHAKE_TIMEOUT, DTLSConn::new(path, config, params.client, None))
        .await
        .map_err(|_| DtlsError::Timeout)?
        .map_err(|e| DtlsError::Handshake(e.to_string()))?;
    let state = session.connection_state().await;
    let peer = state.peer_certificates.first().ok_or(DtlsError::Fingerprint)?;
    let seen: [u8; 32] = Sha256::digest(peer).into();
    if seen != params.remote_fingerprint {
        return Err(DtlsError::Fingerprint);
    }
    let suite = match session.selected_srtpprotection_profile() {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Suite::AesCm128HmacSha1_80,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => Suite::AesCm128HmacSha1_32,
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Suite::AeadAes128Gcm,
        _ => return Err(DtlsError::Profile),
    };
    let salt = suite.key_len() - 16;
    let material = state
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * suite.key_len())
        .await
        .map_err(|e| DtlsError::Export(e.to_string()))?;
    let keys = split_keys(suite, salt, &material, params.client).ok_or(DtlsError::Profile)?;
    Ok(Established { keys, session })
}

/// client key | server key | client salt | server salt (RFC 5764 §4.2).
fn split_keys(suite: Suite, salt: usize, m: &[u8], client: bool) -> Option<SrtpParams> {
    let (ck, rest) = m.split_at_checked(16)?;
    let (sk, rest) = rest.split_at_checked(16)?;
    let (cs, ss) = rest.split_at_checked(salt)?;
    let client_key = KeyMaterial::new(&[ck, cs].concat())?;
    let server_key = KeyMaterial::new(&[sk, ss.get(..salt)?].concat())?;
    let (local, remote) = if client {
        (client_key, server_key)
    } else {
        (server_key, client_key)
    };
    Some(SrtpParams {
        tag: 0,
        suite,
        local,
        remote,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_handshake_stays_with_its_first_source_unless_the_declared_peer_appears() {
        use super::Pin;
        let declared = "192.0.2.10:4000".parse().unwrap();
        let nat = "198.51.100.7:61000".parse().unwrap();
        let stranger = "203.0.113.66:5555".parse().unwrap();
        // A NATed caller: its first flight pins it, a stranger is dropped.
        let mut pin = Pin::new(declared);
        assert_eq!(pin.peer(), declared, "before anything arrives, the SDP address");
        assert!(pin.admit(nat));
        assert!(!pin.admit(stranger));
        assert!(pin.admit(nat));
        assert_eq!(pin.peer(), nat);
        // A stranger who raced the caller's first flight loses to the declared address.
        let mut pin = Pin::new(declared);
        assert!(pin.admit(stranger));
        assert!(pin.admit(declared));
        assert!(!pin.admit(stranger), "the stranger is dropped once the declared peer speaks");
        assert_eq!(pin.peer(), declared);
    }

    use super::*;

    #[test]
    fn fingerprints_round_trip_and_only_sha256_is_taken() {
        let f: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let text = format_fingerprint(&f);
        assert_eq!(text.len(), 95);
        assert_eq!(parse_fingerprint(&format!("sha-256 {text}")), Some(f));
        assert_eq!(parse_fingerprint(&format!("SHA-256 {}", text.to_lowercase())), Some(f));
        assert_eq!(parse_fingerprint(&format!("sha-1 {text}")), None);
        assert_eq!(parse_fingerprint("sha-256 AB:CD"), None);
        assert_eq!(parse_fingerprint(&format!("sha-256 {text}:00")), None);
        assert!(is_dtls(&[22, 254, 253]) && !is_dtls(&[0x80, 0]) && !is_dtls(&[]));
    }

    #[test]
    fn keys_split_by_role() {
        let m: Vec<u8> = (0..60).collect();
        let server = split_keys(Suite::AesCm128HmacSha1_80, 14, &m, false).expect("split");
        let client = split_keys(Suite::AesCm128HmacSha1_80, 14, &m, true).expect("split");
        assert_eq!(server.local, client.remote);
        assert_eq!(client.local.as_bytes()[..16], m[..16]);
        assert_eq!(client.local.as_bytes()[16..], m[32..46]);
        assert_eq!(server.local.as_bytes()[..16], m[16..32]);
        assert_eq!(server.local.as_bytes()[16..], m[46..60]);
    }

    /// Two handshakes against each other over real loopback sockets: both
    /// sides derive mirrored keys, and a wrong fingerprint is refused.
    #[tokio::test]
    async fn two_ends_agree_on_keys_and_a_wrong_fingerprint_fails() {
        let fp = identity().expect("identity").fingerprint;
        for (expected, ok) in [(fp, true), ([0u8; 32], false)] {
            let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
            let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
            let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
            let (a_tx, a_rx) = mpsc::channel(QUEUE);
            let (b_tx, b_rx) = mpsc::channel(QUEUE);
            let pump = |sock: Arc<UdpSocket>, tx: mpsc::Sender<(Vec<u8>, SocketAddr)>| {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                        if tx.send((buf[..n].to_vec(), from)).await.is_err() {
                            return;
                        }
                    }
                })
            };
            let (pa, pb) = (pump(a.clone(), a_tx), pump(b.clone(), b_tx));
            let client = DtlsParams {
                client: true,
                remote_fingerprint: expected,
            };
            let server = DtlsParams {
                client: false,
                remote_fingerprint: fp,
            };
            let (c, s) = tokio::join!(handshake(client, a, b_addr, a_rx), handshake(server, b, a_addr, b_rx));
            if ok {
                let (c, s) = (c.expect("client"), s.expect("server"));
                assert_eq!(c.keys.local, s.keys.remote);
                assert_eq!(c.keys.remote, s.keys.local);
                assert_eq!(c.keys.suite, Suite::AesCm128HmacSha1_80);
            } else {
                assert!(matches!(c, Err(DtlsError::Fingerprint)), "{:?}", c.err());
            }
            pa.abort();
            pb.abort();
        }
    }
}
