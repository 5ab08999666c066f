//! An Opus-only caller (as a wideband softphone may be) end to end: the SDP
//! answer picks Opus, RTP leaves on the 48 kHz clock, and audio crosses the
//! Opus edge both ways to and from the simulator's agent. Needs `--features opus`
//! (system libopus); `.ci/run` runs it.
#![cfg(feature = "opus")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Caller, offer};
use precall::elevenlabs::ws::AgentConfig;
use precall::media::g711;
use precall::media::opus::OpusEdge;
use precall::sim::{AgentKnobs, Simulator, voice_pitch_hz};
use tokio::net::UdpSocket;

const SEC: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opus_caller_hears_the_agent_and_is_heard() {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), "k").await.unwrap();
    sim.set_agent_knobs(AgentKnobs {
        first_message_seconds: 1.5,
        ..AgentKnobs::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let greeting = dir.path().join("greeting.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&greeting, spec).unwrap();
    for _ in 0..2400 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let mut raw = precall::config::RawSettings::default();
    raw.sip.listen = "127.0.0.1:0".into();
    raw.data.dir = dir.path().to_string_lossy().into_owned();
    raw.greeting.file = greeting.to_string_lossy().into_owned();
    raw.rtp.port_min = 44000;
    raw.rtp.port_max = 44098;
    raw.elevenlabs.default_voice_id = "opus-voice".into();
    let settings = precall::config::Settings::compile(raw).unwrap();
    let agent = AgentConfig::from_section(&settings.raw.elevenlabs, &sim.base_url(), "sim-agent", None);
    let daemon = common::start_services(settings, dir, |_, _| None, agent).await;

    let mut c = Caller::udp(daemon.sip_addr).await;
    let sdp = offer(c.rtp_port(), "96 101", "sendrecv").replace(
        "a=rtpmap:101 telephone-event/8000\r\n",
        "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtpmap:101 telephone-event/48000\r\n",
    );
    c.invite(&sdp).await;
    let (_, ok) = c.final_response(SEC * 2).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    assert!(ok.body().contains("RTP/AVP 96 101\r\n"), "{}", ok.body());
    assert!(ok.body().contains("a=rtpmap:96 opus/48000/2"), "{}", ok.body());
    assert!(ok.body().contains("a=rtpmap:101 telephone-event/48000"), "{}", ok.body());
    let port = ok.sdp_port().unwrap();
    c.ack("").await;
    let dest = SocketAddr::from(([127, 0, 0, 1], port));
    let rtp: &UdpSocket = &c.rtp;

    // Talk (Opus, paced) while listening; decode what arrives.
    let mut enc = OpusEdge::new().unwrap();
    let mut dec = OpusEdge::new().unwrap();
    let speech: Vec<u8> = precall::sim::speak("opus-caller", 8000, 1.0)
        .iter()
        .map(|&s| g711::ulaw_encode(s))
        .collect();
    let mut heard = Vec::new();
    let mut timestamps = Vec::new();
    let mut packet = [0u8; 400];
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut next = start;
    let mut seq = 0u16;
    while start.elapsed() < SEC * 5 {
        let i = seq as usize;
        let frame: Vec<u8> = if (75..125).contains(&i) {
            speech[(i - 75) * 160..(i - 74) * 160].to_vec()
        } else {
            vec![0xFF; 160]
        };
        let n = enc.encode(&frame, &mut packet);
        let mut pkt = vec![0x80, 96];
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        pkt.extend_from_slice(&[0, 0, 0x77, 0x77]);
        pkt.extend_from_slice(&packet[..n]);
        rtp.send_to(&pkt, dest).await.unwrap();
        seq += 1;
        next += Duration::from_millis(20);
        while let Ok(Ok((len, _))) = tokio::time::timeout_at(next.into(), rtp.recv_from(&mut buf)).await {
            assert_eq!(buf[1] & 0x7F, 96, "RTP payload type 96");
            timestamps.push(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]));
            dec.decode(&buf[12..len], &mut heard);
        }
    }
    assert!(timestamps.len() > 200, "{} packets", timestamps.len());
    assert!(
        timestamps.windows(2).all(|w| w[1].wrapping_sub(w[0]) % 960 == 0),
        "48 kHz RTP clock, 960 per frame"
    );
    let pcm: Vec<i16> = heard.iter().map(|&u| g711::ulaw_to_linear(u)).collect();
    let want = voice_pitch_hz("opus-voice");
    let voiced = pcm
        .chunks(1600)
        .filter(|w| {
            let crossings = w.windows(2).filter(|p| (p[0] < 0) != (p[1] < 0)).count();
            (crossings as f64 / 2.0 / 0.2 - want).abs() < 15.0
        })
        .count();
    assert!(
        voiced >= 3,
        "the agent's voice ({want} Hz) came through Opus: {voiced} voiced 200 ms windows"
    );
    let convs = sim.conversations();
    assert!(!convs[0].speech_onsets.is_empty(), "the caller's Opus speech reached the agent");
    assert_eq!(c.bye().await.status(), Some(200));
}
