//! SIP over TLS and SDES-SRTP over real sockets: a TLS caller places an
//! encrypted call, decrypts what the daemon sends with an SRTP context of its
//! own, and sends tampered and replayed packets; the refusals say why; silent
//! and trickling TLS clients do not hold up a real call; a renewed
//! certificate is picked up without dropping a live connection.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{Caller, offer, start_daemon};
use precall::media::g711::G711;
use precall::media::rtp::RtpPacket;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const SEC: Duration = Duration::from_secs(1);

/// A CA and a leaf for `localhost`/127.0.0.1, as PEM files in `dir`.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn ca() -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "precall test CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("CA").pem();
    (params, key, pem)
}

fn pki(dir: &Path, tag: &str, not_after: Option<(i32, u8, u8)>) -> Pki {
    let (ca_params, ca_key, ca_pem) = ca();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf");
    if let Some((y, m, d)) = not_after {
        leaf.not_before = rcgen::date_time_ymd(y - 1, m, d);
        leaf.not_after = rcgen::date_time_ymd(y, m, d);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf cert");
    let (cert_path, key_path) = (dir.join(format!("{tag}.crt")), dir.join(format!("{tag}.key")));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    std::fs::write(dir.join(format!("{tag}-ca.crt")), &ca_pem).expect("write CA");
    Pki {
        ca_pem,
        cert: cert_path,
        key: key_path,
    }
}

fn client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn tls_daemon(pki: &Pki, tweak: impl FnOnce(&mut precall::config::RawSettings)) -> common::TestDaemon {
    let (cert, key) = (pki.cert.to_string_lossy().into_owned(), pki.key.to_string_lossy().into_owned());
    start_daemon(move |s| {
        s.sip.tls_listen = "127.0.0.1:0".into();
        s.sip.tls_cert_file = cert;
        s.sip.tls_key_file = key;
        tweak(s);
    })
    .await
}

const CALLER_KEY: [u8; 30] = [
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];

fn savp_offer(rtp_port: u16) -> String {
    let key = base64::engine::general_purpose::STANDARD.encode(CALLER_KEY);
    offer(rtp_port, "0 101", "sendrecv").replace("RTP/AVP", "RTP/SAVP") + &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n")
}

fn context(key: &[u8]) -> Context {
    Context::new(&key[..16], &key[16..30], ProtectionProfile::Aes128CmHmacSha1_80, None, None).expect("context")
}

fn caller_rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0xfeed_f00du32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xffu8, 160));
    p
}

