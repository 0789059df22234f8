//! Fusing the ensemble members' logits into one probability map, a mask, an uncertainty map and
//! a confidence map (seed 000, Eq. 11-13, 20-21).

use serde::{Deserialize, Serialize};

use crate::spec::{MAX_CLASSES, MAX_MEMBERS};

/// The fused result of one layer, at the model's input resolution.
///
/// Allocate it once with [`Fused::new`] and hand it to [`fuse`] for every layer: fusion writes
/// every field and never allocates. All maps are row-major (`index = y * width + x`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fused {
    /// `W`, pixels.
    pub width: usize,
    /// `H`, pixels.
    pub height: usize,
    /// `K`, the number of classes.
    pub classes: usize,
    /// `[K, H, W]`: the mean over members of the temperature-scaled softmax, `y` of Eq. 21.
    pub probabilities: Vec<f32>,
    /// `[H, W]`: the class index with the largest mean probability, `ŷ` of Eq. 12.
    /// [`refine`](crate::refine()) may change it afterwards.
    pub mask: Vec<u8>,
    /// `[H, W]`: the members' variance (Eq. 13), summed over classes: 0 when the members agree
    /// (always, with one member), at most `1 − 1/K`.
    pub uncertainty: Vec<f32>,
    /// `[H, W]`: the largest mean probability, `max_k y_k`.
    pub confidence: Vec<f32>,
}

impl Fused {
    /// Allocates the maps for a `width` x `height` image with `classes` classes, all zero.
    pub fn new(width: usize, height: usize, classes: usize) -> Self {
        let pixels = width * height;
        Fused {
            width,
            height,
            classes,
            probabilities: vec![0.0; classes * pixels],
            mask: vec![0; pixels],
            uncertainty: vec![0.0; pixels],
            confidence: vec![0.0; pixels],
        }
    }

    /// `H * W`.
    pub fn pixels(&self) -> usize {
        self.width * self.height
    }

    /// The mean probability of class `k` at pixel (`x`, `y`).
    pub fn probability(&self, k: usize, x: usize, y: usize) -> f32 {
        self.probabilities[k * self.pixels() + y * self.width + x]
    }
}

/// Fuses the graph's `logits` `[M, K, H, W]` (the batch dimension of `[1, M, K, H, W]` dropped)
/// into `out`, whose `width`, `height` and `classes` give `H`, `W` and `K`.
///
/// Per pixel, with `q_i = softmax(z_i / T_i)` the calibrated probabilities of member `i`
/// (seed 000, Eq. 20):
/// - `probabilities = y = (1/M) Σ_i q_i` (seed 000, Eq. 21, which is Eq. 11 with temperatures);
/// - `mask = argmax_k y_k` (seed 000, Eq. 12); ties go to the lower class index;
/// - `uncertainty = Σ_k Var_k` with `Var_k = E[q_k²] − (E[q_k])²` over the members
///   (seed 000, Eq. 13), computed as the mean squared deviation `(1/M) Σ_i (q_ik − y_k)²`, which is
///   the same quantity but cannot come out negative through rounding; exactly 0 when `M = 1`;
/// - `confidence = max_k y_k`.
///
/// The softmax subtracts the per-member maximum before `exp`, so large logits do not overflow.
/// Pixels are taken a chunk at a time so each of the `M x K` logit planes is read in order, and
/// `exp` is a vectorisable polynomial ([`exp_nonpositive`]). Nothing is allocated: the chunk's
/// scratch is on the stack.
///
/// # Panics
/// If `logits.len() != M * K * H * W`, `temperatures.len() != members`, `members` is 0 or above
/// [`MAX_MEMBERS`], or `out.classes` is 0 or above [`MAX_CLASSES`]. These are programming errors:
/// the backend and [`Fused::new`] size the buffers from the same [`ModelSpec`](crate::ModelSpec).
pub fn fuse(logits: &[f32], members: usize, temperatures: &[f32], out: &mut Fused) {
    let classes = out.classes;
    let pixels = out.pixels();
    assert!(
        (1..=MAX_MEMBERS).contains(&members),
        "fuse: {members} members, 1..={MAX_MEMBERS} supported"
    );
    assert!(
        (1..=MAX_CLASSES).contains(&classes),
        "fuse: {classes} classes, 1..={MAX_CLASSES} supported"
    );
    assert_eq!(
        temperatures.len(),
        members,
        "fuse: {members} members but {} temperatures",
        temperatures.len()
    );
    assert_eq!(
        logits.len(),
        members * classes * pixels,
        "fuse: logits hold {} values, expected M={members} x K={classes} x {}x{}",
        logits.len(),
        out.height,
        out.width
    );
    assert_eq!(
        out.probabilities.len(),
        classes * pixels,
        "fuse: probabilities buffer has the wrong size"
    );
    assert_eq!(
        out.mask.len(),
        pixels,
        "fuse: mask buffer has the wrong size"
    );
    assert_eq!(
        out.uncertainty.len(),
        pixels,
        "fuse: uncertainty buffer has the wrong size"
    );
    assert_eq!(
        out.confidence.len(),
        pixels,
        "fuse: confidence buffer has the wrong size"
    );

    // The same chunk loop, compiled twice: for the AVX2+FMA CPUs found at run time (8 floats a
    // vector) and for the target's baseline (SSE2 on x86-64, 4 floats; NEON on aarch64).
    #[cfg(target_arch = "x86_64")]
    if avx2_fma_detected() {
        // SAFETY: the CPU has just been found to support AVX2 and FMA.
        unsafe { fuse_chunks_avx2_fma(logits, members, temperatures, out) };
        return;
    }
    fuse_chunks_baseline(logits, members, temperatures, out);
}

