//! Registration to a trunk over real UDP against a registrar written here: a
//! digest challenge (MD5, qop=auth) answered correctly, re-registration before
//! expiry with the nonce reused (nc=2), and unREGISTER at shutdown.

use crate::common;

use std::time::{Duration, Instant};

use precall::config::RegistrationSection;
use tokio::net::UdpSocket;

const SEC: Duration = Duration::from_secs(1);

fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

fn reply(req: &str, status: &str, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = header(req, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn verify(req: &str, password: &str) -> u32 {
    let auth = header(req, "Authorization").expect("Authorization");
    let parsed = digest_auth::AuthorizationHeader::parse(&auth).expect("a digest Authorization");
    let mut expected = parsed.clone();
    let mut ctx = digest_auth::AuthContext::new_with_method(
        "1000",
        password,
        parsed.uri.as_str(),
        Option::<&[u8]>::None,
        digest_auth::HttpMethod::from("REGISTER"),
    );
    ctx.set_custom_cnonce(parsed.cnonce.clone().expect("cnonce with qop=auth"));
    expected.digest(&ctx);
    assert_eq!(expected.response, parsed.response, "the digest response is right");
    parsed.nc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_digest_refreshes_and_unregisters_at_shutdown() {
    let registrar = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = registrar.local_addr().unwrap().port();
    let daemon = common::start_daemon(|r| {
        r.sip.registrations = vec![RegistrationSection {
            registrar: format!("sip:127.0.0.1:{port}"),
            aor: "sip:1000@example.com".into(),
            username: "1000".into(),
            password: "pw-1000".into(),
            expires: 2,
            ..RegistrationSection::default()
        }];
    })
    .await;
    let mut buf = vec![0u8; 65536];
    let mut recv = async || {
        let (n, from) = tokio::time::timeout(SEC * 5, registrar.recv_from(&mut buf))
            .await
            .expect("a REGISTER")
            .unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    };
    let (first, from) = recv().await;
    assert!(first.starts_with(&format!("REGISTER sip:127.0.0.1:{port} SIP/2.0")), "{first}");
    assert!(header(&first, "Authorization").is_none());
    assert_eq!(header(&first, "Expires").as_deref(), Some("2"));
    let challenge = "WWW-Authenticate: Digest realm=\"example.com\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5\r\n";
    registrar
        .send_to(reply(&first, "401 Unauthorized", challenge).as_bytes(), from)
        .await
        .unwrap();
    let (second, from) = recv().await;
    assert_eq!(verify(&second, "pw-1000"), 1);
    assert_eq!(
        header(&second, "Call-ID"),
        header(&first, "Call-ID"),
        "one Call-ID for the registration"
    );
    let granted = Instant::now();
    registrar
        .send_to(reply(&second, "200 OK", "Expires: 2\r\n").as_bytes(), from)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let regs = daemon.stats.registrations.lock().unwrap().clone();
        assert_eq!(regs.len(), 1);
        assert!(regs[0].state.is_registered(), "{regs:?}");
        // The stable JSON shape /health serves (docs/API.md).
        let json = regs[0].to_json(Instant::now());
        assert_eq!(json["state"], "registered", "{json}");
        assert!(json["expires_in"].as_u64().is_some_and(|s| s <= 2), "{json}");
        assert!(json["last_error"].is_null() || json["last_error"].is_string(), "{json}");
    }
    // Re-registration at 80 % of 2 s, reusing the nonce.
    let (third, from) = recv().await;
    let after = granted.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(2000),
        "refreshed at 80 %: {after:?}"
    );
    assert_eq!(verify(&third, "pw-1000"), 2, "nonce reused with nc=2");
    registrar
        .send_to(reply(&third, "200 OK", "Expires: 2\r\n").as_bytes(), from)
        .await
        .unwrap();
    // Shutdown: unREGISTER.
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.handle.shutdown();
    let (last, from) = recv().await;
    assert_eq!(header(&last, "Expires").as_deref(), Some("0"), "{last}");
    registrar.send_to(reply(&last, "200 OK", "").as_bytes(), from).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_over_tcp_on_a_connection_it_opens() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let daemon = common::start_daemon(|r| {
        r.sip.registrations = vec![RegistrationSection {
            registrar: format!("sip:127.0.0.1:{port};transport=tcp"),
            aor: "sip:2000@example.com".into(),
            username: "2000".into(),
            password: "pw-2000".into(),
            expires: 60,
            transport: "tcp".into(),
            ..RegistrationSection::default()
        }];
    })
    .await;
    let (mut conn, _) = tokio::time::timeout(SEC * 5, listener.accept())
        .await
        .expect("precall connects")
        .unwrap();
    let mut pending = Vec::new();
    let mut next = async |conn: &mut tokio::net::TcpStream| loop {
        if let Ok(Some(len)) = precall::sip::message::frame_len(&pending) {
            let text = String::from_utf8_lossy(&pending[..len]).into_owned();
            pending.drain(..len);
            return text;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(SEC * 5, conn.read(&mut buf))
            .await
            .expect("a REGISTER")
            .unwrap();
        assert!(n > 0, "connection closed");
        pending.extend_from_slice(&buf[..n]);
    };
    let first = next(&mut conn).await;
    assert!(header(&first, "Via").unwrap().starts_with("SIP/2.0/TCP "), "{first}");
    assert!(header(&first, "Contact").unwrap().contains("transport=tcp"), "{first}");
    let challenge = "WWW-Authenticate: Digest realm=\"example.com\", nonce=\"tcp1\", algorithm=MD5\r\n";
    conn.write_all(reply(&first, "401 Unauthorized", challenge).as_bytes())
        .await
        .unwrap();
    let second = next(&mut conn).await;
    let auth = header(&second, "Authorization").expect("Authorization");
    assert!(auth.contains("username=\"2000\""), "{auth}");
    conn.write_all(reply(&second, "200 OK", "Expires: 60\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(daemon.stats.registrations.lock().unwrap()[0].state.is_registered());
    daemon.handle.shutdown();
    let last = next(&mut conn).await;
    assert_eq!(header(&last, "Expires").as_deref(), Some("0"), "unREGISTER on the same connection");
    conn.write_all(reply(&last, "200 OK", "").as_bytes()).await.unwrap();
}