#[tokio::test]
async fn an_sdes_call_over_tls_is_encrypted_both_ways_and_drops_forgeries() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = pki(dir.path(), "a", None);
    let daemon = tls_daemon(&pki, |s| s.rtp.srtp = "required".into()).await;
    let tls_addr = daemon.tls_addr.expect("TLS listener");
    let mut c = Caller::tls(tls_addr, client(&pki.ca_pem)).await;
    c.invite(&savp_offer(c.rtp_port())).await;
    let (_, ok) = c.final_response(SEC).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    assert!(ok.header("Via").is_some_and(|v| v.starts_with("SIP/2.0/TLS")), "{}", ok.text);
    assert!(ok.header("Contact").is_some_and(|v| v.contains(";transport=tls")), "{}", ok.text);
    assert!(ok.body().contains(" RTP/SAVP 0 101\r\n"), "{}", ok.body());
    let line = ok
        .body()
        .lines()
        .find(|l| l.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
        .expect("our a=crypto");
    let their_key = base64::engine::general_purpose::STANDARD
        .decode(line.rsplit_once(':').map(|(_, k)| k).expect("key"))
        .expect("base64 key");
    assert_eq!(their_key.len(), 30);
    c.ack("").await;

    // What the daemon sends decrypts, with its key, to the greeting.
    let mut rx = context(&their_key);
    for i in 0..10u64 {
        let (data, _, _) = c.recv_rtp(SEC).await.expect("SRTP flows");
        assert_eq!(data.len(), 12 + 160 + 10, "160 bytes of μ-law plus an 80-bit tag");
        let plain = rx.decrypt_rtp(&data).expect("authentic SRTP");
        let p = RtpPacket::parse(&plain).expect("RTP inside");
        assert_eq!(p.payload, daemon.prompts.greeting.frame(G711::Ulaw, i), "frame {i}");
        assert_ne!(&data[12..172], p.payload, "the payload crossed the wire encrypted");
    }

    // Five authentic packets, one tampered, one replayed.
    let media = std::net::SocketAddr::new(c.daemon.ip(), ok.sdp_port().expect("port"));
    let mut tx = context(&CALLER_KEY);
    let mut first = None;
    for seq in 1..=5u16 {
        let packet = tx.encrypt_rtp(&caller_rtp(seq)).expect("encrypt");
        first.get_or_insert_with(|| packet.clone());
        c.rtp.send_to(&packet, media).await.expect("send");
    }
    let mut forged = tx.encrypt_rtp(&caller_rtp(6)).expect("encrypt").to_vec();
    forged[30] ^= 0x40;
    c.rtp.send_to(&forged, media).await.expect("send");
    c.rtp.send_to(&first.expect("kept"), media).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.bye().await.status(), Some(200));

    let row = wait_for_end(&daemon, &c.call_id).await;
    assert_eq!(row.rtp_in_packets, Some(5), "only the authentic packets count");
}