/// Whether this CPU runs AVX2 and FMA. `is_x86_feature_detected!` queries CPUID once and keeps
/// the answer in a static, so this costs two loads per layer and allocates nothing.
#[cfg(target_arch = "x86_64")]
fn avx2_fma_detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// [`fuse_chunks`] for the build target's baseline instruction set.
fn fuse_chunks_baseline(logits: &[f32], members: usize, temperatures: &[f32], out: &mut Fused) {
    fuse_chunks(logits, members, temperatures, out);
}

/// [`fuse_chunks`] compiled for AVX2 and FMA. Rust never contracts `a * b + c` into an FMA on its
/// own, so the results are bit-identical to [`fuse_chunks_baseline`]; only the vectors are wider.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`avx2_fma_detected`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fuse_chunks_avx2_fma(
    logits: &[f32],
    members: usize,
    temperatures: &[f32],
    out: &mut Fused,
) {
    fuse_chunks(logits, members, temperatures, out);
}

/// The body of [`fuse`] once the sizes are checked; `#[inline(always)]` so each wrapper above
/// compiles its own copy for its instruction set.
#[inline(always)]
fn fuse_chunks(logits: &[f32], members: usize, temperatures: &[f32], out: &mut Fused) {
    let classes = out.classes;
    let pixels = out.pixels();
    // Pixels go in chunks so that every logit plane is read in order and the inner loops run over
    // plain slices the compiler vectorises. The scratch lives on the stack (no allocation): the
    // calibrated probabilities q of one chunk, [M, K, chunk], fit in `Q_SCRATCH` floats (L1/L2-sized).
    let chunk = (Q_SCRATCH / (members * classes)).clamp(1, MAX_CHUNK);
    let mut q_scratch = [0.0f32; Q_SCRATCH];
    let mut max_scratch = [0.0f32; MAX_CHUNK];
    let mut sum_scratch = [0.0f32; MAX_CHUNK];
    let mut deviation_scratch = [0.0f32; MAX_CHUNK];
    let mut variance_scratch = [0.0f32; MAX_CHUNK];
    let inverse_members = 1.0 / members as f32;

    let mut start = 0;
    while start < pixels {
        let n = chunk.min(pixels - start);
        let q = &mut q_scratch[..members * classes * n];
        let max_scaled = &mut max_scratch[..n];
        let sum = &mut sum_scratch[..n];

        for (i, &temperature) in temperatures.iter().enumerate() {
            let q_i = &mut q[i * classes * n..(i + 1) * classes * n];
            // seed 000, Eq. 20: softmax(z / T), shifted by the per-pixel maximum for stability.
            max_scaled.fill(f32::NEG_INFINITY);
            for (k, q_ik) in q_i.chunks_exact_mut(n).enumerate() {
                let plane = (i * classes + k) * pixels + start;
                let z = &logits[plane..plane + n];
                for ((value, &logit), max) in q_ik.iter_mut().zip(z).zip(max_scaled.iter_mut()) {
                    let scaled = logit / temperature;
                    *value = scaled;
                    *max = if scaled > *max { scaled } else { *max };
                }
            }
            sum.fill(0.0);
            for q_ik in q_i.chunks_exact_mut(n) {
                for ((value, &max), total) in
                    q_ik.iter_mut().zip(max_scaled.iter()).zip(sum.iter_mut())
                {
                    *value = exp_nonpositive(*value - max);
                    *total += *value;
                }
            }
            for total in sum.iter_mut() {
                *total = 1.0 / *total;
            }
            for q_ik in q_i.chunks_exact_mut(n) {
                for (value, &inverse_sum) in q_ik.iter_mut().zip(sum.iter()) {
                    *value *= inverse_sum;
                }
            }
        }

        let variance_sum = &mut variance_scratch[..n];
        let squared_deviation = &mut deviation_scratch[..n];
        let best_probability = &mut out.confidence[start..start + n];
        let best_class = &mut out.mask[start..start + n];
        variance_sum.fill(0.0);
        best_probability.fill(f32::NEG_INFINITY);
        best_class.fill(0);
        for k in 0..classes {
            // seed 000, Eq. 21: y_k = (1/M) Σ_i softmax(z_i / T_i)_k
            let mean = &mut out.probabilities[k * pixels + start..k * pixels + start + n];
            mean.fill(0.0);
            for i in 0..members {
                let q_ik = &q[(i * classes + k) * n..(i * classes + k + 1) * n];
                for (m, &value) in mean.iter_mut().zip(q_ik) {
                    *m += value;
                }
            }
            for m in mean.iter_mut() {
                *m *= inverse_members;
            }
            // seed 000, Eq. 13: Var = E(y²) − [E(y)]², as the mean squared deviation.
            squared_deviation.fill(0.0);
            for i in 0..members {
                let q_ik = &q[(i * classes + k) * n..(i * classes + k + 1) * n];
                for ((s, &value), &m) in squared_deviation.iter_mut().zip(q_ik).zip(mean.iter()) {
                    let deviation = value - m;
                    *s += deviation * deviation;
                }
            }
            for (v, &s) in variance_sum.iter_mut().zip(squared_deviation.iter()) {
                *v += s * inverse_members;
            }
            // seed 000, Eq. 12: ŷ = argmax(y); strict `>` keeps the lower index on ties.
            for ((best, class), &m) in best_probability
                .iter_mut()
                .zip(best_class.iter_mut())
                .zip(mean.iter())
            {
                if m > *best {
                    *best = m;
                    *class = k as u8;
                }
            }
        }
        let uncertainty = &mut out.uncertainty[start..start + n];
        if members == 1 {
            uncertainty.fill(0.0);
        } else {
            uncertainty.copy_from_slice(variance_sum);
        }
        start += n;
    }
}

