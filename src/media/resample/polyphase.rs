//! Integer-ratio resampling between 8 kHz and 8·L kHz (16, 24, 48 kHz: the
//! agent formats and Opus) with a polyphase FIR filter.
//!
//! Why not rubato's FFT resampler here: a call holds two resamplers for its
//! whole life, and rubato's FFT state is about 24 KB each with a 10 ms
//! algorithmic delay. The telephone band needs neither its 140 dB nor its
//! delay: a Kaiser-windowed sinc with 32 taps per phase keeps images and
//! aliases about 70 dB down (G.711 itself is about 38 dB SNR), delays the audio
//! by about 2 ms, and its per-call state is the filter's input history, under
//! 2 KB. The coefficients are computed once per ratio and shared by every call.

use std::sync::OnceLock;

/// Filter taps per polyphase branch.
pub const TAPS_PER_PHASE: usize = 32;
/// The largest factor (48 kHz / 8 kHz).
pub const MAX_FACTOR: usize = 6;
/// Kaiser β for about 70 dB of stopband attenuation.
const KAISER_BETA: f64 = 6.76;

/// One branch of the polyphase filter: its taps (reversed, so index 0
/// multiplies the oldest input of its history), or, for the branch through the
/// filter's centre, a single tap. The cutoff sits exactly on 8 kHz's Nyquist
/// frequency, which makes the prototype an L-th band filter: every L-th tap
/// from the centre is a zero of the sinc, so the centre's branch is a pure
/// delay and costs one multiply (half the work at 16 kHz).
#[derive(Debug, Clone, Copy)]
enum Branch {
    Taps(usize),
    Single { at: usize, gain: f32 },
}

/// One ratio's coefficients, shared by every call that uses it.
struct Design {
    /// `factor` branches of `TAPS_PER_PHASE` taps each, branch-major.
    taps: Vec<f32>,
    branches: Vec<Branch>,
    /// The filter's group delay in high-rate samples.
    delay: usize,
}

impl Design {
    fn taps(&self, offset: usize) -> &[f32] {
        &self.taps[offset..offset + TAPS_PER_PHASE]
    }
}

/// Kaiser-windowed sinc, cut off at 4 kHz; its length is `factor · TAPS_PER_PHASE`
/// with the last tap zero, so the length is odd and the delay an integer.
fn prototype(factor: usize) -> (Vec<f64>, usize) {
    let n = factor * TAPS_PER_PHASE;
    let centre = (n - 2) / 2;
    let fc = 0.5 / factor as f64; // cycles per high-rate sample
    let half = centre as f64;
    let mut h: Vec<f64> = (0..n)
        .map(|i| {
            if i == n - 1 {
                return 0.0;
            }
            let t = i as f64 - half;
            let sinc = if t == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * t).sin() / (std::f64::consts::PI * t)
            };
            let r = t / half;
            sinc * bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(KAISER_BETA)
        })
        .collect();
    let sum: f64 = h.iter().sum();
    h.iter_mut().for_each(|x| *x /= sum);
    (h, centre)
}

fn design(factor: usize) -> &'static Design {
    static DESIGNS: [OnceLock<Design>; MAX_FACTOR + 1] = [const { OnceLock::new() }; MAX_FACTOR + 1];
    DESIGNS[factor].get_or_init(|| {
        let (h, centre) = prototype(factor);
        let mut taps = Vec::with_capacity(h.len());
        let mut branches = Vec::with_capacity(factor);
        for p in 0..factor {
            // Branch p holds h[k·factor + p]; reversed, so the newest input meets h[p].
            let branch: Vec<f32> = (0..TAPS_PER_PHASE)
                .map(|i| h[(TAPS_PER_PHASE - 1 - i) * factor + p] as f32)
                .collect();
            let nonzero: Vec<usize> = (0..TAPS_PER_PHASE).filter(|&i| branch[i].abs() > 1e-7).collect();
            branches.push(match nonzero[..] {
                [at] => Branch::Single { at, gain: branch[at] },
                _ => Branch::Taps(taps.len()),
            });
            taps.extend(branch);
        }
        Design {
            taps,
            branches,
            delay: centre,
        }
    })
}

/// The modified Bessel function of the first kind, order 0 (its power series).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, q) = (1.0, 1.0, x * x / 4.0);
    for k in 1..64 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Inputs (up) or output groups (down) converted per pass: 20 ms at 8 kHz.
const BLOCK: usize = 160;
/// What a branch keeps of its stream between passes.
const HIST: usize = TAPS_PER_PHASE - 1;