async fn wait_for_end(daemon: &common::TestDaemon, call_id: &str) -> precall::store::CallRow {
    for _ in 0..100 {
        if let Ok(Some(stored)) = daemon.store.call_by_external_id(call_id).await
            && stored.row.ended_at.is_some()
        {
            return stored.row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {call_id} was not recorded as ended");
}

#[tokio::test]
async fn refusals_name_the_security_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = pki(dir.path(), "b", None);
    let daemon = tls_daemon(&pki, |s| s.rtp.srtp = "required".into()).await;

    // Plain RTP under `required`, even over TLS.
    let mut c = Caller::tls(daemon.tls_addr.expect("TLS"), client(&pki.ca_pem)).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, r) = c.final_response(SEC).await;
    assert_eq!(r.status(), Some(488), "{}", r.text);
    assert!(r.text.contains("SRTP is required"), "{}", r.text);
    assert!(r.header("Warning").is_some_and(|w| w.starts_with("302 precall")), "{}", r.text);

    // SDES keys over UDP: refused, and the reason says to use TLS.
    let mut u = Caller::udp(daemon.sip_addr).await;
    u.invite(&savp_offer(u.rtp_port())).await;
    let (_, r) = u.final_response(SEC).await;
    assert_eq!(r.status(), Some(488), "{}", r.text);
    assert!(r.text.contains("must be sent over SIP over TLS, not UDP"), "{}", r.text);

    // A sips: Request-URI over plain TCP.
    let mut t = Caller::tcp(daemon.sip_addr).await;
    let text = t
        .invite_text(&offer(t.rtp_port(), "0", "sendrecv"), "")
        .replacen("INVITE sip:", "INVITE sips:", 1);
    t.send(&text).await;
    let (_, r) = t.final_response(SEC).await;
    assert_eq!(r.status(), Some(416), "{}", r.text);
    assert!(r.text.contains("must be sent over TLS"), "{}", r.text);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_gets_no_session() {
    let dir = tempfile::tempdir().expect("dir");
    let served = pki(dir.path(), "c", None);
    let other = pki(dir.path(), "d", None);
    let daemon = tls_daemon(&served, |_| {}).await;
    let addr = daemon.tls_addr.expect("TLS");
    assert!(
        Caller::try_tls(addr, client(&other.ca_pem)).await.is_err(),
        "an unknown CA fails the handshake"
    );
    // An expired certificate: a careful client refuses it.
    let expired = pki(dir.path(), "e", Some((2020, 1, 1)));
    let old = tls_daemon(&expired, |_| {}).await;
    let err = Caller::try_tls(old.tls_addr.expect("TLS"), client(&expired.ca_pem))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
    // The daemon is still fine for a client that trusts it.
    let mut c = Caller::tls(addr, client(&served.ca_pem)).await;
    c.send(&c.in_dialog("OPTIONS", 1, "z9hG4bK-opt1", "", "")).await;
    let r = c.recv(SEC).await.expect("answer");
    assert_eq!(r.status(), Some(200), "{}", r.text);
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let served = pki(dir.path(), "f", None);
    let ca_file = dir.path().join("f-ca.crt");
    let daemon = tls_daemon(&served, |s| s.sip.tls_client_ca_file = ca_file.to_string_lossy().into_owned()).await;
    // TLS 1.3: the refusal can arrive after the client's handshake completes;
    // either way, no SIP is answered.
    match Caller::try_tls(daemon.tls_addr.expect("TLS"), client(&served.ca_pem)).await {
        Err(_) => {}
        Ok(mut c) => {
            let text = c.in_dialog("OPTIONS", 1, "z9hG4bK-mtls", "", "");
            c.send_raw(text.as_bytes()).await;
            assert!(c.recv(SEC).await.is_none(), "no answer without a client certificate");
        }
    }
}

/// 200 clients that open TLS and say nothing, 50 that trickle a ClientHello
/// at a byte a second, and a real call that still goes through at once.
#[tokio::test]
async fn silent_and_trickling_tls_clients_do_not_hold_up_a_call() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = pki(dir.path(), "g", None);
    let daemon = tls_daemon(&pki, |s| s.sip.tls_handshake_timeout_seconds = 3).await;
    let addr = daemon.tls_addr.expect("TLS");
    let mut idle = Vec::new();
    // From other loopback addresses: the per-source cap would otherwise
    // (rightly) refuse most of them before they cost anything.
    for i in 0..200u32 {
        let source = std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 8) as u8], 0));
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if sock.bind(source).is_err() {
            continue;
        }
        if let Ok(s) = sock.connect(addr).await {
            idle.push(s);
        }
    }
    let mut tricklers = Vec::new();
    for i in 0..50u32 {
        let source = std::net::SocketAddr::from(([127, 0, 1, 2 + (i % 8) as u8], 0));
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        if sock.bind(source).is_err() {
            continue;
        }
        if let Ok(mut s) = sock.connect(addr).await {
            tricklers.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for b in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc] {
                    if s.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(SEC).await;
                }
            }));
        }
    }
    assert!(idle.len() >= 150, "the test opened its silent clients ({})", idle.len());
    let started = std::time::Instant::now();
    let mut c = Caller::tls(addr, client(&pki.ca_pem)).await;
    c.invite(&offer(c.rtp_port(), "0", "sendrecv")).await;
    let (_, ok) = c.final_response(SEC).await;
    assert_eq!(ok.status(), Some(200));
    c.ack("").await;
    assert!(c.recv_rtp(SEC).await.is_some(), "media flows");
    assert!(started.elapsed() < 2 * SEC, "the call was not held up: {:?}", started.elapsed());
    assert_eq!(c.bye().await.status(), Some(200));
    for t in tricklers {
        t.abort();
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_used_by_new_handshakes_and_live_connections_stay() {
    let dir = tempfile::tempdir().expect("dir");
    let first = pki(dir.path(), "h", None);
    let daemon = tls_daemon(&first, |_| {}).await;
    let addr = daemon.tls_addr.expect("TLS");
    let mut live = Caller::tls(addr, client(&first.ca_pem)).await;
    // Renewal: new files at the same paths, from another CA, then SIGHUP.
    let renewed = pki(dir.path(), "h-new", None);
    std::fs::copy(&renewed.cert, &first.cert).expect("copy cert");
    std::fs::copy(&renewed.key, &first.key).expect("copy key");
    assert_eq!(daemon.reload_tls().ok(), Some(true));
    assert!(
        Caller::try_tls(addr, client(&first.ca_pem)).await.is_err(),
        "new handshakes use the new certificate"
    );
    Caller::tls(addr, client(&renewed.ca_pem)).await;
    // The connection made before the reload still carries SIP.
    live.send(&live.in_dialog("OPTIONS", 1, "z9hG4bK-live", "", "")).await;
    assert_eq!(live.recv(SEC).await.and_then(|m| m.status()), Some(200));
    // A broken renewal keeps the working certificate.
    std::fs::write(&first.key, "not a key").expect("write");
    assert!(daemon.reload_tls().is_err());
    Caller::tls(addr, client(&renewed.ca_pem)).await;
}

/// A registrar over TLS: accepts one connection with `pki`'s certificate and
/// returns what came over it, or the handshake's error.
async fn tls_registrar(pki: &Pki) -> (u16, tokio::task::JoinHandle<Result<String, String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let files = precall::sip::tls::ServerFiles {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        client_ca: None,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(precall::sip::tls::server_config(&files).expect("server config"));
    let task = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tcp, _) = tokio::time::timeout(5 * SEC, listener.accept())
            .await
            .map_err(|_| "no connection".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut pending = Vec::new();
        let first = loop {
            if let Ok(Some(len)) = precall::sip::message::frame_len(&pending) {
                break String::from_utf8_lossy(&pending[..len]).into_owned();
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(5 * SEC, tls.read(&mut buf))
                .await
                .map_err(|_| "no REGISTER".to_owned())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let mut reply = String::from("SIP/2.0 200 OK\r\n");
        for line in first.lines().filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:", "Contact:"]
                .iter()
                .any(|h| l.starts_with(h))
        }) {
            reply.push_str(line);
            reply.push_str("\r\n");
        }
        reply.push_str("Expires: 60\r\nContent-Length: 0\r\n\r\n");
        tls.write_all(reply.as_bytes()).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        // Keep the connection up while the daemon reads the answer.
        tokio::time::sleep(SEC).await;
        Ok(first)
    });
    (port, task)
}

