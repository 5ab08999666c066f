//! Where a bridged call's memory goes, measured with a counting global
//! allocator (issue 16: "a heap profile, not a guess"). Prints, in bytes of
//! live heap:
//! - each bridge kind at rest and after a second of traffic both ways, and
//!   allocations per 20 ms frame once warm (the per-packet path must make
//!   none; the frames that drain the queue give its growth back, once a turn);
//! - the agent link's upstream path (resample, base64, JSON) per chunk;
//! - one agent WebSocket session (client, task, channels) while audio flows,
//!   averaged over `--sessions` sessions against the simulator, which runs in a
//!   child process so its own memory is not counted.
//!
//!     cargo run --release --example heap_probe -- --sessions 100

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use precall::call::agent::AgentLink;
use precall::elevenlabs::agent::AudioFormat;
use precall::elevenlabs::ws::{self, AgentCommand, AgentConfig, AgentEvent, Conversation};
use precall::media::bridge::Bridge;
use precall::media::g711::G711;
use tokio::sync::mpsc;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

fn pcm(rate: u32, ms: u32) -> Vec<u8> {
    let n = (rate * ms / 1000) as usize;
    (0..n)
        .flat_map(|i| ((3000.0 * (i as f64 * 0.07).sin()) as i16).to_le_bytes())
        .collect()
}

fn bridges() {
    println!("bridge (one per bridged call)          at rest   holding 1 s of agent audio   allocations once warm");
    for (name, input, output) in [
        ("ulaw_8000 passthrough", AudioFormat::Ulaw8000, AudioFormat::Ulaw8000),
        ("pcm_16000", AudioFormat::Pcm(16000), AudioFormat::Pcm(16000)),
        ("pcm_24000", AudioFormat::Pcm(24000), AudioFormat::Pcm(24000)),
        ("pcm_22050 (rubato FFT)", AudioFormat::Pcm(22050), AudioFormat::Pcm(22050)),
    ] {
        // The probe's own buffers first, so they are not counted.
        let agent = match output {
            AudioFormat::Ulaw8000 => vec![0x55u8; 8000],
            AudioFormat::Pcm(rate) => pcm(rate, 1000),
        };
        let mut out = Vec::with_capacity(4096);
        let frame = [0x7Fu8; 160];
        let before = live();
        let mut b = Bridge::new(G711::Ulaw, input, output, 10).expect("bridge");
        let at_rest = live() - before;
        let mut holding = 0;
        let (mut frame_allocs, mut chunk_allocs) = (0, 0);
        for round in 0..3 {
            let a0 = allocs();
            for chunk in agent.chunks(agent.len() / 4) {
                b.agent_audio(round + 1, chunk);
            }
            holding = holding.max(live() - before);
            let a1 = allocs();
            for _ in 0..60 {
                out.clear();
                b.caller_frame(Some(&frame), &mut out);
                let _ = b.next_frame();
            }
            if round > 0 {
                chunk_allocs += a1 - a0;
                frame_allocs += allocs() - a1;
            }
        }
        let per_frame = frame_allocs as f64 / 120.0;
        let per_chunk = chunk_allocs as f64 / 8.0;
        println!("  {name:<36} {at_rest:>7}   {holding:>26}   {per_frame:.2} per frame, {per_chunk:.2} per agent chunk");
        drop(b);
    }
}

fn link() {
    let before = live();
    let mut link = AgentLink::new(G711::Ulaw, 10);
    let at_rest = live() - before;
    link.on_event(AgentEvent::Ready {
        conversation_id: "probe".into(),
        input: AudioFormat::Pcm(16000),
        output: AudioFormat::Pcm(16000),
    })
    .expect("bridge");
    let ready = live() - before;
    let t0 = Instant::now();
    let mut seq = 0u16;
    let mut step = |link: &mut AgentLink, n: usize| {
        for _ in 0..n {
            seq = seq.wrapping_add(1);
            link.caller_packet(t0, seq, &[0x7Fu8; 160]);
            // The WebSocket task writes each message and drops it.
            while let Some(cmd) = link.poll_command() {
                drop(cmd);
            }
        }
    };
    step(&mut link, 50);
    let a0 = allocs();
    step(&mut link, 500);
    let per_chunk = (allocs() - a0) as f64 / 500.0;
    println!("agent link (pcm_16000): {at_rest} at rest, {ready} with its bridge; {per_chunk:.2} allocations per upstream chunk once warm");
}

