//! A streaming, band-limited resampler for the bridge: 20 ms frames of caller
//! audio up to the agent's rate, and the agent's arbitrarily sized chunks down to
//! 8 kHz. State (the FFT filter's overlap) carries across calls to [`push`], so a
//! stream cut into frames sounds the same as the whole clip resampled at once.
//!
//! rubato's `Fft` with both sides fixed (see `docs/sip-crate-notes.md`: about 140 dB
//! SNR, 1–4 µs per frame). Buffers are allocated once; pushing never allocates
//! once the caller's output vector has grown to its working size.
//!
//! [`push`]: StreamResampler::push

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ResampleError {
    #[error("cannot resample {from} Hz to {to} Hz: {why}")]
    Construct { from: u32, to: u32, why: String },
}

/// One direction's resampler (mono, i16 in and out).
pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    out: Vec<f32>,
    /// Leading output samples still to drop: the filter's start-up delay, which
    /// would otherwise add that much silence (and latency) to the stream.
    trim: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("active", &self.inner.is_some())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz working in 20 ms chunks; equal rates pass through.
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        if from == to {
            return Ok(StreamResampler {
                inner: None,
                pending: Vec::new(),
                out: Vec::new(),
                trim: 0,
            });
        }
        let chunk = (from / 50) as usize;
        let inner = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both).map_err(|e| ResampleError::Construct {
            from,
            to,
            why: e.to_string(),
        })?;
        let trim = inner.output_delay();
        Ok(StreamResampler {
            pending: Vec::with_capacity(inner.input_frames_max() * 2),
            out: vec![0.0; inner.output_frames_max()],
            trim,
            inner: Some(inner),
        })
    }

    /// Converts `input`, appending whatever output is ready to `output`. Output
    /// lags input by at most one chunk (20 ms).
    pub fn push(&mut self, input: &[i16], output: &mut Vec<i16>) {
        let Some(inner) = self.inner.as_mut() else {
            output.extend_from_slice(input);
            return;
        };
        self.pending.extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        loop {
            let need = inner.input_frames_next();
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
                match inner.process_into_buffer(&src, &mut dst, None) {
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
    fn equal_rates_pass_through() {
        let mut r = StreamResampler::new(8000, 8000).unwrap();
        let mut out = Vec::new();
        r.push(&[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
    }
}