/// `acc[j] = Σ_i taps[i] · x[j + i]` for every `j`, with the loop over `j`
/// innermost: it vectorises across output samples, with no horizontal sums.
#[inline]
fn convolve(taps: &[f32], x: &[f32], acc: &mut [f32]) {
    let n = acc.len();
    acc.fill(0.0);
    for (i, &c) in taps.iter().enumerate() {
        for (a, &v) in acc.iter_mut().zip(&x[i..i + n]) {
            *a += c * v;
        }
    }
}

/// One branch's outputs over a pass; `x` is its history followed by the new samples.
#[inline]
fn run_branch(design: &Design, branch: Branch, x: &[f32], acc: &mut [f32]) {
    match branch {
        Branch::Taps(offset) => convolve(design.taps(offset), x, acc),
        Branch::Single { at, gain } => {
            for (a, &v) in acc.iter_mut().zip(&x[at..]) {
                *a = gain * v;
            }
        }
    }
}

#[inline]
fn to_i16(y: f32) -> i16 {
    (y * 32768.0).clamp(-32768.0, 32767.0) as i16
}

/// One direction: up from 8 kHz by `factor`, or down to 8 kHz by it.
pub struct Polyphase {
    design: &'static Design,
    factor: usize,
    up: bool,
    /// The last samples of each branch's stream, oldest first. Up: one
    /// stream, the 8 kHz input, shared by every branch. Down: branch `p`
    /// takes the input `p` samples before each output's newest one.
    history: [[f32; HIST]; MAX_FACTOR],
    /// Down: the `factor` inputs that make the next output, and how many are in.
    group: [f32; MAX_FACTOR],
    gathered: usize,
    /// Outputs still to drop: the filter filling up (its delay).
    trim: usize,
    /// Samples in and out since the last start, for [`finish`](Self::finish).
    fed: u64,
    produced: u64,
}

impl Polyphase {
    /// `factor` in 2..=[`MAX_FACTOR`]; `up` from 8 kHz, else down to it.
    pub fn new(factor: usize, up: bool) -> Option<Self> {
        if !(2..=MAX_FACTOR).contains(&factor) {
            return None;
        }
        let mut p = Polyphase {
            design: design(factor),
            factor,
            up,
            history: [[0.0; HIST]; MAX_FACTOR],
            group: [0.0; MAX_FACTOR],
            gathered: 0,
            trim: 0,
            fed: 0,
            produced: 0,
        };
        p.reset();
        Some(p)
    }

    /// Back to silence, as if new.
    pub fn reset(&mut self) {
        self.history = [[0.0; HIST]; MAX_FACTOR];
        self.group = [0.0; MAX_FACTOR];
        let delay = self.design.delay;
        if self.up {
            self.gathered = 0;
            self.trim = delay;
        } else {
            // Outputs are centred on inputs 0, factor, 2·factor…, so a group
            // ends `delay` inputs after its centre: the first group ends at
            // input `delay % factor` and starts with silence before input 0,
            // and the groups ending before input `delay` are the filter filling.
            let first_end = delay % self.factor;
            self.gathered = self.factor - 1 - first_end;
            self.trim = delay / self.factor;
        }
        self.fed = 0;
        self.produced = 0;
    }

    pub fn push(&mut self, input: &[i16], output: &mut Vec<i16>) {
        self.fed += input.len() as u64;
        if self.up {
            for block in input.chunks(BLOCK) {
                self.up_block(block, output);
            }
        } else {
            self.down(input, output);
        }
    }

    fn up_block(&mut self, input: &[i16], output: &mut Vec<i16>) {
        let (n, l) = (input.len(), self.factor);
        let mut x = [0f32; HIST + BLOCK];
        x[..HIST].copy_from_slice(&self.history[0]);
        for (d, &s) in x[HIST..HIST + n].iter_mut().zip(input) {
            *d = f32::from(s) / 32768.0;
        }
        let x = &x[..HIST + n];
        let base = output.len();
        output.resize(base + n * l, 0);
        let mut acc = [0f32; BLOCK];
        // Each branch sees one input in `factor`: its gain is `factor`.
        let gain = l as f32;
        for (p, &branch) in self.design.branches.iter().enumerate() {
            run_branch(self.design, branch, x, &mut acc[..n]);
            for (slot, &y) in output[base + p..].iter_mut().step_by(l).zip(&acc[..n]) {
                *slot = to_i16(y * gain);
            }
        }
        self.history[0].copy_from_slice(&x[n..]);
        let drop = self.trim.min(n * l);
        if drop > 0 {
            output.drain(base..base + drop);
            self.trim -= drop;
        }
        self.produced += (n * l - drop) as u64;
    }

