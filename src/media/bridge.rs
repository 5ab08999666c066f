//! The audio half of the agent bridge, sans-IO: caller frames in the call's
//! codec become chunks in the agent's input format, and the agent's audio
//! becomes 20 ms frames in the call's codec, queued for the call's media clock.
//!
//! One bridge per call, shared by SIP and Twilio ingress. Barge-in lives here:
//! an `interruption` empties the playout queue at once and the audio of the
//! interrupted turn (`event_id` ≤ N, the stricter SDK rule) that arrives later
//! is dropped. When the call's codec and the agent's format are both μ-law the
//! bytes pass through untouched.

use std::collections::VecDeque;

use thiserror::Error;

use super::format::AudioFormat;
use super::g711::{self, G711};
use super::prompt::FRAME_SAMPLES;
use super::resample::{ResampleError, StreamResampler};

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// Counters for the call's record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStats {
    pub frames_to_agent: u64,
    pub frames_from_agent: u64,
    /// Agent audio dropped because the playout queue was full.
    pub overflow_bytes: u64,
    /// Frames flushed by interruptions.
    pub flushed_frames: u64,
    /// Agent audio of an interrupted turn that arrived after the interruption.
    pub stale_chunks: u64,
    pub interruptions: u64,
}

/// Agent audio is converted this many samples at a time, so the working
/// buffers stay this small whatever size of chunk the agent sends.
const AGENT_SLICE: usize = 480;
/// The highest agent rate over 8 kHz (48 kHz): one caller frame's resampled size.
const MAX_RATE_FACTOR: usize = 6;
/// The playout queue's size between turns (200 ms), and its growth step (250 ms).
const QUEUE_RESTING: usize = FRAME_SAMPLES * 10;
const QUEUE_STEP: usize = 2000;