/// Floats of stack scratch for one chunk's calibrated probabilities `[M, K, chunk]`: 32 KiB, at
/// least one pixel even at [`MAX_MEMBERS`] x [`MAX_CLASSES`].
const Q_SCRATCH: usize = 8192;
/// The most pixels in one chunk (sizes the per-pixel scratch rows).
const MAX_CHUNK: usize = 512;
const _: () = assert!(Q_SCRATCH >= MAX_MEMBERS * MAX_CLASSES);

/// `e^x` for `x <= 0` (a softmax argument after subtracting the maximum), in plain arithmetic the
/// compiler vectorises, unlike a call to the C library's `expf`.
///
/// Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by a degree-7 polynomial,
/// `2^n` built in the exponent bits; relative error within 2e-7 of the true value. Arguments below
/// -87 (where `e^x` leaves the normal range) give about 1.6e-38 rather than a subnormal or 0, which
/// no sum of probabilities can tell apart.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 x 2^23: adding it rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let x = if x > -87.0 { x } else { -87.0 };
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((exponent + 127) << 23) as u32)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index-by-pixel reads like the hand computation
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tolerance: f32) -> bool {
        (a - b).abs() <= tolerance
    }

    /// Two members, two classes, a 2x2 map, T_1 = 2, T_2 = 0.5.
    ///
    /// Logits `[M=2, K=2, H=2, W=2]`, pixels in order p0..p3:
    /// - member 1, class 0: [0, 2, 0, 1]   class 1: [0, 0, 2, 1]   (T_1 = 2)
    /// - member 2, class 0: [0, 1, 0, 3]   class 1: [0, 0, 1, 3]   (T_2 = 0.5)
    ///
    /// By hand, with σ(d) = 1 / (1 + e^-d) (two-class softmax of a logit difference d):
    /// - p0: all logits 0 → q_1 = q_2 = (0.5, 0.5); y = (0.5, 0.5); Var = 0; mask 0 (tie → lower index).
    /// - p1: member 1: (2 − 0)/2 = 1 → q_1 = (σ(1), σ(−1)) = (0.731059, 0.268941);
    ///   member 2: (1 − 0)/0.5 = 2 → q_2 = (σ(2), σ(−2)) = (0.880797, 0.119203);
    ///   y_0 = (0.731059 + 0.880797)/2 = 0.805928, y_1 = 0.194072; mask 0, confidence 0.805928.
    ///   Var_k = ((q_1k − q_2k)/2)² = (0.149738/2)² = 0.005605 for each k → Σ_k = 0.011210.
    /// - p2: mirror of p1 with classes swapped → y = (0.194072, 0.805928), mask 1, uncertainty 0.011210.
    /// - p3: equal logits in each member → y = (0.5, 0.5), Var = 0, mask 0.
    #[test]
    fn fuse_two_members_two_classes_matches_hand_computation() {
        let logits = [
            0.0, 2.0, 0.0, 1.0, // member 1, class 0
            0.0, 0.0, 2.0, 1.0, // member 1, class 1
            0.0, 1.0, 0.0, 3.0, // member 2, class 0
            0.0, 0.0, 1.0, 3.0, // member 2, class 1
        ];
        let mut fused = Fused::new(2, 2, 2);
        fuse(&logits, 2, &[2.0, 0.5], &mut fused);

        let expected_y0 = [0.5, 0.805928, 0.194072, 0.5];
        for p in 0..4 {
            assert!(
                close(fused.probabilities[p], expected_y0[p], 1e-5),
                "y_0 at p{p}: {}",
                fused.probabilities[p]
            );
            assert!(
                close(fused.probabilities[4 + p], 1.0 - expected_y0[p], 1e-5),
                "y_1 at p{p}"
            );
        }
        assert_eq!(fused.mask, vec![0, 0, 1, 0]);
        let expected_uncertainty = [0.0, 0.011210, 0.011210, 0.0];
        for p in 0..4 {
            assert!(
                close(fused.uncertainty[p], expected_uncertainty[p], 1e-5),
                "uncertainty at p{p}: {}",
                fused.uncertainty[p]
            );
        }
        let expected_confidence = [0.5, 0.805928, 0.805928, 0.5];
        for p in 0..4 {
            assert!(
                close(fused.confidence[p], expected_confidence[p], 1e-5),
                "confidence at p{p}"
            );
        }
        assert!(close(fused.probability(1, 0, 1), 0.805928, 1e-5));
    }

    /// The variance computed as E[q²] − E[q]² (Eq. 13 literally) agrees with the mean squared
    /// deviation used in `fuse`, on three members and three classes.
    #[test]
    fn uncertainty_equals_eq13_literally() {
        let (members, classes, pixels) = (3usize, 3usize, 1usize);
        let logits = [1.0f32, 0.2, -0.5, 0.3, 2.0, 0.1, -1.0, 0.0, 1.5];
        let temperatures = [1.3f32, 0.8, 1.1];
        let mut fused = Fused::new(1, 1, classes);
        fuse(&logits, members, &temperatures, &mut fused);

        let mut expected = 0.0f64;
        for k in 0..classes {
            let (mut e_q, mut e_q2) = (0.0f64, 0.0f64);
            for i in 0..members {
                let z: Vec<f64> = (0..classes)
                    .map(|c| (logits[(i * classes + c) * pixels] / temperatures[i]) as f64)
                    .collect();
                let total: f64 = z.iter().map(|v| v.exp()).sum();
                let q = z[k].exp() / total;
                e_q += q / members as f64;
                e_q2 += q * q / members as f64;
            }
            expected += e_q2 - e_q * e_q;
        }
        assert!(
            (fused.uncertainty[0] as f64 - expected).abs() < 1e-6,
            "{} vs {expected}",
            fused.uncertainty[0]
        );
        let total: f32 = (0..classes).map(|k| fused.probabilities[k]).sum();
        assert!(close(total, 1.0, 1e-6));
    }

    #[test]
    fn one_member_gives_zero_uncertainty() {
        let logits: Vec<f32> = (0..3 * 4 * 5)
            .map(|v| ((v * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let mut fused = Fused::new(5, 4, 3);
        fused.uncertainty.fill(9.0);
        fuse(&logits, 1, &[1.7], &mut fused);
        assert!(fused.uncertainty.iter().all(|&u| u == 0.0));
        // The mean of one member is that member's softmax: every pixel sums to 1.
        for p in 0..20 {
            let total: f32 = (0..3).map(|k| fused.probabilities[k * 20 + p]).sum();
            assert!(close(total, 1.0, 1e-6));
        }
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let logits = [1000.0f32, 0.0, -1000.0, 1000.0];
        let mut fused = Fused::new(1, 1, 2);
        fuse(&logits, 2, &[1.0, 1.0], &mut fused);
        assert!(fused.probabilities.iter().all(|p| p.is_finite()));
        // member 1: (1, 0); member 2: (0, 1) → y = (0.5, 0.5), Σ_k Var_k = 2 × 0.25 = 0.5.
        assert!(close(fused.probabilities[0], 0.5, 1e-6));
        assert!(close(fused.uncertainty[0], 0.5, 1e-6));
    }

    /// A straightforward per-pixel implementation of seed 000 Eq. 20/21/12/13 in f64 with the
    /// C library's `exp`, to hold the chunked, vectorised `fuse` against.
    fn reference_fuse(logits: &[f32], members: usize, temperatures: &[f32], out: &mut Fused) {
        let (classes, pixels) = (out.classes, out.pixels());
        for p in 0..pixels {
            let mut q = vec![vec![0.0f64; classes]; members];
            for i in 0..members {
                let scaled: Vec<f64> = (0..classes)
                    .map(|k| logits[(i * classes + k) * pixels + p] as f64 / temperatures[i] as f64)
                    .collect();
                let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scaled.iter().map(|s| (s - max).exp()).sum();
                for k in 0..classes {
                    q[i][k] = (scaled[k] - max).exp() / total;
                }
            }
            let (mut best, mut best_k, mut variance) = (f64::NEG_INFINITY, 0, 0.0f64);
            for k in 0..classes {
                let mean = (0..members).map(|i| q[i][k]).sum::<f64>() / members as f64;
                let mean_square =
                    (0..members).map(|i| q[i][k] * q[i][k]).sum::<f64>() / members as f64;
                variance += mean_square - mean * mean;
                out.probabilities[k * pixels + p] = mean as f32;
                if mean > best {
                    best = mean;
                    best_k = k;
                }
            }
            out.mask[p] = best_k as u8;
            out.confidence[p] = best as f32;
            out.uncertainty[p] = variance as f32;
        }
    }

    /// Deterministic pseudo-random values in [-scale, scale) (an LCG; the test needs no crate).
    fn random_values(count: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// `(M, K, width, height, seed)` for the random-logit tests: a pixel count that is not a
    /// multiple of the chunk (the last chunk is short), one member, and sizes where a chunk holds
    /// a few pixels only (many members and classes).
    const RANDOM_CASES: [(usize, usize, usize, usize, u64); 4] = [
        (5, 6, 37, 29, 1),
        (3, 2, 64, 40, 2),
        (1, 4, 13, 7, 3),
        (16, 200, 5, 3, 4),
    ];

    /// Random logits `[M, K, pixels]` within `±scale` and temperatures 0.5, 0.87, 1.24, ...
    fn random_ensemble(
        members: usize,
        classes: usize,
        pixels: usize,
        seed: u64,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let logits = random_values(members * classes * pixels, seed, scale);
        let temperatures = (0..members).map(|i| 0.5 + 0.37 * i as f32).collect();
        (logits, temperatures)
    }

    /// The chunked fusion equals the per-pixel reference within 1e-6 on random logits
    /// ([`RANDOM_CASES`]).
    #[test]
    fn chunked_fuse_equals_per_pixel_reference_on_random_logits() {
        for (members, classes, width, height, seed) in RANDOM_CASES {
            let pixels = width * height;
            let (logits, temperatures) = random_ensemble(members, classes, pixels, seed, 12.0);
            let mut fused = Fused::new(width, height, classes);
            fuse(&logits, members, &temperatures, &mut fused);
            let mut expected = Fused::new(width, height, classes);
            reference_fuse(&logits, members, &temperatures, &mut expected);
            let case = format!("M={members} K={classes} {width}x{height}");
            for (index, (a, b)) in fused
                .probabilities
                .iter()
                .zip(&expected.probabilities)
                .enumerate()
            {
                assert!(
                    close(*a, *b, 1e-6),
                    "{case}: probability {index}: {a} vs {b}"
                );
            }
            for p in 0..pixels {
                assert!(
                    close(fused.uncertainty[p], expected.uncertainty[p], 1e-6),
                    "{case}: uncertainty at {p}"
                );
                assert!(
                    close(fused.confidence[p], expected.confidence[p], 1e-6),
                    "{case}: confidence at {p}"
                );
                // The argmax may only differ where two classes' means are within rounding.
                if fused.mask[p] != expected.mask[p] {
                    let other = fused.probabilities[fused.mask[p] as usize * pixels + p];
                    assert!(
                        close(other, expected.confidence[p], 1e-6),
                        "{case}: mask at {p}"
                    );
                }
            }
        }
    }

    /// The four fused maps as bits, to compare two runs exactly (NaN included).
    fn fused_bits(fused: &Fused) -> (Vec<u32>, Vec<u8>, Vec<u32>, Vec<u32>) {
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        (
            bits(&fused.probabilities),
            fused.mask.clone(),
            bits(&fused.uncertainty),
            bits(&fused.confidence),
        )
    }

    /// The run-time dispatched `fuse` gives bit-for-bit the baseline kernel's maps on random
    /// logits, and where this CPU has AVX2 and FMA, so does the AVX2+FMA build of the kernel
    /// (Rust never fuses `a * b + c` on its own, and each pixel's sums run in the same order at
    /// any vector width). Elsewhere `fuse` must have taken the baseline path.
    #[test]
    fn dispatched_fuse_is_bit_identical_to_baseline_kernel() {
        for (members, classes, width, height, seed) in RANDOM_CASES {
            let pixels = width * height;
            let (logits, temperatures) = random_ensemble(members, classes, pixels, seed, 30.0);
            let case = format!("M={members} K={classes} {width}x{height}");
            let mut baseline = Fused::new(width, height, classes);
            fuse_chunks_baseline(&logits, members, &temperatures, &mut baseline);
            let mut dispatched = Fused::new(width, height, classes);
            fuse(&logits, members, &temperatures, &mut dispatched);
            assert!(
                fused_bits(&dispatched) == fused_bits(&baseline),
                "{case}: dispatched fuse differs from the baseline kernel"
            );
            #[cfg(target_arch = "x86_64")]
            if avx2_fma_detected() {
                let mut wide = Fused::new(width, height, classes);
                // SAFETY: AVX2 and FMA were just detected on this CPU.
                unsafe { fuse_chunks_avx2_fma(&logits, members, &temperatures, &mut wide) };
                assert!(
                    fused_bits(&wide) == fused_bits(&baseline),
                    "{case}: the AVX2+FMA kernel differs from the baseline kernel"
                );
            }
            // Not trivially equal: each pixel's probabilities sum to 1.
            for p in 0..pixels {
                let total: f32 = (0..classes)
                    .map(|k| baseline.probabilities[k * pixels + p])
                    .sum();
                assert!(
                    close(total, 1.0, 1e-5),
                    "{case}: probabilities at {p} sum to {total}"
                );
            }
        }
    }

    /// The vectorisable `exp` is within 2e-7 (relative) of f64 `exp` over the softmax's range.
    #[test]
    fn exp_nonpositive_matches_exp() {
        for step in 0..=870_000 {
            let x = -(step as f32) * 1e-4;
            let expected = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            if x > -87.0 {
                assert!(
                    ((got - expected) / expected).abs() < 2e-7,
                    "exp({x}) = {got}, expected {expected}"
                );
            } else {
                assert!(got < 2e-38, "exp({x}) = {got}");
            }
        }
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }
}
