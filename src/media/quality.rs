//! A call's listening quality as a MOS, estimated from what the receiver
//! measured: the ITU-T G.107 E-model, simplified the way RFC 3611 §4.7.5 (VoIP
//! metrics) and most trunk monitors do it.
//!
//! `R = 93.2 − Id − Ie,eff`, with the delay impairment `Id` from an effective
//! one-way delay (packetisation + 2 × jitter + 10 ms of processing; precall
//! sees no RTCP round trip, so network latency is not in it) and the equipment
//! impairment `Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl)` for random loss
//! (G.107 §3.6, BurstR = 1). `Ie` and `Bpl` are the codec's G.113 Appendix I
//! values. `MOS = 1 + 0.035 R + 7·10⁻⁶ R (R − 60)(100 − R)`, which caps G.711 at
//! about 4.4. It is an estimate for comparing trunks and spotting bad calls,
//! not a listening test.

use super::receiver::RtpStats;

/// The codec's impairment factors (ITU-T G.113 Appendix I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment without loss.
    pub ie: f64,
    /// Packet-loss robustness (higher is more robust).
    pub bpl: f64,
}

/// G.711 with packet-loss concealment (G.113 Amendment 1: Ie 0, Bpl 25.1).
pub const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
/// Opus carried narrowband-equivalent; its in-band FEC makes it at least as
/// robust as G.711 with PLC, so the same factors are a conservative choice.
pub const OPUS: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };

/// The E-model's transmission rating R for a call.
pub fn r_factor(loss_ratio: f64, jitter_ms: f64, packet_ms: f64, codec: CodecImpairment) -> f64 {
    let loss_pct = (loss_ratio.clamp(0.0, 1.0)) * 100.0;
    let jitter_ms = if jitter_ms.is_finite() {
        jitter_ms.clamp(0.0, 10_000.0)
    } else {
        0.0
    };
    let delay = packet_ms.clamp(0.0, 1000.0) + 2.0 * jitter_ms + 10.0;
    let id = 0.024 * delay + if delay > 177.3 { 0.11 * (delay - 177.3) } else { 0.0 };
    let ie_eff = codec.ie + (95.0 - codec.ie) * loss_pct / (loss_pct + codec.bpl);
    93.2 - id - ie_eff
}

/// The MOS (1.0–4.5) for an R factor (G.107 Annex B).
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        (1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
    }
}

/// The MOS for what a call's receiver measured; `None` when nothing was
/// received to judge.
pub fn estimate(stats: &RtpStats, codec: CodecImpairment) -> Option<f64> {
    if stats.expected == 0 {
        return None;
    }
    Some(mos_from_r(r_factor(stats.loss_ratio(), stats.mean_jitter_ms, 20.0, codec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_g711_call_is_about_4_4() {
        let mos = mos_from_r(r_factor(0.0, 0.0, 20.0, G711));
        assert!((4.35..=4.42).contains(&mos), "{mos}");
    }

    #[test]
    fn loss_and_jitter_lower_it_monotonically() {
        let mut last = 5.0;
        for loss in [0.0, 0.01, 0.03, 0.05, 0.10, 0.20, 0.50] {
            let mos = mos_from_r(r_factor(loss, 5.0, 20.0, G711));
            assert!(mos < last, "loss {loss}: {mos} !< {last}");
            last = mos;
        }
        // 5 % random loss on G.711 with PLC: R ≈ 77, MOS ≈ 3.9 (G.113 tables).
        let mos = mos_from_r(r_factor(0.05, 0.0, 20.0, G711));
        assert!((3.8..=4.0).contains(&mos), "{mos}");
        assert!(mos_from_r(r_factor(0.0, 150.0, 20.0, G711)) < mos_from_r(r_factor(0.0, 10.0, 20.0, G711)));
    }

    #[test]
    fn hostile_numbers_stay_in_range() {
        for (loss, jitter) in [(f64::NAN, f64::NAN), (-1.0, -5.0), (9.0, f64::INFINITY), (1.0, 1e12)] {
            let mos = mos_from_r(r_factor(loss, jitter, 20.0, G711));
            assert!((1.0..=4.5).contains(&mos), "{loss} {jitter}: {mos}");
        }
        assert_eq!(estimate(&RtpStats::default(), G711), None);
    }
}
