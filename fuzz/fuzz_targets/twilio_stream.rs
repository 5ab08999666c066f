//! Twilio Media Streams frames, and their audio into the bridge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use precall::elevenlabs::agent::AudioFormat;
use precall::media::bridge::Bridge;
use precall::media::g711::G711;
use precall::twilio::stream::{Frame, MAX_MEDIA_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut bridge = Bridge::new(G711::Ulaw, AudioFormat::Pcm(16000), AudioFormat::Ulaw8000, 2).expect("bridge");
    let mut chunk = Vec::new();
    for line in text.lines() {
        match Frame::parse(line) {
            Frame::Media(payload, _chunk) => {
                assert!(payload.len() <= MAX_MEDIA_PAYLOAD + 3);
                chunk.clear();
                bridge.caller_frame(Some(&payload), &mut chunk);
            }
            Frame::Dtmf(c) => assert!(c.is_ascii_digit() || "*#ABCD".contains(c)),
            _ => {}
        }
    }
});