    fn down(&mut self, mut input: &[i16], output: &mut Vec<i16>) {
        let m = self.factor;
        loop {
            // Gather up to a block of whole groups into each branch's stream.
            let mut streams = [[0f32; HIST + BLOCK]; MAX_FACTOR];
            for (stream, history) in streams.iter_mut().zip(&self.history).take(m) {
                stream[..HIST].copy_from_slice(history);
            }
            let mut groups = 0;
            while groups < BLOCK {
                let take = (m - self.gathered).min(input.len());
                for (slot, &s) in self.group[self.gathered..].iter_mut().zip(&input[..take]) {
                    *slot = f32::from(s) / 32768.0;
                }
                self.gathered += take;
                input = &input[take..];
                if self.gathered < m {
                    break;
                }
                for (p, stream) in streams.iter_mut().enumerate().take(m) {
                    stream[HIST + groups] = self.group[m - 1 - p];
                }
                self.gathered = 0;
                groups += 1;
            }
            if groups == 0 {
                return;
            }
            let (mut acc, mut sum) = ([0f32; BLOCK], [0f32; BLOCK]);
            let branches = streams.iter().zip(&mut self.history).zip(&self.design.branches);
            for ((stream, history), &branch) in branches.take(m) {
                let stream = &stream[..HIST + groups];
                run_branch(self.design, branch, stream, &mut acc[..groups]);
                for (s, a) in sum[..groups].iter_mut().zip(&acc[..groups]) {
                    *s += a;
                }
                history.copy_from_slice(&stream[groups..]);
            }
            let drop = self.trim.min(groups);
            self.trim -= drop;
            output.extend(sum[drop..groups].iter().map(|&y| to_i16(y)));
            self.produced += (groups - drop) as u64;
        }
    }

    /// Lets the filter's delay out (the input padded with silence), so the
    /// output holds exactly the input's duration, then starts afresh.
    pub fn finish(&mut self, output: &mut Vec<i16>) {
        let target = if self.up {
            self.fed * self.factor as u64
        } else {
            self.fed.div_ceil(self.factor as u64)
        };
        let start = output.len();
        let owed = usize::try_from(target.saturating_sub(self.produced)).unwrap_or(0);
        // One output's worth of silence at a time, at most `delay + factor + 1`
        // times: the loop is bounded by the filter, not by the input.
        let zeros = [0i16; MAX_FACTOR];
        let unit = if self.up { 1 } else { self.factor };
        for _ in 0..self.design.delay + self.factor + 1 {
            if output.len() - start >= owed {
                break;
            }
            self.push(&zeros[..unit], output);
        }
        output.truncate(start + owed);
        self.reset();
    }

    /// The filter's delay at the output rate, in samples (rounded down).
    pub fn delay_samples(&self) -> usize {
        if self.up {
            self.design.delay
        } else {
            self.design.delay / self.factor
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: f64, hz: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as i16)
            .collect()
    }

    /// Amplitude of the `hz` component (a least-squares fit of sine and cosine).
    fn amplitude(x: &[i16], rate: f64, hz: f64) -> f64 {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            let w = 2.0 * std::f64::consts::PI * hz * i as f64 / rate;
            s += f64::from(v) * w.sin();
            c += f64::from(v) * w.cos();
        }
        2.0 * (s * s + c * c).sqrt() / x.len() as f64
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    #[test]
    fn passband_is_flat_and_images_are_70_db_down() {
        for factor in [2usize, 3, 6] {
            let high = 8000.0 * factor as f64;
            for hz in [300.0, 1000.0, 3000.0] {
                let mut r = Polyphase::new(factor, true).unwrap();
                let mut out = Vec::new();
                for frame in tone(8000.0, hz, 8000, 10_000.0).chunks(160) {
                    r.push(frame, &mut out);
                }
                let steady = &out[out.len() / 4..];
                let gain = amplitude(steady, high, hz) / 10_000.0;
                assert!(db(gain).abs() < 0.5, "×{factor} {hz} Hz: {:.2} dB", db(gain));
                // The first image, mirrored about 4 kHz.
                let image = amplitude(steady, high, 8000.0 - hz) / 10_000.0;
                assert!(db(image) < -65.0, "×{factor} {hz} Hz: image at {:.1} dB", db(image));
            }
        }
    }

