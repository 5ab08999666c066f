//! What the agent's WebSocket sends: message parsing, and its audio into the
//! bridge (any size, any event id, interruptions).
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use precall::elevenlabs::agent::{AudioFormat, ServerMessage};
use precall::media::bridge::Bridge;
use precall::media::g711::G711;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut bridge = Bridge::new(G711::Ulaw, AudioFormat::Pcm(16000), AudioFormat::Pcm(16000), 2).expect("bridge");
    let mut out = Vec::new();
    for line in text.lines() {
        match ServerMessage::parse(line) {
            Ok(ServerMessage::Audio { audio_event }) => {
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(audio_event.audio_base_64.as_bytes())
                    .unwrap_or_default();
                bridge.agent_audio(audio_event.event_id, &audio);
                out.clear();
                bridge.take_queued(&mut out, false);
            }
            Ok(ServerMessage::Interruption { interruption_event }) => {
                bridge.interruption(interruption_event.map_or(0, |e| e.event_id));
            }
            _ => {}
        }
    }
});
