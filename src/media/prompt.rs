//! Prompts (the greeting, hold music): loaded once, resampled to 8 kHz with a
//! band-limited resampler, and pre-encoded for both G.711 laws so that playing a
//! frame is a slice lookup.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use thiserror::Error;

use super::g711::G711;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The telephony sample rate everything is converted to.
pub const RATE: u32 = 8000;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PromptError {
    #[error("cannot read WAV {path}: {error}")]
    Wav { path: String, error: hound::Error },
    #[error("unsupported WAV format in {path}: {why}")]
    Format { path: String, why: String },
    #[error("cannot resample {path} from {rate} Hz: {why}")]
    Resample { path: String, rate: u32, why: String },
    #[error("{path} holds no audio")]
    Empty { path: String },
}

/// A prompt ready to play: 8 kHz PCM and both encodings, padded to whole frames.
#[derive(Debug, Clone)]
pub struct Prompt {
    pcm: Arc<[i16]>,
    ulaw: Arc<[u8]>,
    alaw: Arc<[u8]>,
}

impl Prompt {
    pub fn from_wav_file(path: &Path) -> Result<Self, PromptError> {
        let name = path.display().to_string();
        let reader = hound::WavReader::open(path).map_err(|error| PromptError::Wav { path: name.clone(), error })?;
        Self::from_wav(reader, &name)
    }

    pub fn from_wav_reader<R: Read>(reader: R, name: &str) -> Result<Self, PromptError> {
        let reader = hound::WavReader::new(reader).map_err(|error| PromptError::Wav {
            path: name.to_owned(),
            error,
        })?;
        Self::from_wav(reader, name)
    }

    fn from_wav<R: Read>(reader: hound::WavReader<R>, name: &str) -> Result<Self, PromptError> {
        let spec = reader.spec();
        let channels = usize::from(spec.channels);
        if channels == 0 || spec.sample_rate == 0 {
            return Err(PromptError::Format {
                path: name.to_owned(),
                why: "zero channels or sample rate".into(),
            });
        }
        let wav_err = |error| PromptError::Wav {
            path: name.to_owned(),
            error,
        };
        let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, 16) => reader
                .into_samples::<i16>()
                .map(|s| s.map(|v| f32::from(v) / 32768.0))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?,
            (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
                let scale = (1i64 << (bits - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f32 / scale))
                    .collect::<Result<_, _>>()
                    .map_err(wav_err)?
            }
            (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect::<Result<_, _>>().map_err(wav_err)?,
            (format, bits) => {
                return Err(PromptError::Format {
                    path: name.to_owned(),
                    why: format!("{bits}-bit {format:?} samples"),
                });
            }
        };
        // Mix down to mono by averaging the channels.
        let mono: Vec<f32> = interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() / channels as f32)
            .collect();
        if mono.is_empty() {
            return Err(PromptError::Empty { path: name.to_owned() });
        }
        let resampled = resample(&mono, spec.sample_rate, RATE).map_err(|why| PromptError::Resample {
            path: name.to_owned(),
            rate: spec.sample_rate,
            why,
        })?;
        let pcm = resampled
            .iter()
            .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        Ok(Self::from_pcm_8k(pcm))
    }

    /// Builds a prompt from 8 kHz PCM (pads the tail with silence to a whole frame).
    pub fn from_pcm_8k(mut pcm: Vec<i16>) -> Self {
        let frames = pcm.len().div_ceil(FRAME_SAMPLES).max(1);
        pcm.resize(frames * FRAME_SAMPLES, 0);
        let mut ulaw = vec![0u8; pcm.len()];
        let mut alaw = vec![0u8; pcm.len()];
        G711::Ulaw.encode(&pcm, &mut ulaw);
        G711::Alaw.encode(&pcm, &mut alaw);
        Prompt {
            pcm: pcm.into(),
            ulaw: ulaw.into(),
            alaw: alaw.into(),
        }
    }

    /// Number of 20 ms frames.
    pub fn frames(&self) -> usize {
        self.pcm.len() / FRAME_SAMPLES
    }

    /// The encoded frame `index` (wrapping, so the prompt loops seamlessly).
    #[inline]
    pub fn frame(&self, codec: G711, index: u64) -> &[u8] {
        let i = (index % self.frames() as u64) as usize * FRAME_SAMPLES;
        let data = match codec {
            G711::Ulaw => &self.ulaw,
            G711::Alaw => &self.alaw,
        };
        &data[i..i + FRAME_SAMPLES]
    }

    pub fn pcm(&self) -> &[i16] {
        &self.pcm
    }
}

