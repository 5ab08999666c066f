//! A minimal SIP caller over real sockets, for end-to-end tests of the daemon.
//! It speaks just enough SIP to place, confirm and end calls, and owns a real
//! RTP socket, so tests can assert on what arrives on the wire.

#![allow(dead_code)]

pub mod db;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use precall::config::{RawSettings, Settings};
use precall::server::{self, Prompts, ServerHandle};
use precall::store::Store;
use precall::store::writer::{self, RecordSink, WriterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A daemon under test, with the store its call records go to.
pub struct TestDaemon {
    pub handle: ServerHandle,
    pub prompts: Prompts,
    pub store: Store,
    pub records: RecordSink,
    pub settings: Settings,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestDaemon {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        &self.handle
    }
}

/// Starts a daemon on loopback with an OS-chosen SIP port, a fresh SQLite store in
/// a temporary directory, and `tweak`ed settings.
pub async fn start_daemon(tweak: impl FnOnce(&mut RawSettings)) -> TestDaemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut raw = RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    raw.node.id = "test-node".into();
    // Each test binary picks its own RTP range so parallel tests do not collide.
    let base = 20000 + (std::process::id() % 200) as u16 * 100;
    raw.rtp.port_min = base;
    raw.rtp.port_max = base + 98;
    tweak(&mut raw);
    let settings = Settings::compile(raw).expect("valid test settings");
    start_with(settings, dir).await
}

pub async fn start_with(settings: Settings, dir: tempfile::TempDir) -> TestDaemon {
    start_full(settings, dir, |_, _| None).await
}

/// Starts a daemon whose calls clone voices through a service built by `clone`
/// from the daemon's store and record sink.
pub async fn start_full(
    settings: Settings,
    dir: tempfile::TempDir,
    clone: impl FnOnce(&Store, &RecordSink) -> Option<precall::clone::CloneService>,
) -> TestDaemon {
    start_services(settings, dir, clone, None).await
}

/// [`start_full`] with calls bridged to the agent `agent` describes.
pub async fn start_services(
    settings: Settings,
    dir: tempfile::TempDir,
    clone: impl FnOnce(&Store, &RecordSink) -> Option<precall::clone::CloneService>,
    agent: Option<precall::elevenlabs::ws::AgentConfig>,
) -> TestDaemon {
    let prompts = Prompts::load(&settings).expect("greeting loads");
    let store = Store::connect_lazy(&settings.database_url, 4).expect("store");
    let records = writer::spawn(
        store.clone(),
        WriterConfig {
            queue: settings.raw.database.writer_queue,
            memory_limit: settings.raw.database.writer_memory_limit,
            batch: 64,
            spill_file: settings.data_dir.join("spool").join("records.jsonl"),
            node_id: settings.node_id.clone(),
            auto_migrate: true,
            max_backoff: Duration::from_millis(500),
        },
    );
    let clone = clone(&store, &records);
    let handle = server::start(settings.clone(), prompts.clone(), records.clone(), clone, agent)
        .await
        .expect("daemon starts");
    TestDaemon {
        handle,
        prompts,
        store,
        records,
        settings,
        _dir: dir,
    }
}

pub const PCMU_OFFER_TEMPLATE: &str = "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

pub fn offer(port: u16, payloads: &str, direction: &str) -> String {
    format!(
        "v=0\r\no=caller 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {payloads}\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )
}

/// A parsed SIP message as the test client sees it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub text: String,
}

impl Msg {
    pub fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    pub fn method(&self) -> Option<&str> {
        if self.text.starts_with("SIP/2.0") {
            None
        } else {
            self.text.split(' ').next()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.split("\r\n\r\n").next()?.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    pub fn to_tag(&self) -> Option<String> {
        self.header("To")?
            .split(";tag=")
            .nth(1)
            .map(|t| t.split(';').next().unwrap_or(t).to_owned())
    }

    /// The RTP port our peer put in its SDP.
    pub fn sdp_port(&self) -> Option<u16> {
        self.body()
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
    }
}

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Vec<u8>),
}

/// One caller: a SIP socket (UDP or TCP) and an RTP socket.
pub struct Caller {
    link: Link,
    pub daemon: SocketAddr,
    pub local: SocketAddr,
    pub rtp: UdpSocket,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    pub invite_branch: String,
    pub last_invite: String,
}

impl Caller {
    pub async fn udp(daemon: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = sock.local_addr().unwrap();
        Self::new(Link::Udp(sock), daemon, local).await
    }

    pub async fn tcp(daemon: SocketAddr) -> Self {
        let stream = TcpStream::connect(daemon).await.unwrap();
        let local = stream.local_addr().unwrap();
        Self::new(Link::Tcp(stream, Vec::new()), daemon, local).await
    }

    /// A caller over SIP TLS, trusting `roots` (its handshake must succeed).
    pub async fn tls(daemon: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        Self::try_tls(daemon, config).await.expect("TLS handshake")
    }

    pub async fn try_tls(daemon: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let stream = TcpStream::connect(daemon).await?;
        let local = stream.local_addr()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
        Ok(Self::new(Link::Tls(Box::new(tls), Vec::new()), daemon, local).await)
    }