pub struct Bridge {
    codec: G711,
    input: AudioFormat,
    output: AudioFormat,
    up: StreamResampler,
    down: StreamResampler,
    /// Agent audio, encoded in the call's codec, waiting for the media clock.
    queue: VecDeque<u8>,
    max_queue: usize,
    /// Agent audio with `event_id` at or below this belongs to an interrupted turn.
    interrupted_through: Option<u64>,
    /// The agent turn whose audio is flowing (its `event_id`).
    turn: Option<u64>,
    /// Ticks a partial last frame has waited for the rest of its samples.
    partial_waits: u8,
    frame: [u8; FRAME_SAMPLES],
    pcm: Vec<i16>,
    resampled: Vec<i16>,
    stats: BridgeStats,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("codec", &self.codec)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Bridge {
    /// `max_queue_seconds` bounds how far ahead of playback the agent may be.
    pub fn new(codec: G711, input: AudioFormat, output: AudioFormat, max_queue_seconds: u32) -> Result<Self, BridgeError> {
        Ok(Bridge {
            codec,
            input,
            output,
            up: StreamResampler::new(8000, input.rate())?,
            down: StreamResampler::new(output.rate(), 8000)?,
            // Grows with what the agent sends ahead of playback (bounded by
            // `max_queue`); most calls never hold more than a few hundred ms.
            queue: VecDeque::with_capacity(QUEUE_RESTING),
            max_queue: 8000 * max_queue_seconds.max(1) as usize,
            interrupted_through: None,
            turn: None,
            partial_waits: 0,
            frame: [codec.silence(); FRAME_SAMPLES],
            pcm: Vec::with_capacity(AGENT_SLICE),
            resampled: Vec::with_capacity(AGENT_SLICE.max(FRAME_SAMPLES * MAX_RATE_FACTOR)),
            stats: BridgeStats::default(),
        })
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    pub fn formats(&self) -> (AudioFormat, AudioFormat) {
        (self.input, self.output)
    }

    /// Whether audio crosses the bridge without any conversion.
    pub fn passthrough(&self) -> bool {
        self.codec == G711::Ulaw && self.input == AudioFormat::Ulaw8000 && self.output == AudioFormat::Ulaw8000
    }

    /// One tick's caller audio (`None`: the caller is silent or the frame was
    /// lost), converted into `out` in the agent's input format. Silence is sent
    /// too, so the agent's input timeout never fires on a live call.
    pub fn caller_frame(&mut self, frame: Option<&[u8]>, out: &mut Vec<u8>) {
        self.stats.frames_to_agent += 1;
        let silence = [self.codec.silence(); FRAME_SAMPLES];
        let frame = frame.unwrap_or(&silence);
        if self.input == AudioFormat::Ulaw8000 {
            match self.codec {
                G711::Ulaw => out.extend_from_slice(frame),
                G711::Alaw => out.extend(frame.iter().map(|&a| g711::ulaw_encode(g711::alaw_to_linear(a)))),
            }
            return;
        }
        self.pcm.clear();
        self.pcm.resize(frame.len(), 0);
        self.codec.decode(frame, &mut self.pcm);
        self.resampled.clear();
        self.up.push(&self.pcm, &mut self.resampled);
        out.extend(self.resampled.iter().flat_map(|s| s.to_le_bytes()));
    }

    /// A chunk of agent audio (already base64-decoded). Returns false when it
    /// belongs to an interrupted turn and was dropped.
    pub fn agent_audio(&mut self, event_id: u64, audio: &[u8]) -> bool {
        if self.interrupted_through.is_some_and(|n| event_id <= n) {
            self.stats.stale_chunks += 1;
            return false;
        }
        if self.turn != Some(event_id) {
            // A new turn: the previous one's tail is still in the resampler.
            if self.turn.is_some() {
                self.end_turn();
            }
            self.turn = Some(event_id);
        }
        let room = self.max_queue.saturating_sub(self.queue.len());
        match self.output {
            AudioFormat::Ulaw8000 => {
                let take = audio.len().min(room);
                self.stats.overflow_bytes += (audio.len() - take) as u64;
                match self.codec {
                    G711::Ulaw => {
                        self.make_room(take);
                        self.queue.extend(&audio[..take])
                    }
                    G711::Alaw => {
                        self.make_room(take);
                        self.queue
                            .extend(audio[..take].iter().map(|&u| g711::alaw_encode(g711::ulaw_to_linear(u))))
                    }
                }
            }
            AudioFormat::Pcm(_) => {
                let codec = self.codec;
                for slice in audio.chunks(AGENT_SLICE * 2) {
                    self.pcm.clear();
                    self.pcm.extend(slice.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
                    self.resampled.clear();
                    self.down.push(&self.pcm, &mut self.resampled);
                    let room = self.max_queue.saturating_sub(self.queue.len());
                    let take = self.resampled.len().min(room);
                    self.stats.overflow_bytes += (self.resampled.len() - take) as u64;
                    self.make_room(take);
                    self.queue.extend(self.resampled[..take].iter().map(|&s| match codec {
                        G711::Ulaw => g711::ulaw_encode(s),
                        G711::Alaw => g711::alaw_encode(s),
                    }));
                }
            }
        }
        true
    }

    /// Grows the queue in quarter-second steps rather than by doubling (a
    /// 2 s turn would otherwise hold 25.6 KB for 16 KB of audio).
    fn make_room(&mut self, n: usize) {
        let need = self.queue.len() + n;
        if need > self.queue.capacity() {
            let target = need.next_multiple_of(QUEUE_STEP).min(self.max_queue.max(need));
            self.queue.reserve_exact(target - self.queue.len());
        }
    }

    /// Gives back what a long turn grew once the queue has drained.
    fn settle(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_RESTING * 2 {
            self.queue.shrink_to(QUEUE_RESTING);
        }
    }

    fn end_turn(&mut self) {
        self.resampled.clear();
        self.down.finish(&mut self.resampled);
        let room = self.max_queue.saturating_sub(self.queue.len());
        let take = self.resampled.len().min(room);
        let codec = self.codec;
        self.make_room(take);
        self.queue.extend(self.resampled[..take].iter().map(|&s| match codec {
            G711::Ulaw => g711::ulaw_encode(s),
            G711::Alaw => g711::alaw_encode(s),
        }));
    }

    /// Barge-in: the caller spoke over the agent. Flushes everything queued.
    pub fn interruption(&mut self, event_id: u64) {
        self.stats.interruptions += 1;
        self.stats.flushed_frames += self.queued_frames() as u64;
        self.resampled.clear();
        self.down.finish(&mut self.resampled); // discarded: the interrupted turn must not play
        self.turn = None;
        self.queue.clear();
        self.settle();
        self.partial_waits = 0;
        self.interrupted_through = Some(self.interrupted_through.map_or(event_id, |n| n.max(event_id)));
    }

    /// Whole or partial frames waiting to be played.
    pub fn queued_frames(&self) -> usize {
        self.queue.len().div_ceil(FRAME_SAMPLES)
    }

    /// Everything queued, at once (Twilio plays what it is sent in order, so a
    /// Media Stream needs no pacing). `end_of_turn` also lets out the
    /// resampler's tail: call it when the agent has gone quiet.
    pub fn take_queued(&mut self, out: &mut Vec<u8>, end_of_turn: bool) {
        if end_of_turn && self.down.is_dirty() {
            self.end_turn();
            self.turn = None;
        }
        self.stats.frames_from_agent += self.queue.len().div_ceil(FRAME_SAMPLES) as u64;
        out.extend(self.queue.drain(..));
        self.settle();
    }

    /// The next 20 ms frame of agent audio for the media clock, or `None` when
    /// the agent is silent. A partial tail frame waits one tick for the rest of
    /// its samples, then plays padded with silence.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        if self.queue.is_empty() && self.down.is_dirty() {
            // Playback caught up with the agent (its turn is over, it arrives
            // faster than real time): let the resampler's tail out now.
            self.end_turn();
            self.turn = None;
        }
        let n = self.queue.len();
        if n == 0 {
            return None;
        }
        if n < FRAME_SAMPLES && self.partial_waits == 0 {
            self.partial_waits = 1;
            return None;
        }
        self.partial_waits = 0;
        let take = n.min(FRAME_SAMPLES);
        for (slot, byte) in self.frame.iter_mut().zip(self.queue.drain(..take)) {
            *slot = byte;
        }
        self.frame[take..].fill(self.codec.silence());
        self.settle();
        self.stats.frames_from_agent += 1;
        Some(&self.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn ulaw_passthrough_is_byte_exact_both_ways() {
        let mut b = Bridge::new(G711::Ulaw, AudioFormat::Ulaw8000, AudioFormat::Ulaw8000, 10).unwrap();
        assert!(b.passthrough());
        let frame: Vec<u8> = (0..160).map(|i| i as u8).collect();
        let mut out = Vec::new();
        b.caller_frame(Some(&frame), &mut out);
        assert_eq!(out, frame);
        let agent: Vec<u8> = (0..400).map(|i| (i % 251) as u8).collect();
        assert!(b.agent_audio(1, &agent));
        assert_eq!(b.next_frame().unwrap(), &agent[..160]);
        assert_eq!(b.next_frame().unwrap(), &agent[160..320]);
        assert_eq!(b.next_frame(), None, "the 80-byte tail waits a tick");
        let tail = b.next_frame().unwrap();
        assert_eq!(&tail[..80], &agent[320..]);
        assert!(tail[80..].iter().all(|&x| x == 0xFF), "padded with μ-law silence");
    }

    #[test]
    fn pcm16k_round_trip_keeps_a_tone() {
        let mut b = Bridge::new(G711::Alaw, AudioFormat::Pcm(16000), AudioFormat::Pcm(16000), 10).unwrap();
        assert!(!b.passthrough());
        // Agent: one second of 500 Hz at 16 kHz, in uneven chunks.
        let tone: Vec<i16> = (0..16000)
            .map(|i| (6000.0 * (2.0 * std::f64::consts::PI * 500.0 * i as f64 / 16000.0).sin()) as i16)
            .collect();
        for chunk in tone.chunks(1234) {
            b.agent_audio(1, &pcm_bytes(chunk));
        }
        let mut frames = 0;
        while let Some(f) = b.next_frame() {
            assert_eq!(f.len(), 160);
            frames += 1;
        }
        assert!((48..=51).contains(&frames), "{frames} frames for one second");
        // Caller: a 20 ms A-law frame becomes 320 samples (640 bytes) at 16 kHz once primed.
        let mut out = Vec::new();
        for _ in 0..3 {
            b.caller_frame(Some(&[0xD5; 160]), &mut out);
        }
        assert!(out.len() >= 640 && out.len() <= 3 * 640 && out.len() % 2 == 0, "{}", out.len());
    }

    #[test]
    fn interruption_flushes_at_once_and_drops_the_interrupted_turn() {
        let mut b = Bridge::new(G711::Ulaw, AudioFormat::Ulaw8000, AudioFormat::Ulaw8000, 10).unwrap();
        b.agent_audio(4, &[1u8; 1600]);
        assert_eq!(b.queued_frames(), 10);
        b.interruption(4);
        assert_eq!(b.next_frame(), None, "nothing of turn 4 plays after the interruption");
        assert!(!b.agent_audio(4, &[1u8; 160]), "late audio of turn 4 is dropped");
        assert!(!b.agent_audio(3, &[1u8; 160]));
        assert!(b.agent_audio(5, &[2u8; 160]), "the next turn plays");
        assert_eq!(b.next_frame().unwrap()[0], 2);
        let s = b.stats();
        assert_eq!((s.flushed_frames, s.stale_chunks, s.interruptions), (10, 2, 1));
    }

    #[test]
    fn the_playout_queue_is_bounded() {
        let mut b = Bridge::new(G711::Ulaw, AudioFormat::Ulaw8000, AudioFormat::Ulaw8000, 1).unwrap();
        b.agent_audio(1, &vec![0u8; 20_000]);
        assert_eq!(b.queued_frames(), 50);
        assert_eq!(b.stats().overflow_bytes, 12_000);
    }

    #[test]
    fn silence_keeps_flowing_to_the_agent() {
        let mut b = Bridge::new(G711::Ulaw, AudioFormat::Ulaw8000, AudioFormat::Pcm(16000), 10).unwrap();
        let mut out = Vec::new();
        b.caller_frame(None, &mut out);
        assert_eq!(out, vec![0xFF; 160]);
    }
}
