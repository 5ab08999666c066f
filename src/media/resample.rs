//! A streaming, band-limited resampler for the bridge: 20 ms frames of caller
//! audio up to the agent's rate, and the agent's arbitrarily sized chunks down to
//! 8 kHz. State carries across calls to [`push`], so a stream cut into frames
//! sounds the same as the whole clip resampled at once.
//!
//! Two engines. Integer ratios to and from 8 kHz (16, 24 and 48 kHz: the usual
//! agent formats and Opus) use our [`polyphase`] FIR: about 2 ms of delay and
//! under 2 KB of state per direction, with coefficients shared by every call.
//! Other ratios (22.05 and 44.1 kHz) use rubato's `Fft` with both sides fixed
//! (see `docs/sip-crate-notes.md`: about 140 dB SNR, 10 ms of delay, about
//! 24 KB of state). Neither allocates per push once the caller's output vector
//! has grown to its working size.
//!
//! [`push`]: StreamResampler::push

pub mod polyphase;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use thiserror::Error;

use polyphase::Polyphase;

#[derive(Debug, Error)]
pub enum ResampleError {
    #[error("cannot resample {from} Hz to {to} Hz: {why}")]
    Construct { from: u32, to: u32, why: String },
}

/// One direction's resampler (mono, i16 in and out).
pub struct StreamResampler {
    engine: Engine,
    /// Audio went in since the last start.
    dirty: bool,
}

// The FIR's history is inline (1.6 KB): it is the common, hot engine, and the
// bridge that holds it is already on the heap.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Pass,
    Polyphase(Polyphase),
    Fft(Box<FftEngine>),
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match &self.engine {
            Engine::Pass => "pass",
            Engine::Polyphase(_) => "polyphase",
            Engine::Fft(_) => "fft",
        };
        f.debug_struct("StreamResampler").field("engine", &engine).finish()
    }
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz; equal rates pass through.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let engine = if from == to {
            Engine::Pass
        } else if let Some(p) = integer_ratio(from, to).and_then(|(factor, up)| Polyphase::new(factor, up)) {
            Engine::Polyphase(p)
        } else {
            Engine::Fft(Box::new(FftEngine::new(from, to)?))
        };
        Ok(StreamResampler { engine, dirty: false })
    }

    /// Converts `input`, appending whatever output is ready to `output`.
    pub fn push(&mut self, input: &[i16], output: &mut Vec<i16>) {
        match &mut self.engine {
            Engine::Pass => return output.extend_from_slice(input),
            Engine::Polyphase(p) => p.push(input, output),
            Engine::Fft(f) => f.push(input, output),
        }
        self.dirty = true;
    }

    /// Ends a stretch of audio (an agent turn): pads what is pending with
    /// silence, drains the filter's delay into `output`, and starts afresh, so
    /// the next turn neither waits behind nor begins with the end of this one.
    pub fn finish(&mut self, output: &mut Vec<i16>) {
        if !self.dirty {
            return; // nothing since the last start
        }
        match &mut self.engine {
            Engine::Pass => {}
            Engine::Polyphase(p) => p.finish(output),
            Engine::Fft(f) => f.finish(output),
        }
        self.dirty = false;
    }

    /// Whether audio went in since the last start (or [`finish`](Self::finish)).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// `(factor, up)` when one rate is 8 kHz and the other an integer multiple of it.
fn integer_ratio(from: u32, to: u32) -> Option<(usize, bool)> {
    match (from, to) {
        (8000, t) if t % 8000 == 0 => Some(((t / 8000) as usize, true)),
        (f, 8000) if f % 8000 == 0 => Some(((f / 8000) as usize, false)),
        _ => None,
    }
}

/// rubato's FFT resampler, in 20 ms chunks, for the ratios the FIR does not cover.
struct FftEngine {
    inner: Fft<f32>,
    pending: Vec<f32>,
    out: Vec<f32>,
    /// Leading output samples still to drop: the filter's start-up delay, which
    /// would otherwise add that much silence (and latency) to the stream.
    trim: usize,
}

