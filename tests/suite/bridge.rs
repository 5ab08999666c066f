//! The agent bridge end to end: a test caller with its own SIP and RTP sockets,
//! the daemon, and the simulator's agent over a real WebSocket. What the caller
//! hears is checked by the simulator's voice signature (each voice speaks a tone
//! at its own pitch); what the agent heard is compared with what the caller sent.
//! The outer ring: the call's behaviours (hand-off, barge-in, apology, end_call,
//! transfer, delayed offer, re-offers) are tested on fake time in
//! `src/call/scenarios.rs`; these check that the real sockets, the WebSocket
//! and the simulator agree with them.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Caller, TestDaemon, offer};
use precall::clone::{CloneConfig, CloneService};
use precall::elevenlabs::rest::{Client, ClientConfig};
use precall::elevenlabs::ws::AgentConfig;
use precall::media::g711;
use precall::media::resample::StreamResampler;
use precall::sim::{AgentAction, AgentKnobs, Simulator, voice_pitch_hz};
use tokio::net::UdpSocket;

const SEC: Duration = Duration::from_secs(1);
const KEY: &str = "bridge-key";
const DEFAULT_VOICE: &str = "agent-default-voice";

/// One received RTP packet: arrival, sequence number, payload.
type Heard = Arc<Mutex<Vec<(Instant, u16, Vec<u8>)>>>;

struct Env {
    sim: Simulator,
    daemon: TestDaemon,
}

fn client(sim: &Simulator) -> Client {
    Client::new(ClientConfig {
        base_url: sim.base_url(),
        api_key: KEY.into(),
        max_concurrent_requests: 2,
        request_timeout: SEC * 5,
    })
    .unwrap()
}

fn tone_wav(path: &std::path::Path, hz: f64, samples: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..samples {
        w.write_sample((5000.0 * (2.0 * std::f64::consts::PI * hz * f64::from(i) / 8000.0).sin()) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// A daemon bridged to a fresh simulator; a half-second greeting (a 1 kHz tone,
/// far from every voice's pitch) so the hand-off comes quickly.
async fn env(knobs: AgentKnobs, with_clone: bool) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), KEY).await.unwrap();
    sim.set_agent_knobs(knobs);
    let dir = tempfile::tempdir().unwrap();
    let greeting = dir.path().join("greeting.wav");
    tone_wav(&greeting, 1000.0, 4000);
    // A one-second apology (the built-in one is 6.5 s of speech).
    let apology = dir.path().join("apology.wav");
    tone_wav(&apology, 1500.0, 8000);
    let mut raw = precall::config::RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    raw.greeting.file = greeting.to_string_lossy().into_owned();
    raw.greeting.apology_file = apology.to_string_lossy().into_owned();
    let base = 30000 + (std::process::id() % 100) as u16 * 100;
    raw.rtp.port_min = base;
    raw.rtp.port_max = base + 98;
    raw.elevenlabs.default_voice_id = DEFAULT_VOICE.into();
    raw.elevenlabs.agent_idle_timeout_seconds = 5;
    let settings = precall::config::Settings::compile(raw).unwrap();
    let agent = AgentConfig::from_section(&settings.raw.elevenlabs, &sim.base_url(), "sim-agent", Some(client(&sim)));
    let data_dir = settings.data_dir.clone();
    let c = client(&sim);
    let daemon = common::start_services(
        settings,
        dir,
        move |store, sink| {
            with_clone.then(|| {
                CloneService::new(
                    store.clone(),
                    c,
                    sink.clone(),
                    CloneConfig {
                        max_wait: SEC * 5,
                        cache_ttl: SEC * 3600,
                        default_voice_id: DEFAULT_VOICE.into(),
                        remove_background_noise: false,
                        data_dir,
                        request_timeout: SEC * 5,
                        orphan_grace: Duration::from_secs(900),
                    },
                )
            })
        },
        agent,
    )
    .await;
    daemon.store.migrate().await.unwrap();
    Env { sim, daemon }
}

/// The caller's RTP: sends `speech` (μ-law frames) paced at 20 ms and then
/// silence, and records everything that comes back.
struct Media {
    heard: Heard,
    sent: Arc<Mutex<Vec<u8>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    speech: Arc<Mutex<Vec<u8>>>,
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
}