    async fn new(link: Link, daemon: SocketAddr, local: SocketAddr) -> Self {
        let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let n: u64 = rand_u64();
        Caller {
            link,
            daemon,
            local,
            rtp,
            call_id: format!("test-{n}@127.0.0.1"),
            from_tag: format!("ft{n}"),
            to_tag: None,
            cseq: 1,
            invite_branch: format!("z9hG4bK-{n}"),
            last_invite: String::new(),
        }
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    fn transport(&self) -> &'static str {
        match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp(..) => "TCP",
            Link::Tls(..) => "TLS",
        }
    }

    pub async fn send(&mut self, text: &str) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(text.as_bytes(), self.daemon).await.unwrap();
            }
            Link::Tcp(s, _) => s.write_all(text.as_bytes()).await.unwrap(),
            Link::Tls(s, _) => {
                s.write_all(text.as_bytes()).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    pub async fn send_raw(&mut self, data: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(data, self.daemon).await.unwrap();
            }
            Link::Tcp(s, _) => s.write_all(data).await.unwrap(),
            Link::Tls(s, _) => {
                s.write_all(data).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    /// The next SIP message, or `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Msg> {
        match &mut self.link {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = tokio::time::timeout(timeout, s.recv_from(&mut buf)).await.ok()?.ok()?;
                Some(Msg {
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                })
            }
            Link::Tcp(s, pending) => read_framed(s, pending, timeout).await,
            Link::Tls(s, pending) => read_framed(s.as_mut(), pending, timeout).await,
        }
    }

    /// Receives until a message matching `pred`, skipping others.
    pub async fn recv_until(&mut self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.recv(left).await?;
            if pred(&m) {
                return Some(m);
            }
        }
    }

    pub fn invite_text(&mut self, body: &str, extra: &str) -> String {
        let t = self.transport();
        let text = format!(
            "INVITE sip:+15550001111@{d} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {l};branch={b};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Test Caller\" <sip:+15551234567@{l}>;tag={ft}\r\n\
             To: <sip:+15550001111@{d}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} INVITE\r\n\
             Contact: <sip:caller@{l}>\r\n\
             {extra}{ct}Content-Length: {len}\r\n\r\n{body}",
            d = self.daemon,
            l = self.local,
            b = self.invite_branch,
            ft = self.from_tag,
            cid = self.call_id,
            cseq = self.cseq,
            ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
            len = body.len(),
        );
        self.last_invite = text.clone();
        text
    }

    pub async fn invite(&mut self, body: &str) {
        let text = self.invite_text(body, "");
        self.send(&text).await;
    }

    /// Waits for the final response to the INVITE, returning it (and the
    /// provisionals seen before it).
    pub async fn final_response(&mut self, timeout: Duration) -> (Vec<Msg>, Msg) {
        let mut provisional = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now()).expect("final response in time");
            let m = self.recv(left).await.expect("a response");
            match m.status() {
                Some(s) if s < 200 => provisional.push(m),
                Some(_) => {
                    self.to_tag = m.to_tag();
                    return (provisional, m);
                }
                None => {}
            }
        }
    }

    pub fn in_dialog(&self, method: &str, cseq: u32, branch: &str, body: &str, extra: &str) -> String {
        let t = self.transport();
        let to_tag = self.to_tag.as_deref().map(|t| format!(";tag={t}")).unwrap_or_default();
        format!(
            "{method} sip:precall@{d} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {l};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Test Caller\" <sip:+15551234567@{l}>;tag={ft}\r\n\
             To: <sip:+15550001111@{d}>{to_tag}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             {extra}{ct}Content-Length: {len}\r\n\r\n{body}",
            d = self.daemon,
            l = self.local,
            ft = self.from_tag,
            cid = self.call_id,
            ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
            len = body.len(),
        )
    }

    pub async fn ack(&mut self, body: &str) {
        let text = self.in_dialog("ACK", self.cseq, &format!("z9hG4bK-ack{}", rand_u64()), body, "");
        self.send(&text).await;
    }

    pub async fn bye(&mut self) -> Msg {
        self.cseq += 1;
        let text = self.in_dialog("BYE", self.cseq, &format!("z9hG4bK-bye{}", rand_u64()), "", "");
        self.send(&text).await;
        self.recv_until(Duration::from_secs(3), |m| {
            m.header("CSeq").is_some_and(|c| c.ends_with("BYE")) && m.status().is_some()
        })
        .await
        .expect("200 to BYE")
    }

    /// Answers a request from the daemon (its BYE) with 200.
    pub async fn ok_to(&mut self, req: &Msg) {
        let mut text = String::from("SIP/2.0 200 OK\r\n");
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = req.header(name) {
                text.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.send(&text).await;
    }

    /// The next RTP datagram on our media socket, with its arrival time.
    pub async fn recv_rtp(&self, timeout: Duration) -> Option<(Vec<u8>, Instant, SocketAddr)> {
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(timeout, self.rtp.recv_from(&mut buf)).await.ok()?.ok()?;
        Some((buf[..n].to_vec(), Instant::now(), from))
    }
}

/// The next whole SIP message on a stream (TCP or TLS), framed by Content-Length.
async fn read_framed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>, timeout: Duration) -> Option<Msg> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(len)) = precall::sip::message::frame_len(pending) {
            let text = String::from_utf8_lossy(&pending[..len]).into_owned();
            pending.drain(..len);
            return Some(Msg { text });
        }
        let mut buf = [0u8; 8192];
        let left = deadline.checked_duration_since(Instant::now())?;
        let n = tokio::time::timeout(left, s.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

pub fn rand_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    t ^ (N.fetch_add(1, Ordering::Relaxed) << 48) ^ u64::from(std::process::id())
}
