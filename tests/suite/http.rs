//! The HTTP listener end to end over real sockets: Twilio webhooks and a Media
//! Streams session emulated over a real WebSocket (bridged to the simulator's
//! agent), the ElevenLabs post-call webhook, the admin API, health and metrics.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use precall::elevenlabs::ws::AgentConfig;
use precall::sim::{AgentAction, AgentKnobs, Simulator, voice_pitch_hz};
use precall::twilio::signature::{Algorithm, compute};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SEC: Duration = Duration::from_secs(1);
const TOKEN: &str = "twilio-test-token";
const API_KEY: &str = "admin-test-key";
const WEBHOOK_SECRET: &str = "wsec_test_0123456789abcdef";
const DEFAULT_VOICE: &str = "http-default-voice";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Env {
    sim: Simulator,
    daemon: common::TestDaemon,
    http: SocketAddr,
    client: reqwest::Client,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A form POST signed as Twilio signs it.
    async fn twilio_post(&self, path: &str, params: &[(&str, &str)]) -> reqwest::Response {
        let owned: Vec<(String, String)> = params.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let signature = compute(TOKEN, Algorithm::Sha1, &self.url(path), &owned);
        self.client
            .post(self.url(path))
            .header("X-Twilio-Signature", signature)
            .form(&owned)
            .send()
            .await
            .unwrap()
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(tweak: impl FnOnce(&mut precall::config::RawSettings)) -> Env {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), "k").await.unwrap();
    sim.set_agent_knobs(AgentKnobs {
        first_message_seconds: 1.0,
        ..AgentKnobs::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut raw = precall::config::RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    let base = 50000 + (std::process::id() % 100) as u16 * 100;
    raw.rtp.port_min = base;
    raw.rtp.port_max = base + 98;
    raw.elevenlabs.default_voice_id = DEFAULT_VOICE.into();
    raw.elevenlabs.webhook_secret = WEBHOOK_SECRET.into();
    raw.twilio.auth_token = TOKEN.into();
    raw.api.key = API_KEY.into();
    tweak(&mut raw);
    let settings = precall::config::Settings::compile(raw).unwrap();
    let client = precall::elevenlabs::rest::Client::new(precall::elevenlabs::rest::ClientConfig {
        base_url: sim.base_url(),
        api_key: "k".into(),
        max_concurrent_requests: 2,
        request_timeout: SEC * 5,
    })
    .unwrap();
    let agent = AgentConfig::from_section(&settings.raw.elevenlabs, &sim.base_url(), "sim-agent", Some(client));
    let daemon = common::start_services(settings.clone(), dir, |_, _| None, agent.clone()).await;
    daemon.store.migrate().await.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = precall::http::HttpContext {
        settings,
        store: daemon.store.clone(),
        records: daemon.records.clone(),
        clone: None,
        agent,
        stats: daemon.stats.clone(),
        agent_backend: "simulator",
        greeting_wav: precall::http::ulaw_wav(&daemon.prompts.greeting),
        apology: daemon.prompts.apology.clone(),
    };
    let http = precall::http::start(ctx, "127.0.0.1:0".parse().unwrap(), stop_rx)
        .await
        .unwrap()
        .addr;
    Env {
        sim,
        daemon,
        http,
        client: reqwest::Client::new(),
        _stop: stop,
    }
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let start = s.find(a)? + a.len();
    let end = s[start..].find(b)? + start;
    Some(&s[start..end])
}

fn pitch(x: &[i16]) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / 8000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_call_greets_then_streams_the_agent_in_its_voice_and_ends_cleanly() {
    let env = env().await;
    let call = [
        ("CallSid", "CA00000000000000000000000000000009"),
        ("AccountSid", "AC1"),
        ("From", "+14155551234"),
        ("To", "+15005550006"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ];
    // Unsigned and tampered requests are refused, and nothing is created.
    let unsigned = env.client.post(env.url("/webhooks/inbound")).form(&call).send().await.unwrap();
    assert_eq!(unsigned.status(), 403);
    let owned: Vec<(String, String)> = call.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let sig = compute(TOKEN, Algorithm::Sha1, &env.url("/webhooks/inbound"), &owned);
    let mut tampered = owned.clone();
    tampered[2].1 = "+19995550000".into();
    let r = env
        .client
        .post(env.url("/webhooks/inbound"))
        .header("X-Twilio-Signature", &sig)
        .form(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let started = Instant::now();
    let r = env.twilio_post("/webhooks/inbound", &call).await;
    assert_eq!(r.status(), 200);
    let answered = started.elapsed();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/xml"));
    let twiml = r.text().await.unwrap();
    assert!(answered < Duration::from_millis(500), "TwiML within milliseconds: {answered:?}");
    let play = between(&twiml, "<Play>", "</Play>").expect("the greeting is played");
    assert_eq!(play, env.url("/media/greeting.wav"));
    assert!(twiml.contains(&format!(
        r#"<Redirect method="POST">{}</Redirect>"#,
        env.url("/webhooks/status-callback")
    )));
    let wav = env.client.get(play).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 7, "μ-law WAV");

    // The status callback connects the stream once the voice is decided.
    let mut connect = String::new();
    for _ in 0..50 {
        let r = env
            .twilio_post(
                "/webhooks/status-callback",
                &[("CallSid", call[0].1), ("CallStatus", "in-progress")],
            )
            .await;
        connect = r.text().await.unwrap();
        if connect.contains("<Connect>") {
            break;
        }
        assert!(connect.contains("<Pause"), "{connect}");
    }
    let stream_url = between(&connect, r#"<Stream url=""#, "\"").expect("a Stream").to_owned();
    let call_id = between(&connect, r#"<Parameter name="call_id" value=""#, "\"")
        .expect("the call id")
        .to_owned();
    assert!(connect.ends_with("</Connect><Hangup /></Response>"), "{connect}");
    assert_eq!(stream_url, format!("ws://{}/twilio/media", env.http));

    // The handshake must be signed too.
    assert!(
        tokio_tungstenite::connect_async(stream_url.as_str()).await.is_err(),
        "unsigned handshake refused"
    );
    let mut req = stream_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "x-twilio-signature",
        compute(TOKEN, Algorithm::Sha1, &stream_url, &[]).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("signed handshake accepted");
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
    ))
    .await
    .unwrap();
    let sid = "MZ00000000000000000000000000000003";
    tx.send(Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {"accountSid": "AC1", "streamSid": sid, "callSid": call[0].1, "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, "customParameters": {"call_id": call_id}}}).to_string(),
    ))
    .await
    .unwrap();
    // Twilio sends 20 ms μ-law frames; the reader collects what precall sends.
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                let _ = frames_tx.send(serde_json::from_str::<Value>(&t).unwrap());
            }
        }
    });
    let silence = B64.encode([0xFFu8; 160]);
    let mut heard: Vec<i16> = Vec::new();
    let deadline = Instant::now() + SEC * 5;
    let mut seq = 2;
    while Instant::now() < deadline && heard.iter().skip_while(|s| s.abs() <= 100).count() < 8000 {
        tx.send(Message::text(json!({"event": "media", "sequenceNumber": seq.to_string(), "streamSid": sid, "media": {"track": "inbound", "chunk": (seq - 1).to_string(), "timestamp": "0", "payload": silence}}).to_string()))
            .await
            .unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(m) = frames.try_recv() {
            if m["event"] == "media" {
                assert_eq!(m["streamSid"], sid);
                let bytes = B64.decode(m["media"]["payload"].as_str().unwrap()).unwrap();
                heard.extend(bytes.iter().map(|&b| precall::media::g711::ulaw_to_linear(b)));
            }
        }
    }
    // Frames are paced from the start: silence until the agent's first words.
    let spoken = heard.iter().position(|s| s.abs() > 100).unwrap_or(heard.len());
    let heard = &heard[spoken..];
    assert!(heard.len() >= 4000, "the agent's first message arrived ({} samples)", heard.len());
    let want = voice_pitch_hz(DEFAULT_VOICE);
    assert!(
        (pitch(&heard[..4000]) - want).abs() < 15.0,
        "agent audio in the call's voice: {} vs {want} Hz",
        pitch(&heard[..4000])
    );

    // DTMF reaches the agent; an interruption becomes `clear`.
    tx.send(Message::text(
        json!({"event": "dtmf", "streamSid": sid, "sequenceNumber": "900", "dtmf": {"track": "inbound_track", "digit": "4"}}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(env.sim.agent_do(AgentAction::Interrupt), 1);
    let clear = wait_event(&mut frames, "clear").await;
    assert_eq!(clear["streamSid"], sid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.sim.conversations()[0].contextual_updates.iter().any(|u| u.contains("key 4")));

    // end_call: the goodbye, then a mark; precall closes once Twilio echoes it.
    env.sim.agent_do(AgentAction::EndCall);
    let mark = wait_event(&mut frames, "mark").await;
    assert_eq!(mark["mark"]["name"], "precall-end");
    tx.send(Message::text(
        json!({"event": "mark", "sequenceNumber": "950", "streamSid": sid, "mark": {"name": "precall-end"}}).to_string(),
    ))
    .await
    .unwrap();
    tokio::time::timeout(SEC * 3, reader)
        .await
        .expect("precall closed the stream")
        .unwrap();

    assert!(env.daemon.records.flush(SEC * 5).await);
    let row = env.daemon.store.call_by_external_id(call[0].1).await.unwrap().unwrap().row;
    assert_eq!(row.protocol, "twilio");
    assert_eq!(row.caller.as_deref(), Some("+14155551234"));
    assert_eq!(row.end_reason.as_deref(), Some("agent_end_call"), "{row:?}");
    assert!(row.conversation_id.is_some() && row.bridged_at.is_some(), "{row:?}");
    assert_eq!(row.clone_outcome.as_deref(), Some("unmapped"));
    // Media counts for a Twilio call too (issue 17 #5): the frames sent both ways.
    assert!(row.rtp_in_packets.is_some_and(|n| n > 0), "{row:?}");
    assert_eq!(row.rtp_in_lost, Some(0), "{row:?}");
    assert!(row.rtp_out_packets.is_some_and(|n| n > 0), "{row:?}");
    // Twilio's final status callback for a finished call is answered and ignored.
    let r = env
        .twilio_post("/webhooks/status-callback", &[("CallSid", call[0].1), ("CallStatus", "completed")])
        .await;
    assert_eq!(r.status(), 200);
}

async fn wait_event(frames: &mut tokio::sync::mpsc::UnboundedReceiver<Value>, event: &str) -> Value {
    let deadline = Instant::now() + SEC * 5;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no {event} event"));
        let m = tokio::time::timeout(left, frames.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {event} event"));
        if m["event"] == event {
            return m;
        }
    }
}

fn signed(body: &str, at: i64) -> String {
    precall::elevenlabs::webhook::sign(WEBHOOK_SECRET, at, body.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_post_call_webhook_stores_the_transcript_and_refuses_forgeries() {
    let env = env().await;
    let row = precall::store::CallRow {
        call_id: "call-pc-1".into(),
        revision: 1,
        node_id: "n".into(),
        protocol: "sip".into(),
        external_id: "sip-1".into(),
        started_at: precall::store::now_ms(),
        conversation_id: Some("conv_pc_1".into()),
        ..Default::default()
    };
    env.daemon.store.upsert_call(&row).await.unwrap();
    let body = json!({"type": "post_call_transcription", "event_timestamp": 1, "data": {"agent_id": "a", "conversation_id": "conv_pc_1", "status": "done",
        "transcript": [{"role": "agent", "message": "Hello!", "time_in_call_secs": 0}, {"role": "user", "message": "Hi, it's me.", "time_in_call_secs": 2}, {"role": "agent", "message": null}],
        "metadata": {"call_duration_secs": 42, "future_field": true}, "analysis": {"call_successful": "success", "transcript_summary": "A greeting."}, "something_new": [1, 2]}})
    .to_string();
    let now = precall::store::now_ms() / 1000;
    let post = |body: String, sig: Option<String>| {
        let mut r = env.client.post(env.url("/webhook/elevenlabs/postcall")).body(body);
        if let Some(s) = sig {
            r = r.header("ElevenLabs-Signature", s);
        }
        r.send()
    };
    assert_eq!(post(body.clone(), None).await.unwrap().status(), 401);
    let forged = signed(&body, now).replace("v0=", "v0=00");
    assert_eq!(post(body.clone(), Some(forged)).await.unwrap().status(), 401);
    assert_eq!(
        post(body.clone(), Some(signed(&body, now - 31 * 60))).await.unwrap().status(),
        401,
        "stale"
    );
    assert_eq!(
        post(body.clone(), Some(signed(&body, now + 10 * 60))).await.unwrap().status(),
        401,
        "future"
    );
    let tampered = body.replace("A greeting.", "Tampered.");
    assert_eq!(post(tampered, Some(signed(&body, now))).await.unwrap().status(), 401);

    let r = post(body.clone(), Some(signed(&body, now))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["matched"], true);
    let stored = env.daemon.store.call("call-pc-1").await.unwrap().unwrap();
    assert_eq!(stored.transcript.as_deref(), Some("agent: Hello!\nuser: Hi, it's me."));
    assert_eq!(stored.summary.as_deref(), Some("A greeting."));
    assert_eq!(stored.call_successful.as_deref(), Some("success"));
    assert_eq!(stored.agent_duration_secs, Some(42));

    // A conversation precall does not know is kept, not dropped.
    let unknown = body.replace("conv_pc_1", "conv_unknown");
    let r = post(unknown.clone(), Some(signed(&unknown, now))).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["matched"], false);
    let events = env.daemon.store.webhook_events("conv_unknown").await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].1 && events[0].2 == unknown);

    // post_call_audio: decoded to a file under the data directory.
    let mp3 = b"ID3\x04fake mp3 audio".repeat(1000);
    let audio = json!({"type": "post_call_audio", "event_timestamp": now, "data": {"agent_id": "a", "conversation_id": "conv_pc_1", "full_audio": B64.encode(&mp3)}}).to_string();
    let r = post(audio.clone(), Some(signed(&audio, now))).await.unwrap();
    assert_eq!(r.status(), 200);
    let file = env.daemon.settings.data_dir.join("post_call_audio/conv_pc_1.mp3");
    assert_eq!(std::fs::read(file).unwrap(), mp3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_key_and_manages_callers() {
    let env = env().await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/statistics"),
        (reqwest::Method::GET, "/api/v1/callers/+15551234567"),
        (reqwest::Method::DELETE, "/api/v1/cache/+15551234567"),
    ] {
        let r = env.client.request(method.clone(), env.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a key");
        let r = env
            .client
            .request(method.clone(), env.url(path))
            .header("X-API-Key", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong key");
    }
    let auth = format!("Bearer {API_KEY}");
    // Upload a sample (a real WAV), read the mapping back, delete it.
    let wav = std::fs::read("assets/greeting.wav").unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(wav.clone())
                .file_name("me.wav")
                .mime_str("audio/wav")
                .unwrap(),
        )
        .text("name", "Test Caller");
    let r = env
        .client
        .put(env.url("/api/v1/callers/+1 555 123 4567"))
        .header("Authorization", &auth)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = env
        .client
        .get(env.url("/api/v1/callers/+15551234567"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["caller_id"], "+15551234567");
    assert_eq!(m["display_name"], "Test Caller");
    assert_eq!(m["samples"].as_array().unwrap().len(), 1);
    // Not audio: refused with 415.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"hello".to_vec())
            .file_name("x.txt")
            .mime_str("text/plain")
            .unwrap(),
    );
    let r = env
        .client
        .put(env.url("/api/v1/callers/+15550000001"))
        .header("Authorization", &auth)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = env
        .client
        .get(env.url("/api/v1/statistics?since=0"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    assert!(s["calls"].is_i64() && s["clone"].is_object(), "{s}");
    let r = env
        .client
        .delete(env.url("/api/v1/callers/+15551234567"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = env
        .client
        .get(env.url("/api/v1/callers/+15551234567"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_dependencies_and_metrics_parse_as_prometheus_text() {
    let env = env().await;
    let r = env.client.get(env.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["database"]["ok"], true);
    assert_eq!(h["agent"]["ok"], true);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    // A SIP call, so call metrics exist.
    let mut c = common::Caller::udp(env.daemon.sip_addr).await;
    c.invite(&common::offer(c.rtp_port(), "0", "sendrecv")).await;
    c.final_response(SEC).await;
    c.ack("").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.bye().await.status(), Some(200));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = env.client.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let sample = regex_lite(&text);
    assert!(sample.iter().any(|(n, _)| n.starts_with("precall_calls_total{")), "{text}");
    assert!(sample.iter().any(|(n, _)| n.starts_with("precall_live_calls{")), "{text}");
    assert!(
        sample.iter().any(|(n, _)| n.starts_with("precall_http_request_seconds_bucket{")),
        "{text}"
    );
    // Draining (SIGTERM) turns health red so load balancers move away.
    env.daemon.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = env.client.get(env.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "draining");
}

/// Parses Prometheus text exposition: every non-comment line is
/// `name{labels} value`; panics on anything else.
fn regex_lite(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(rest.starts_with("HELP ") || rest.starts_with("TYPE "), "bad comment line {line:?}");
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let metric = name.split('{').next().unwrap();
        assert!(
            metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !metric.is_empty(),
            "bad metric name in {line:?}"
        );
        if name.contains('{') {
            assert!(name.ends_with('}'), "unterminated labels in {line:?}");
        }
        out.push((name.to_owned(), value));
    }
    out
}

/// The official `twilio` Python package's RequestValidator signs; precall must
/// accept that signature and refuse a tampered request. `.ci/run` installs the
/// package into a virtualenv and sets `TWILIO_SDK_PYTHON`; elsewhere the test
/// notes the skip unless `REQUIRE_TWILIO_SDK=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_made_by_the_official_twilio_sdk_is_accepted() {
    let Some(python) = std::env::var_os("TWILIO_SDK_PYTHON") else {
        assert!(
            std::env::var("REQUIRE_TWILIO_SDK").is_err(),
            "REQUIRE_TWILIO_SDK is set but TWILIO_SDK_PYTHON is not"
        );
        eprintln!("note: TWILIO_SDK_PYTHON not set; skipping the official-SDK signature check");
        return;
    };
    let env = env().await;
    let url = env.url("/webhooks/inbound?source=sdk");
    let params = [
        ("CallSid", "CA_SDK_1"),
        ("From", "+14155550000"),
        ("To", "+15005550006"),
        ("SpeechResult", "Hello, world! 50% off & more"),
    ];
    let script = "import sys, json\nfrom twilio.request_validator import RequestValidator\nurl, params = sys.argv[1], json.loads(sys.argv[2])\nprint(RequestValidator(sys.argv[3]).compute_signature(url, params))\n";
    let map: serde_json::Map<String, Value> = params.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
    let out = std::process::Command::new(python)
        .args(["-c", script, &url, &Value::Object(map).to_string(), TOKEN])
        .output()
        .expect("run the Twilio SDK");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let signature = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let send =
        |params: Vec<(&'static str, &'static str)>| env.client.post(&url).header("X-Twilio-Signature", &signature).form(&params).send();
    assert_eq!(
        send(params.to_vec()).await.unwrap().status(),
        200,
        "the SDK's signature is accepted"
    );
    let mut tampered = params.to_vec();
    tampered[1].1 = "+14155550001";
    assert_eq!(send(tampered).await.unwrap().status(), 403, "a tampered request is refused");
}

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped_and_slow_clients_cut_off() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let env = env_with(|raw| {
        raw.http.max_connections_per_ip = 4;
        raw.http.header_timeout_seconds = 1;
    })
    .await;
    // Four idle connections from one address are allowed; the fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(env.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = TcpStream::connect(env.http).await.unwrap();
    let _ = fifth.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        closed_within(&mut fifth, SEC).await.is_some(),
        "the fifth connection from one address is refused"
    );
    // The idle four are closed by the header timeout (1 s here)…
    for s in &mut idle {
        let t = closed_within(s, 3 * SEC).await.expect("idle connection closed");
        assert!(t < Duration::from_millis(2500), "closed after {t:?}");
    }
    // …and so is a client that sends its head one byte at a time.
    let mut slow = TcpStream::connect(env.http).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".iter() {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > 3 * SEC {
            break;
        }
    }
    assert!(cut || closed_within(&mut slow, SEC).await.is_some(), "a trickled head is cut off");
    // A kept-alive connection is closed once idle for the header timeout.
    let mut ka = TcpStream::connect(env.http).await.unwrap();
    ka.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let t = closed_within(&mut ka, 4 * SEC).await.expect("idle keep-alive connection closed");
    assert!(
        t >= Duration::from_millis(900),
        "after the response and a second of idleness, got {t:?}"
    );
    // Meanwhile health answers.
    assert_eq!(env.client.get(env.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_minimum_rate_is_refused() {
    use tokio::io::AsyncWriteExt;
    let env = env_with(|raw| raw.http.min_body_bytes_per_second = 1000).await;
    let mut s = tokio::net::TcpStream::connect(env.http).await.unwrap();
    // A forged signature with a current timestamp gets past the header check,
    // so the body is read (and must be cut off).
    let now = precall::store::now_ms() / 1000;
    let head = format!(
        "POST /webhook/elevenlabs/postcall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         ElevenLabs-Signature: t={now},v0={}\r\nContent-Length: 1000000\r\n\r\n",
        "0".repeat(64)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // 100 bytes a second: a tenth of the minimum.
    let mut answered = None;
    while started.elapsed() < 12 * SEC {
        if s.write_all(&[b' '; 100]).await.is_err() {
            answered = Some(started.elapsed());
            break;
        }
        if let Some(t) = closed_within(&mut s, SEC).await {
            answered = Some(started.elapsed().max(t));
            break;
        }
    }
    let t = answered.expect("a trickled body is cut off");
    assert!(t >= Duration::from_secs(4) && t < Duration::from_secs(9), "cut off after {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_costs_no_io_per_request() {
    // A fake agent host that counts the TCP connections precall opens to it.
    let agent_host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_host.local_addr().unwrap();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opened.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = agent_host.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    let env = env_with(move |raw| raw.elevenlabs.ws_url = format!("ws://{agent_addr}")).await;
    let before = opened.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..100 {
        let r = env.client.get(env.url("/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let during = opened.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(during <= 1, "100 health checks opened {during} connections to the agent host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_key_is_rate_limited_per_address() {
    let env = env_with(|raw| raw.http.admin_auth_failures_per_minute = 5).await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = env
            .client
            .get(env.url("/api/v1/statistics"))
            .header("X-API-Key", format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 35);
    // Even the right key waits out the lockout from this address.
    let r = env
        .client
        .get(env.url("/api/v1/statistics"))
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let text = env.client.get(env.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("precall_admin_auth_refused_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_accepted_once_and_unsigned_bytes_leave_nothing() {
    let env = env().await;
    let body =
        json!({"type": "post_call_transcription", "event_timestamp": 1, "data": {"conversation_id": "conv_replay", "transcript": []}})
            .to_string();
    let now = precall::store::now_ms() / 1000;
    let header = precall::elevenlabs::webhook::sign(WEBHOOK_SECRET, now, body.as_bytes());
    let post = |h: String, b: String| {
        env.client
            .post(env.url("/webhook/elevenlabs/postcall"))
            .header("ElevenLabs-Signature", h)
            .body(b)
            .send()
    };
    assert_eq!(post(header.clone(), body.clone()).await.unwrap().status(), 200);
    assert_eq!(
        post(header.clone(), body.clone()).await.unwrap().status(),
        409,
        "a replay is refused"
    );
    assert_eq!(post(header.clone(), body.clone()).await.unwrap().status(), 409);
    // Ten minutes old: outside the five-minute tolerance.
    let old = precall::elevenlabs::webhook::sign(WEBHOOK_SECRET, now - 600, body.as_bytes());
    assert_eq!(post(old, body.clone()).await.unwrap().status(), 401);
    // Two signatures, one of them valid: refused.
    let (t, v0) = header.split_once(',').unwrap();
    let two = format!("{t},v0={},{v0}", "0".repeat(64));
    assert_eq!(post(two, body.clone()).await.unwrap().status(), 401);
    // A large forged body is refused and leaves no file behind.
    let forged = format!("t={now},v0={}", "0".repeat(64));
    let big = "x".repeat(3 << 20);
    assert_eq!(post(forged, big).await.unwrap().status(), 401);
    let spool = env.daemon.settings.data_dir.join("webhooks");
    let leftovers: Vec<_> = walk(&spool);
    assert!(leftovers.is_empty(), "unsigned bytes left on disk: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_bounded_and_answers_never_show_server_paths() {
    let env = env().await;
    let auth = format!("Bearer {API_KEY}");
    let put = |caller: String, body: reqwest::Body, ct: String| {
        env.client
            .put(env.url(&format!("/api/v1/callers/{caller}")))
            .header("Authorization", &auth)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    // An unterminated multipart body is a bad request, not a too-large one.
    let cut = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF";
    let r = put("+15550000002".into(), cut.into(), "multipart/form-data; boundary=b".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "{:?}", r.text().await);
    // Audio-typed junk: refused, and the answer names no file on the server.
    let junk = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nnot audio at all\r\n--b--\r\n";
    let r = put("+15550000002".into(), junk.into(), "multipart/form-data; boundary=b".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    let data_dir = env.daemon.settings.data_dir.to_string_lossy().into_owned();
    assert!(
        !text.contains(&data_dir) && !text.contains("/tmp") && !text.contains("upload"),
        "{text}"
    );
    // A 10,000-digit caller id is no caller id.
    let wav = std::fs::read("assets/greeting.wav").unwrap();
    let one = |wav: &Vec<u8>| {
        reqwest::multipart::Part::bytes(wav.clone())
            .file_name("me.wav")
            .mime_str("audio/wav")
            .unwrap()
    };
    let r = env
        .client
        .put(env.url(&format!("/api/v1/callers/{}", "5".repeat(10_000))))
        .header("Authorization", &auth)
        .multipart(reqwest::multipart::Form::new().part("file", one(&wav)))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 414 | 422 | 431 | 400), "{}", r.status());
    // 30 samples for one mapping: more than ElevenLabs takes.
    let mut form = reqwest::multipart::Form::new();
    for _ in 0..30 {
        form = form.part("file", one(&wav));
    }
    let r = env
        .client
        .put(env.url("/api/v1/callers/+15550000003"))
        .header("Authorization", &auth)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // An empty conversation_id in a signed post-call webhook.
    let body = json!({"type": "post_call_audio", "data": {"conversation_id": "", "full_audio": "AAAA"}}).to_string();
    let header = precall::elevenlabs::webhook::sign(WEBHOOK_SECRET, precall::store::now_ms() / 1000, body.as_bytes());
    let r = env
        .client
        .post(env.url("/webhook/elevenlabs/postcall"))
        .header("ElevenLabs-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!env.daemon.settings.data_dir.join("post_call_audio").join(".mp3").exists());
}
