//! The daemon under a fake systemd: the sd_notify protocol over a real
//! NOTIFY_SOCKET, SIGHUP reload, SIGTERM drain; and the shipped config example.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn messages_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = m.lines().any(|l| l == want);
            got.push(m);
            if done {
                return got;
            }
        }
    }
    panic!("no {want:?} within {timeout:?}; got {got:?}");
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    // TCP must be free on the same port too.
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(|_| port)
        .unwrap_or_else(|_| free_port())
}

fn options_ok(port: u16) -> bool {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let local = s.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-sd{port}\r\nFrom: <sip:t@{local}>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: sd-{port}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    s.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).map(|n| buf[..n].starts_with(b"SIP/2.0 200")).unwrap_or(false)
}

#[test]
fn notify_protocol_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let port = free_port();
    let config = dir.path().join("precall.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_precall"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("PRECALL_SIP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PRECALL_HTTP__LISTEN", "127.0.0.1:0")
        .env("PRECALL_RTP__PORT_MIN", "42000")
        .env("PRECALL_RTP__PORT_MAX", "42098")
        .env("PRECALL_DATA__DIR", dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = messages_until(&sock, "READY=1", Duration::from_secs(20));
    assert!(
        ready.last().unwrap().contains(&format!("STATUS=listening on 127.0.0.1:{port}")),
        "{ready:?}"
    );
    assert!(options_ok(port), "READY means SIP answers");
    messages_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    messages_until(&sock, "WATCHDOG=1", Duration::from_secs(3));

    let second = tone_wav(dir.path(), "b.wav", 1300.0);
    assert_eq!(
        first_greeting_frame(port),
        builtin_first_frame(),
        "the built-in greeting before the reload"
    );

    // SIGHUP: RELOADING, then READY again; still serving, and new calls hear the
    // greeting named by the re-read configuration.
    std::fs::write(&config, format!("[greeting]\nfile = \"{}\"\n", second.display())).unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let reload = messages_until(&sock, "READY=1", Duration::from_secs(5));
    assert!(reload.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")), "{reload:?}");
    assert!(options_ok(port));
    let expected = precall::media::prompt::Prompt::from_wav_file(&second).unwrap();
    assert_eq!(
        first_greeting_frame(port),
        expected.frame(precall::media::g711::G711::Ulaw, 0).to_vec()
    );

    // SIGTERM: STOPPING, then a clean exit (no live calls to drain).
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    messages_until(&sock, "STOPPING=1", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn toml_example_lists_every_key_with_its_default() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/precall.toml.example")).unwrap();
    // Uncomment `#key = value` lines (dropping trailing comments) and parse with
    // deny_unknown_fields: a misspelt or stale key fails here.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(kv) if kv.contains(" = ") && !kv.starts_with(' ') => {
                let kv = kv.split(" # ").next().unwrap_or(kv).trim_end();
                if kv.starts_with("user_agent") {
                    String::new()
                } else {
                    kv.to_owned()
                }
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let parsed: precall::config::RawSettings = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let mut defaults = precall::config::RawSettings::default();
    defaults.data.dir = "/var/lib/precall".into();
    assert_eq!(parsed, defaults, "the example's values are the defaults");
    // And every key of the settings appears in the example.
    let all = toml::to_string(&precall::config::RawSettings::default()).unwrap();
    for line in all.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(text.contains(&format!("#{key} = ")), "key {key} missing from precall.toml.example");
    }
}

fn tone_wav(dir: &std::path::Path, name: &str, hz: f32) -> std::path::PathBuf {
    let path = dir.join(name);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for n in 0..8000 {
        w.write_sample((8000.0 * (2.0 * std::f32::consts::PI * hz * n as f32 / 8000.0).sin()) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    path
}

fn builtin_first_frame() -> Vec<u8> {
    let p = precall::media::prompt::Prompt::from_wav_reader(std::io::Cursor::new(precall::server::BUILTIN_GREETING), "builtin").unwrap();
    p.frame(precall::media::g711::G711::Ulaw, 0).to_vec()
}

/// Places a call, returns the payload of the first RTP packet, hangs up.
fn first_greeting_frame(port: u16) -> Vec<u8> {
    let sip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    rtp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = sip.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        rtp.local_addr().unwrap().port()
    );
    let id = format!("{}-{}", local.port(), std::process::id());
    let head = |method: &str, cseq: u32, to_tag: &str| {
        format!(
            "{method} sip:100@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{method}{id}\r\nFrom: <sip:+15551230000@{local}>;tag=f{id}\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\nCall-ID: hup-{id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContact: <sip:t@{local}>\r\n"
        )
    };
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        head("INVITE", 1, ""),
        sdp.len()
    );
    sip.send_to(invite.as_bytes(), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    let tag = loop {
        let n = sip.recv(&mut buf).expect("response to INVITE");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 200") {
            break text
                .lines()
                .find(|l| l.starts_with("To:"))
                .and_then(|l| l.split(";tag=").nth(1))
                .unwrap()
                .to_owned();
        }
    };
    let to_tag = format!(";tag={tag}");
    sip.send_to(
        format!("{}Content-Length: 0\r\n\r\n", head("ACK", 1, &to_tag)).as_bytes(),
        ("127.0.0.1", port),
    )
    .unwrap();
    let n = rtp.recv(&mut buf).expect("greeting RTP");
    let payload = buf[12..n].to_vec();
    sip.send_to(
        format!("{}Content-Length: 0\r\n\r\n", head("BYE", 2, &to_tag)).as_bytes(),
        ("127.0.0.1", port),
    )
    .unwrap();
    payload
}