impl Drop for Media {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Media {
    fn start(socket: UdpSocket, dest: SocketAddr) -> Media {
        let socket = Arc::new(socket);
        let heard: Heard = Arc::default();
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let speech: Arc<Mutex<Vec<u8>>> = Arc::default();
        let rx = {
            let (socket, heard) = (socket.clone(), heard.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                    if n > 12 {
                        let seq = u16::from_be_bytes([buf[2], buf[3]]);
                        heard.lock().unwrap().push((Instant::now(), seq, buf[12..n].to_vec()));
                    }
                }
            })
        };
        let tx = {
            let (socket, sent, speech) = (socket.clone(), sent.clone(), speech.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let (mut seq, mut ts) = (1000u16, 5000u32);
                loop {
                    tick.tick().await;
                    let frame: Vec<u8> = {
                        let mut s = speech.lock().unwrap();
                        let take = s.len().min(160);
                        let mut f: Vec<u8> = s.drain(..take).collect();
                        f.resize(160, 0xFF);
                        f
                    };
                    let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    pkt[4..8].copy_from_slice(&ts.to_be_bytes());
                    pkt.extend_from_slice(&frame);
                    sent.lock().unwrap().extend_from_slice(&frame);
                    if socket.send_to(&pkt, dest).await.is_err() {
                        break;
                    }
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                }
            })
        };
        Media {
            heard,
            sent,
            tasks: vec![rx, tx],
            speech,
            socket,
            dest,
        }
    }

    fn say(&self, pcm: &[i16]) {
        self.speech.lock().unwrap().extend(pcm.iter().map(|&s| g711::ulaw_encode(s)));
    }

    /// Sends one RFC 4733 digit (three end packets, as phones do).
    async fn dtmf(&self, event: u8) {
        for (i, end) in [(0, false), (1, false), (2, true), (3, true), (4, true)] {
            let mut pkt = vec![0x80, 101, 0x70, i, 0, 0, 0x10, 0, 0, 0, 0x12, 0x35];
            let duration: u16 = 160 * (u16::from(i) + 1);
            pkt.extend_from_slice(&[event, if end { 0x8A } else { 0x0A }]);
            pkt.extend_from_slice(&duration.to_be_bytes());
            self.socket.send_to(&pkt, self.dest).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Decoded μ-law of everything heard after `since`.
    fn heard_pcm(&self, since: Instant) -> Vec<i16> {
        let heard = self.heard.lock().unwrap();
        heard
            .iter()
            .filter(|(t, ..)| *t >= since)
            .flat_map(|(_, _, p)| p.iter().map(|&b| g711::ulaw_to_linear(b)))
            .collect()
    }
}

/// Frequency of a (near) pure tone by zero crossings.
fn pitch(x: &[i16]) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / 8000.0)
}