/// Resamples a whole clip with rubato's FFT resampler (band-limited, delay trimmed).
fn resample(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    if from == to {
        return Ok(mono.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both).map_err(|e| e.to_string())?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| e.to_string())?;
    let out = resampler.process_all(&input, mono.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_bytes(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        cursor.into_inner()
    }

    fn tone(rate: u32, hz: f32, seconds: f32, amp: f32) -> Vec<i16> {
        (0..(rate as f32 * seconds) as usize)
            .map(|n| (amp * (2.0 * std::f32::consts::PI * hz * n as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    /// Power of `hz` in `x` by correlation (a one-bin DFT), normalised to amplitude.
    fn amplitude_at(x: &[i16], rate: u32, hz: f32) -> f32 {
        let (mut re, mut im) = (0f64, 0f64);
        for (n, s) in x.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * f64::from(hz) * n as f64 / f64::from(rate);
            re += f64::from(*s) * ph.cos();
            im += f64::from(*s) * ph.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn resamples_16k_stereo_to_8k_mono_without_aliasing() {
        // A 1 kHz tone we keep and a 6 kHz tone that must be filtered out (it
        // would alias to 2 kHz if the resampler just dropped samples).
        let a = tone(16000, 1000.0, 1.0, 8000.0);
        let b = tone(16000, 6000.0, 1.0, 8000.0);
        let mut stereo = Vec::new();
        for (x, y) in a.iter().zip(&b) {
            stereo.push(x.saturating_add(*y));
            stereo.push(x.saturating_add(*y));
        }
        let p = Prompt::from_wav_reader(std::io::Cursor::new(wav_bytes(16000, 2, &stereo)), "test").unwrap();
        assert_eq!(p.frames(), 50);
        let mid = &p.pcm()[800..7200];
        let kept = amplitude_at(mid, 8000, 1000.0);
        let alias = amplitude_at(mid, 8000, 2000.0);
        assert!((kept - 8000.0).abs() < 400.0, "1 kHz amplitude {kept}");
        assert!(alias < 80.0, "6 kHz aliased to 2 kHz with amplitude {alias}");
    }

    #[test]
    fn pads_and_encodes_both_laws() {
        let p = Prompt::from_pcm_8k(vec![1000; 200]);
        assert_eq!(p.frames(), 2);
        assert_eq!(p.frame(G711::Ulaw, 0)[0], 0xCE);
        assert_eq!(p.frame(G711::Ulaw, 1)[100], 0xFF, "padding is silence");
        assert_eq!(p.frame(G711::Ulaw, 2), p.frame(G711::Ulaw, 0), "frames wrap");
        assert_eq!(p.frame(G711::Alaw, 1)[100], 0xD5);
    }

    #[test]
    fn rejects_unreadable_input() {
        assert!(matches!(
            Prompt::from_wav_reader(std::io::Cursor::new(b"RIFFnope".to_vec()), "x"),
            Err(PromptError::Wav { .. })
        ));
        assert!(matches!(
            Prompt::from_wav_reader(std::io::Cursor::new(wav_bytes(8000, 1, &[])), "x"),
            Err(PromptError::Empty { .. })
        ));
    }
}

/// Plays the greeting once, then loops the hold audio (or the greeting again)
/// until told otherwise: one frame per tick of the call's media clock.
#[derive(Debug, Clone)]
pub struct Player {
    greeting: Prompt,
    hold: Option<Prompt>,
    in_hold: bool,
    position: u64,
}

impl Player {
    pub fn new(greeting: Prompt, hold: Option<Prompt>) -> Self {
        Player {
            greeting,
            hold,
            in_hold: false,
            position: 0,
        }
    }

    /// The next frame to send.
    #[inline]
    pub fn next_frame(&mut self, codec: G711) -> &[u8] {
        self.step();
        let prompt = if self.in_hold {
            self.hold.as_ref().unwrap_or(&self.greeting)
        } else {
            &self.greeting
        };
        prompt.frame(codec, self.position - 1)
    }

    /// Advances one frame without producing audio (on hold, the clock still runs).
    pub fn skip(&mut self) {
        self.step();
    }

    fn step(&mut self) {
        if !self.in_hold && self.position >= self.greeting.frames() as u64 {
            self.in_hold = true;
            self.position = 0;
        }
        self.position += 1;
    }

    /// Whether the greeting has played through once.
    pub fn greeting_done(&self) -> bool {
        self.in_hold
    }
}

#[cfg(test)]
mod player_tests {
    use super::*;

    #[test]
    fn greeting_then_hold_loop() {
        let greeting = Prompt::from_pcm_8k(vec![1000; 320]);
        let hold = Prompt::from_pcm_8k(vec![-1000; 160]);
        let mut p = Player::new(greeting, Some(hold));
        assert_eq!(p.next_frame(G711::Ulaw)[0], 0xCE);
        assert_eq!(p.next_frame(G711::Ulaw)[0], 0xCE);
        assert!(!p.greeting_done());
        assert_eq!(p.next_frame(G711::Ulaw)[0], 0x4E);
        assert!(p.greeting_done());
        p.skip();
        assert_eq!(p.next_frame(G711::Ulaw)[0], 0x4E);
        let mut looped = Player::new(Prompt::from_pcm_8k(vec![1000; 160]), None);
        for _ in 0..5 {
            assert_eq!(
                looped.next_frame(G711::Alaw),
                Prompt::from_pcm_8k(vec![1000; 160]).frame(G711::Alaw, 0)
            );
        }
    }
}