fn tls_registration(port: u16, ca: &Path) -> impl FnOnce(&mut precall::config::RawSettings) {
    let ca = ca.to_string_lossy().into_owned();
    move |s| {
        s.sip.tls_ca_file = ca;
        s.sip.registrations = vec![precall::config::RegistrationSection {
            registrar: format!("sip:localhost:{port}"),
            aor: "sip:3000@example.com".into(),
            username: "3000".into(),
            password: "pw-3000".into(),
            expires: 60,
            transport: "tls".into(),
            ..Default::default()
        }];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_over_tls_checking_the_registrars_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let good = pki(dir.path(), "reg", None);
    let (port, registrar) = tls_registrar(&good).await;
    let daemon = start_daemon(tls_registration(port, &dir.path().join("reg-ca.crt"))).await;
    let first = registrar.await.expect("task").expect("a REGISTER over TLS");
    assert!(first.starts_with("REGISTER sip:localhost:"), "{first}");
    assert!(first.contains("Via: SIP/2.0/TLS "), "{first}");
    assert!(first.contains(";transport=tls>"), "{first}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.stats.registrations.lock().expect("lock")[0].state.is_registered());

    // A registrar whose certificate has expired never sees a REGISTER.
    let expired = pki(dir.path(), "reg-old", Some((2020, 1, 1)));
    let (port, registrar) = tls_registrar(&expired).await;
    let daemon = start_daemon(tls_registration(port, &dir.path().join("reg-old-ca.crt"))).await;
    let err = registrar.await.expect("task").expect_err("the handshake fails");
    assert!(!err.is_empty());
    assert!(!daemon.stats.registrations.lock().expect("lock")[0].state.is_registered());
}