/// Waits until 200 ms windows of the caller's audio carry `voice`'s pitch; the time it was first heard.
async fn wait_for_voice(media: &Media, voice: &str, timeout: Duration) -> Instant {
    let want = voice_pitch_hz(voice);
    let deadline = Instant::now() + timeout;
    loop {
        {
            let heard = media.heard.lock().unwrap();
            for w in heard.windows(10) {
                let pcm: Vec<i16> = w.iter().flat_map(|(_, _, p)| p.iter().map(|&b| g711::ulaw_to_linear(b))).collect();
                let energy = pcm.iter().map(|&s| f64::from(s).abs()).sum::<f64>() / pcm.len() as f64;
                if energy > 1000.0 && (pitch(&pcm) - want).abs() < 15.0 {
                    return w[0].0;
                }
            }
        }
        assert!(Instant::now() < deadline, "never heard voice {voice} ({want} Hz)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answered(daemon: &TestDaemon, codecs: &str) -> (Caller, Media) {
    let mut c = Caller::udp(daemon.sip_addr).await;
    c.invite(&offer(c.rtp_port(), codecs, "sendrecv")).await;
    let (_, ok) = c.final_response(SEC * 2).await;
    assert_eq!(ok.status(), Some(200));
    let port = ok.sdp_port().expect("SDP answer");
    c.ack("").await;
    let rtp = std::mem::replace(&mut c.rtp, UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let media = Media::start(rtp, SocketAddr::from(([127, 0, 0, 1], port)));
    (c, media)
}

async fn wait_conversations(sim: &Simulator, n: usize) -> Vec<precall::sim::ConversationRecord> {
    for _ in 0..100 {
        let c = sim.conversations();
        if c.len() >= n {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no agent conversation started");
}

/// Normalised correlation of `a` and `b` after aligning their onsets (the first
/// loud sample), searching ±50 ms around that alignment.
fn onset_correlation(a: &[f64], b: &[f64]) -> f64 {
    let onset = |x: &[f64]| x.iter().position(|v| v.abs() > 2000.0).unwrap_or(0);
    let (oa, ob) = (onset(a), onset(b));
    let n = a.len() - oa;
    let norm_a = a[oa..].iter().map(|x| x * x).sum::<f64>().sqrt();
    (0..1600)
        .filter_map(|k| {
            let start = (ob + k).checked_sub(800)?;
            let seg = b.get(start..start + n)?;
            let dot: f64 = a[oa..].iter().zip(seg).map(|(x, y)| x * y).sum();
            Some(dot / (norm_a * seg.iter().map(|y| y * y).sum::<f64>().sqrt()).max(1e-9))
        })
        .fold(f64::MIN, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resampled_bridge_agent_speaks_hears_the_caller_and_ends_the_call() {
    let env = env(
        AgentKnobs {
            ping_interval: Duration::from_millis(300),
            first_message_seconds: 1.0,
            ..AgentKnobs::default()
        },
        false,
    )
    .await;
    let (mut c, media) = answered(&env.daemon, "0 101").await;
    // Greeting first, then the agent's first message in the default voice.
    wait_for_voice(&media, DEFAULT_VOICE, SEC * 6).await;
    let convs = wait_conversations(&env.sim, 1).await;
    assert_eq!(convs[0].voice_id, DEFAULT_VOICE);
    assert_eq!(convs[0].initiation["dynamic_variables"]["caller_number"], "+15551234567");
    assert!(
        convs[0].initiation["dynamic_variables"]["call_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // The caller speaks (a voice-like signal); the agent must receive it intact.
    tokio::time::sleep(SEC).await;
    let spoken = precall::sim::speak("caller-voice", 8000, 1.2);
    let sent_before = media.sent.lock().unwrap().len();
    media.say(&spoken);
    tokio::time::sleep(SEC * 2).await;
    let conv = &env.sim.conversations()[0];
    assert!(conv.pongs.len() >= 2, "pings answered: {:?}", conv.pongs);
    // What the caller sent, μ-law decoded and resampled to 16 kHz like the bridge does.
    let sent: Vec<i16> = media.sent.lock().unwrap()[sent_before..]
        .iter()
        .map(|&b| g711::ulaw_to_linear(b))
        .collect();
    let mut up = Vec::new();
    StreamResampler::new(8000, 16000).unwrap().push(&sent, &mut up);
    let a: Vec<f64> = up[..16000].iter().map(|&s| f64::from(s)).collect();
    let b: Vec<f64> = conv.received.iter().map(|&s| f64::from(s)).collect();
    let corr = onset_correlation(&a, &b);
    assert!(corr >= 0.9, "caller audio reached the agent with correlation {corr}");
    // The agent answered the caller's turn.
    assert!(conv.spoken_seconds > 1.0, "the agent replied to the caller's turn");

    // The agent ends the call: its goodbye plays, then precall sends BYE.
    let asked = Instant::now();
    assert_eq!(env.sim.agent_do(AgentAction::EndCall), 1);
    let bye = c
        .recv_until(SEC * 5, |m| m.method() == Some("BYE"))
        .await
        .unwrap_or_else(|| panic!("precall hangs up after end_call: {:?}", env.sim.conversations()[0].closed));
    let bye_at = Instant::now();
    c.ok_to(&bye).await;
    let goodbye = media.heard_pcm(asked);
    let voiced = goodbye
        .chunks(1600)
        .filter(|w| (pitch(w) - voice_pitch_hz(DEFAULT_VOICE)).abs() < 15.0)
        .count();
    assert!(
        voiced >= 3,
        "the goodbye (1 s) played before the BYE: {voiced} voiced 200 ms windows"
    );
    assert!(
        bye_at.duration_since(asked) >= Duration::from_millis(900),
        "BYE came before the last agent audio"
    );

    common_wait_idle(&env.daemon).await;
    let row = env.daemon.store.call_by_external_id(&c.call_id).await.unwrap().unwrap().row;
    assert_eq!(row.end_reason.as_deref(), Some("agent_end_call"), "{row:?}");
    assert!(
        row.conversation_id.as_deref().is_some_and(|id| id.starts_with("conv_sim")),
        "{row:?}"
    );
    assert!(row.bridged_at.is_some());
    let events = env.daemon.store.clone_events(&row.call_id).await.unwrap();
    let gap = events
        .iter()
        .find_map(|e| match e {
            precall::store::CloneEvent::Transfer { gap_ms, .. } => Some(*gap_ms),
            _ => None,
        })
        .expect("a hand-off event");
    assert!(gap <= 40, "audible gap at the hand-off: {gap} ms");
}

async fn common_wait_idle(daemon: &TestDaemon) {
    for _ in 0..200 {
        if daemon.stats.live_calls.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(daemon.records.flush(SEC * 5).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_gets_the_apology_not_silence() {
    let env = env(
        AgentKnobs {
            refuse: Some(503),
            ..AgentKnobs::default()
        },
        false,
    )
    .await;
    let (mut c, media) = answered(&env.daemon, "0").await;
    let bye = c
        .recv_until(SEC * 12, |m| m.method() == Some("BYE"))
        .await
        .expect("BYE after the apology");
    c.ok_to(&bye).await;
    // The configured apology (`greeting.apology_file`, a 1.5 kHz tone) played before the BYE.
    let heard = media.heard_pcm(Instant::now() - SEC * 30);
    let apology = heard
        .chunks(800)
        .filter(|w| w.len() == 800 && (pitch(w) - 1500.0).abs() < 15.0)
        .count();
    assert!(apology >= 9, "one second of apology, not silence ({apology} × 100 ms)");
    common_wait_idle(&env.daemon).await;
    let row = env.daemon.store.call_by_external_id(&c.call_id).await.unwrap().unwrap().row;
    assert_eq!(
        (row.end_reason.as_deref(), row.end_status),
        (Some("agent_error"), Some(1006)),
        "{row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_caller_hears_the_agent_in_the_cloned_voice_and_dtmf_reaches_it() {
    let env = env(AgentKnobs::default(), true).await;
    let wav = env.daemon.settings.data_dir.join("alice.wav");
    std::fs::write(&wav, b"RIFF\x24\0\0\0WAVEfmt alice").unwrap();
    precall::callers::add(&env.daemon.store, &env.daemon.settings.data_dir, "+15551234567", &[wav], None, None)
        .await
        .unwrap();
    let (mut c, media) = answered(&env.daemon, "0 101").await;
    let convs = wait_conversations(&env.sim, 1).await;
    let voice = convs[0].voice_id.clone();
    assert!(voice.starts_with("sim"), "the agent got the clone, not {voice}");
    wait_for_voice(&media, &voice, SEC * 6).await;
    media.dtmf(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let updates = env.sim.conversations()[0].contextual_updates.clone();
    assert_eq!(updates, vec!["The caller pressed the key 5 on their phone keypad.".to_owned()]);
    assert_eq!(c.bye().await.status(), Some(200));
    common_wait_idle(&env.daemon).await;
    let row = env.daemon.store.call_by_external_id(&c.call_id).await.unwrap().unwrap().row;
    assert_eq!(
        (row.clone_outcome.as_deref(), row.voice_id.as_deref()),
        (Some("cloned"), Some(voice.as_str()))
    );
    // The caller's BYE closes the conversation from our side, normally.
    let deadline = Instant::now() + SEC * 2;
    while env.sim.conversations()[0].closed.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(env.sim.conversations()[0].closed.as_deref(), Some("client 1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_agents_connect_through_a_signed_url() {
    let env = env(
        AgentKnobs {
            private: true,
            ..AgentKnobs::default()
        },
        false,
    )
    .await;
    // The daemon above is not configured private: the simulator refuses it.
    let (mut c, _media) = answered(&env.daemon, "0").await;
    tokio::time::sleep(SEC).await;
    assert!(env.sim.conversations().is_empty(), "an unsigned connection was refused");
    assert_eq!(c.bye().await.status(), Some(200));

    let mut section = env.daemon.settings.raw.elevenlabs.clone();
    section.private_agent = true;
    let config = AgentConfig::from_section(&section, &env.sim.base_url(), "sim-agent", Some(client(&env.sim))).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
    let conv = precall::elevenlabs::ws::Conversation {
        call_id: "c1".into(),
        caller: None,
        voice_id: "v1".into(),
    };
    tokio::spawn(precall::elevenlabs::ws::run(config, conv, rx, events_tx, |e| e));
    let first = tokio::time::timeout(SEC * 3, events.recv()).await.unwrap().unwrap();
    assert!(
        matches!(first, precall::elevenlabs::ws::AgentEvent::Ready { .. }),
        "signed URL accepted: {first:?}"
    );
    drop(tx);
}

async fn respond(c: &mut Caller, req: &common::Msg, status: &str) {
    let mut text = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = req.header(name) {
            text.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    c.send(&text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_sends_refer_and_hangs_up_once_the_transfer_succeeds() {
    let env = env(AgentKnobs::default(), false).await;
    let (mut c, media) = answered(&env.daemon, "0").await;
    wait_for_voice(&media, DEFAULT_VOICE, SEC * 6).await;

    // A refused REFER goes back to the agent as the tool's error; the call goes on.
    env.sim.agent_do(AgentAction::Transfer("sip:desk@example.com".into()));
    let refer = c.recv_until(SEC * 3, |m| m.method() == Some("REFER")).await.expect("REFER");
    respond(&mut c, &refer, "603 Decline").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = env.sim.conversations()[0].tool_results.clone();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["is_error"], true, "{results:?}");

    // A number goes to the caller's own domain; the caller's UA accepts and reports success.
    env.sim.agent_do(AgentAction::Transfer("+15550002222".into()));
    let refer = c.recv_until(SEC * 3, |m| m.method() == Some("REFER")).await.expect("second REFER");
    assert!(
        refer.text.starts_with(&format!("REFER sip:caller@{} SIP/2.0", c.local)),
        "REFER goes to the caller's Contact: {}",
        refer.text
    );
    assert_eq!(refer.header("Refer-To"), Some(format!("<sip:+15550002222@{}>", c.local).as_str()));
    assert_eq!(refer.header("Call-ID"), Some(c.call_id.as_str()));
    respond(&mut c, &refer, "202 Accepted").await;
    c.cseq += 1;
    let sipfrag = "SIP/2.0 200 OK\r\n";
    let notify = c
        .in_dialog(
            "NOTIFY",
            c.cseq,
            &format!("z9hG4bK-notify{}", common::rand_u64()),
            sipfrag,
            "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n",
        )
        .replace("Content-Type: application/sdp", "Content-Type: message/sipfrag");
    c.send(&notify).await;
    let ok = c
        .recv_until(SEC * 2, |m| m.header("CSeq").is_some_and(|v| v.ends_with("NOTIFY")))
        .await
        .expect("200 to NOTIFY");
    assert_eq!(ok.status(), Some(200));
    let bye = c
        .recv_until(SEC * 3, |m| m.method() == Some("BYE"))
        .await
        .expect("BYE after the transfer");
    c.ok_to(&bye).await;
    common_wait_idle(&env.daemon).await;
    let row = env.daemon.store.call_by_external_id(&c.call_id).await.unwrap().unwrap().row;
    assert_eq!(row.end_reason.as_deref(), Some("transferred"), "{row:?}");
    let results = env.sim.conversations()[0].tool_results.clone();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[1]["is_error"], false, "{results:?}");
}