async fn sessions(n: usize, ws_base: String, what: &str) {
    let config = AgentConfig {
        ws_base,
        agent_id: precall::sim::AGENT_ID.into(),
        private: false,
        client: None,
        first_message: None,
        prompt: None,
        language: None,
        transfer_tool: "transfer_call".into(),
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_queue_seconds: 10,
        default_voice_id: "probe".into(),
    };
    let chunk = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pcm(16000, 20));
        bytes::Bytes::from(format!("{{\"user_audio_chunk\":\"{b64}\"}}"))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = live();
    let mut calls = Vec::new();
    for i in 0..n {
        let (cmd_tx, cmd_rx) = mpsc::channel::<AgentCommand>(64);
        let (ev_tx, mut ev_rx) = mpsc::channel::<AgentEvent>(64);
        let conv = Conversation {
            call_id: format!("probe-{i}"),
            caller: Some("+15550000000".into()),
            voice_id: "probe".into(),
        };
        let task = ws::run(config.clone(), conv, cmd_rx, ev_tx, |e| e);
        if i == 0 {
            println!("agent WebSocket task: its future is {} bytes", std::mem::size_of_val(&task));
        }
        tokio::spawn(task);
        // The call task's side: take events, dropping the audio once "played".
        let audio = tokio::spawn(async move {
            let mut bytes = 0usize;
            while let Some(ev) = ev_rx.recv().await {
                if let AgentEvent::Audio { audio, .. } = ev {
                    bytes += audio.len();
                }
            }
            bytes
        });
        calls.push((cmd_tx, audio));
    }
    // Two seconds of 20 ms chunks up, while the agent's greeting comes down.
    for _ in 0..100 {
        for (tx, _) in &calls {
            let _ = tx.try_send(AgentCommand::Text(chunk.clone()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = live() - before;
    for (tx, _) in &calls {
        let _ = tx.send(AgentCommand::Close).await;
    }
    let mut heard = 0;
    for (tx, audio) in calls {
        drop(tx);
        heard += audio.await.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = live() - before;
    println!(
        "agent WebSocket session (client, its task, channels), {what}: {} bytes each ({n} sessions, {} KB of agent audio heard); {} bytes each after they close",
        during / n as i64,
        heard / 1000,
        after / n as i64
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n = 100usize;
    while let Some(k) = args.next() {
        match k.as_str() {
            "--sessions" => n = args.next().and_then(|v| v.parse().ok()).unwrap_or(n),
            "--serve-simulator" => return serve_simulator(args.next().as_deref() == Some("quiet")),
            other => panic!("unknown argument {other}"),
        }
    }
    bridges();
    link();
    // The simulator in a child process of its own: its memory is not ours.
    // First an agent that stays silent (what a connected session holds), then
    // one that streams its greeting in 250 ms chunks while the caller talks.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    for (quiet, what) in [(true, "connected, agent silent"), (false, "agent audio flowing")] {
        let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--serve-simulator", if quiet { "quiet" } else { "talking" }])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("simulator child");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("simulator address");
        rt.block_on(sessions(n, line.trim().to_owned(), what));
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn serve_simulator(quiet: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let sim = precall::sim::Simulator::start("127.0.0.1:0".parse().expect("addr"), "probe")
            .await
            .expect("simulator");
        if quiet {
            sim.set_agent_knobs(precall::sim::AgentKnobs {
                first_message_seconds: 0.0,
                ping_interval: Duration::from_secs(3600),
                ..Default::default()
            });
        }
        println!("{}", sim.ws_url());
        std::future::pending::<()>().await;
    });
}