impl FftEngine {
    fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let chunk = (from / 50) as usize;
        let inner = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both).map_err(|e| ResampleError::Construct {
            from,
            to,
            why: e.to_string(),
        })?;
        Ok(FftEngine {
            pending: Vec::with_capacity(inner.input_frames_max() * 2),
            out: vec![0.0; inner.output_frames_max()],
            trim: inner.output_delay(),
            inner,
        })
    }

    fn push(&mut self, input: &[i16], output: &mut Vec<i16>) {
        self.pending.extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        loop {
            let need = self.inner.input_frames_next();
            if self.pending.len() < need {
                break;
            }
            let produced = {
                let Ok(src) = InterleavedSlice::new(&self.pending[..need], 1, need) else {
                    break;
                };
                let frames = self.out.len();
                let Ok(mut dst) = InterleavedSlice::new_mut(&mut self.out[..], 1, frames) else {
                    break;
                };
                match self.inner.process_into_buffer(&src, &mut dst, None) {
                    Ok((_, produced)) => produced,
                    Err(_) => break,
                }
            };
            self.pending.drain(..need);
            let skip = self.trim.min(produced);
            self.trim -= skip;
            output.extend(
                self.out[skip..produced]
                    .iter()
                    .map(|&x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16),
            );
        }
    }

    fn finish(&mut self, output: &mut Vec<i16>) {
        let delay = self.inner.output_delay();
        let chunk = self.inner.input_frames_next();
        let want = output.len() + (self.pending.len() * self.inner.output_frames_next()).div_ceil(chunk) + delay;
        let pad = chunk - self.pending.len() % chunk;
        let zeros = [0i16; 2048];
        let mut remaining = pad + chunk * delay.div_ceil(self.inner.output_frames_next()).max(1);
        while remaining > 0 {
            let n = remaining.min(zeros.len());
            self.push(&zeros[..n], output);
            remaining -= n;
        }
        output.truncate(want);
        self.inner.reset();
        self.trim = self.inner.output_delay();
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    #[test]
    fn frame_by_frame_matches_the_rate_ratio_and_keeps_the_tone() {
        for (from, to) in [
            (8000, 16000),
            (16000, 8000),
            (8000, 22050),
            (24000, 8000),
            (44100, 8000),
            (8000, 48000),
        ] {
            let mut r = StreamResampler::new(from, to).unwrap();
            let input = tone(from, 440.0, from as usize); // one second
            let mut out = Vec::new();
            for frame in input.chunks((from / 50) as usize) {
                r.push(frame, &mut out);
            }
            let expected = to as usize;
            assert!(
                out.len() <= expected && out.len() + (to as usize / 50) * 3 >= expected,
                "{from}->{to}: {} samples",
                out.len()
            );
            // The start-up delay is trimmed: the tone is in phase with a fresh one at `to`.
            let reference = tone(to, 440.0, out.len());
            let (mut dot, mut a, mut b) = (0f64, 0f64, 0f64);
            for (x, y) in out.iter().zip(&reference).skip(to as usize / 50) {
                dot += f64::from(*x) * f64::from(*y);
                a += f64::from(*x).powi(2);
                b += f64::from(*y).powi(2);
            }
            let corr = dot / (a.sqrt() * b.sqrt());
            assert!(corr > 0.95, "{from}->{to}: correlation {corr}");
        }
    }

    #[test]
    fn finish_drains_the_tail_and_restarts_without_it() {
        let mut r = StreamResampler::new(16000, 8000).unwrap();
        let mut out = Vec::new();
        r.push(&tone(16000, 440.0, 4000), &mut out); // 250 ms: 12.5 chunks
        r.finish(&mut out);
        assert!((1995..=2010).contains(&out.len()), "the whole turn comes out: {}", out.len());
        let mut next = Vec::new();
        r.push(&[0i16; 320], &mut next);
        assert!(next.iter().all(|&s| s.abs() < 50), "no leftovers of the previous turn: {next:?}");
    }

    #[test]
    fn equal_rates_pass_through() {
        let mut r = StreamResampler::new(8000, 8000).unwrap();
        let mut out = Vec::new();
        r.push(&[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
    }
}
