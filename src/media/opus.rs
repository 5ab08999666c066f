//! Opus at the RTP edge (built with the `opus` feature; system libopus through
//! `audiopus`). Inside precall a call's audio is 8 kHz G.711 frames — the
//! greeting, the agent bridge and the jitter buffer do not change — and an Opus
//! call is transcoded where packets leave and arrive: μ-law → 48 kHz (rubato) →
//! Opus going out, Opus → 48 kHz → 8 kHz → μ-law coming in. That makes Opus
//! callers (softphones that offer nothing else) work; the audio is narrowband.

use thiserror::Error;

use super::g711;
use super::prompt::FRAME_SAMPLES;
use super::resample::{ResampleError, StreamResampler};

/// 20 ms at 48 kHz.
const OPUS_FRAME: usize = 960;

#[derive(Debug, Error)]
pub enum OpusError {
    #[error("opus: {0}")]
    Codec(String),
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

pub struct OpusEdge {
    encoder: audiopus::coder::Encoder,
    decoder: audiopus::coder::Decoder,
    up: StreamResampler,
    down: StreamResampler,
    pcm8: Vec<i16>,
    pcm48: Vec<i16>,
    decoded: Vec<i16>,
    narrow: Vec<i16>,
}

impl std::fmt::Debug for OpusEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusEdge")
    }
}

impl OpusEdge {
    pub fn new() -> Result<Self, OpusError> {
        use audiopus::{Application, Bitrate, Channels, SampleRate};
        let mut encoder = audiopus::coder::Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip)
            .map_err(|e| OpusError::Codec(e.to_string()))?;
        let _ = encoder.set_bitrate(Bitrate::BitsPerSecond(24_000));
        let decoder = audiopus::coder::Decoder::new(SampleRate::Hz48000, Channels::Mono).map_err(|e| OpusError::Codec(e.to_string()))?;
        Ok(OpusEdge {
            encoder,
            decoder,
            up: StreamResampler::new(8000, 48000)?,
            down: StreamResampler::new(48000, 8000)?,
            pcm8: Vec::with_capacity(FRAME_SAMPLES),
            pcm48: Vec::with_capacity(OPUS_FRAME * 3),
            decoded: vec![0; OPUS_FRAME * 6],
            narrow: Vec::with_capacity(FRAME_SAMPLES * 3),
        })
    }

    /// One 20 ms μ-law frame → one Opus packet in `out`; its length (0 on error).
    pub fn encode(&mut self, ulaw: &[u8], out: &mut [u8]) -> usize {
        self.pcm8.clear();
        self.pcm8.extend(ulaw.iter().map(|&b| g711::ulaw_to_linear(b)));
        self.up.push(&self.pcm8, &mut self.pcm48);
        if self.pcm48.len() < OPUS_FRAME {
            // The resampler's first chunk: pad the front with silence once.
            let missing = OPUS_FRAME - self.pcm48.len();
            self.pcm48.splice(0..0, std::iter::repeat_n(0, missing));
        }
        let n = self.encoder.encode(&self.pcm48[..OPUS_FRAME], out).unwrap_or(0);
        self.pcm48.drain(..OPUS_FRAME);
        n
    }

    /// One Opus packet → μ-law at 8 kHz appended to `out` (about 160 bytes per
    /// 20 ms; the first packet primes the resampler). Undecodable packets add nothing.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<u8>) {
        if packet.is_empty() {
            return;
        }
        let Ok(n) = self.decoder.decode(Some(packet), &mut self.decoded[..], false) else {
            return;
        };
        self.narrow.clear();
        self.down.push(&self.decoded[..n], &mut self.narrow);
        out.extend(self.narrow.iter().map(|&s| g711::ulaw_encode(s)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_the_round_trip() {
        let mut a = OpusEdge::new().unwrap();
        let mut b = OpusEdge::new().unwrap();
        let tone: Vec<u8> = (0..8000)
            .map(|i| g711::ulaw_encode((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin()) as i16))
            .collect();
        let mut packet = [0u8; 400];
        let mut back = Vec::new();
        for frame in tone.chunks(160) {
            let n = a.encode(frame, &mut packet);
            assert!(n > 0 && n < 200, "an Opus packet of {n} bytes");
            b.decode(&packet[..n], &mut back);
        }
        assert!(back.len() > 7000, "{} samples back", back.len());
        let pcm: Vec<i16> = back[2000..7000].iter().map(|&u| g711::ulaw_to_linear(u)).collect();
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        let hz = crossings as f64 / 2.0 / (pcm.len() as f64 / 8000.0);
        assert!((hz - 440.0).abs() < 10.0, "440 Hz came back as {hz} Hz");
        let rms = (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        assert!(rms > 4000.0, "level kept: rms {rms}");
    }
}