    #[test]
    fn downsampling_rejects_what_would_alias() {
        for factor in [2usize, 3, 6] {
            let high = 8000.0 * factor as f64;
            let n = 8000 * factor;
            let mut input = tone(high, 1000.0, n, 8000.0);
            // 4.6 kHz and up would fold into the telephone band.
            for (s, a) in input.iter_mut().zip(tone(high, 5000.0, n, 8000.0)) {
                *s += a;
            }
            let mut r = Polyphase::new(factor, false).unwrap();
            let mut out = Vec::new();
            for frame in input.chunks(n / 50) {
                r.push(frame, &mut out);
            }
            // The filter's delay is still inside; finishing lets it out.
            assert_eq!(out.len(), 8000 - r.delay_samples(), "×{factor}");
            r.finish(&mut out);
            assert_eq!(out.len(), 8000, "×{factor}");
            let steady = &out[2000..];
            let wanted = amplitude(steady, 8000.0, 1000.0) / 8000.0;
            let alias = amplitude(steady, 8000.0, 3000.0) / 8000.0; // 5 kHz folds to 3 kHz
            assert!(db(wanted).abs() < 0.5, "×{factor}: {:.2} dB", db(wanted));
            assert!(db(alias) < -65.0, "×{factor}: alias at {:.1} dB", db(alias));
        }
    }

    #[test]
    fn output_is_aligned_with_the_input_and_finish_gives_exact_lengths() {
        for factor in [2usize, 3, 6] {
            let high = 8000.0 * factor as f64;
            // Up: a 440 Hz tone stays in phase with the same tone generated at the high rate.
            let mut up = Polyphase::new(factor, true).unwrap();
            let mut out = Vec::new();
            up.push(&tone(8000.0, 440.0, 1234, 8000.0), &mut out);
            up.finish(&mut out);
            assert_eq!(out.len(), 1234 * factor);
            let reference = tone(high, 440.0, out.len(), 8000.0);
            let err: f64 = out[200..out.len() - 200]
                .iter()
                .zip(&reference[200..])
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .fold(0.0, f64::max);
            assert!(err < 40.0, "×{factor} up: off by up to {err}");
            // Down likewise, and a restart carries nothing over.
            let mut down = Polyphase::new(factor, false).unwrap();
            let mut out = Vec::new();
            down.push(&tone(high, 440.0, 1001 * factor + 1, 8000.0), &mut out);
            down.finish(&mut out);
            assert_eq!(out.len(), 1002);
            let reference = tone(8000.0, 440.0, out.len(), 8000.0);
            let err: f64 = out[100..900]
                .iter()
                .zip(&reference[100..900])
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .fold(0.0, f64::max);
            assert!(err < 40.0, "×{factor} down: off by up to {err}");
            let mut next = Vec::new();
            down.push(&[0i16; 960], &mut next);
            assert!(next.iter().all(|&s| s == 0), "×{factor}: no leftovers after finish");
        }
    }

    #[test]
    fn how_the_input_is_cut_does_not_change_the_output() {
        for factor in [2usize, 3, 6] {
            for up in [true, false] {
                let rate = if up { 8000.0 } else { 8000.0 * factor as f64 };
                let input = tone(rate, 700.0, 2000 + 37, 9000.0);
                let run = |cut: usize| {
                    let mut r = Polyphase::new(factor, up).unwrap();
                    let mut out = Vec::new();
                    for piece in input.chunks(cut) {
                        r.push(piece, &mut out);
                    }
                    r.finish(&mut out);
                    out
                };
                let whole = run(input.len());
                for cut in [1, 5, 7, 160, 161, 999] {
                    assert_eq!(run(cut), whole, "×{factor} up={up} cut into {cut}");
                }
            }
        }
    }

    #[test]
    fn the_delay_is_about_two_milliseconds_and_the_state_is_small() {
        for factor in [2usize, 3, 6] {
            let up = Polyphase::new(factor, true).unwrap();
            let ms = up.delay_samples() as f64 / (8.0 * factor as f64);
            assert!(ms < 2.1, "×{factor}: {ms} ms");
        }
        assert!(std::mem::size_of::<Polyphase>() < 2048, "{}", std::mem::size_of::<Polyphase>());
        assert!(Polyphase::new(1, true).is_none() && Polyphase::new(7, false).is_none());
    }

    #[test]
    fn a_full_scale_step_settles_at_full_scale() {
        for factor in [2usize, 3, 6] {
            let mut up = Polyphase::new(factor, true).unwrap();
            let mut out = Vec::new();
            up.push(&[i16::MAX; 400], &mut out);
            // The step's overshoot saturates at the rail instead of wrapping negative.
            assert!(out.iter().all(|&s| s >= -400), "×{factor}: {:?}", out.iter().min());
            assert!(out[out.len() - 100..].iter().all(|&s| s >= 32_700), "×{factor}: unity gain at DC");
            let mut down = Polyphase::new(factor, false).unwrap();
            let mut out = Vec::new();
            down.push(&vec![i16::MIN; 400 * factor], &mut out);
            assert!(out[out.len() - 100..].iter().all(|&s| s <= -32_700), "×{factor}: unity gain at DC");
        }
    }
}
