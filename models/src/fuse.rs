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
/// The pixels are split into ranges fused on every core (rayon's pool; the maps are the same
/// however they are split); each range is taken a chunk at a time so each of the `M x K` logit
/// planes is read in order, and `exp` is a vectorisable polynomial in base 2
/// ([`exp2_nonpositive`]). Nothing is allocated: the chunk's scratch is on the stack. The maps
/// agree with a double-precision evaluation of the equations within 1e-6; CPUs with a fused
/// multiply-add (AVX2+FMA, every aarch64) give the same bits, others differ in the last bits.
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
    assert_eq!(out.mask.len(), pixels, "fuse: mask buffer has the wrong size");
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

    // A few ranges per thread, so a thread that starts late (woken after the others) is not
    // left with a whole share while the rest wait.
    let ranges = (4 * rayon::current_num_threads()).clamp(1, MAX_RANGES);
    fuse_in_ranges(logits, members, temperatures, pixels, OutRange::whole(out), ranges);
}

/// Pixels fewer than this are not split further across threads: below it, handing a range to
/// another thread costs about as much as fusing it.
const MIN_RANGE_PIXELS: usize = 1 << 14;
/// The most pixel ranges one layer is split into.
const MAX_RANGES: usize = 64;

/// Fuses `range` split into up to `ranges` pixel ranges of about the same size, run on rayon's
/// pool (halves by [`rayon::join`], so the recursion is `log2(ranges)` deep). Every pixel is
/// fused on its own, so the maps are bit-identical however the pixels are split.
fn fuse_in_ranges(
    logits: &[f32],
    members: usize,
    temperatures: &[f32],
    pixels: usize,
    range: OutRange<'_>,
    ranges: usize,
) {
    let len = range.mask.len();
    if ranges <= 1 || len < 2 * MIN_RANGE_PIXELS {
        fuse_range(logits, members, temperatures, pixels, range);
        return;
    }
    let first_ranges = ranges / 2;
    let (first, second) = range.split_at(len * first_ranges / ranges);
    rayon::join(
        || fuse_in_ranges(logits, members, temperatures, pixels, first, first_ranges),
        || fuse_in_ranges(logits, members, temperatures, pixels, second, ranges - first_ranges),
    );
}

/// The part of a [`Fused`] that one pixel range `start..start + len` writes: each class plane's
/// slice of `probabilities` and the range of the per-pixel maps. Disjoint ranges borrow disjoint
/// slices, so they can be fused on different threads.
struct OutRange<'a> {
    /// The first pixel of the range.
    start: usize,
    /// `K` slices of length `len` (one per class plane); the rest are empty.
    probabilities: [&'a mut [f32]; MAX_CLASSES],
    classes: usize,
    mask: &'a mut [u8],
    uncertainty: &'a mut [f32],
    confidence: &'a mut [f32],
}

impl<'a> OutRange<'a> {
    /// Every pixel of `out`.
    fn whole(out: &'a mut Fused) -> OutRange<'a> {
        let pixels = out.pixels();
        let mut planes = out.probabilities.chunks_exact_mut(pixels);
        OutRange {
            start: 0,
            probabilities: std::array::from_fn(|_| planes.next().unwrap_or_default()),
            classes: out.classes,
            mask: &mut out.mask,
            uncertainty: &mut out.uncertainty,
            confidence: &mut out.confidence,
        }
    }

    /// The first `mid` pixels and the rest.
    fn split_at(self, mid: usize) -> (OutRange<'a>, OutRange<'a>) {
        let mut planes = self.probabilities.into_iter().map(|plane| {
            let at = mid.min(plane.len());
            plane.split_at_mut(at)
        });
        let mut second: [&'a mut [f32]; MAX_CLASSES] = std::array::from_fn(|_| <&mut [f32]>::default());
        let first = std::array::from_fn(|k| {
            let (before, after) = planes.next().expect("MAX_CLASSES planes");
            second[k] = after;
            before
        });
        let (mask_first, mask_second) = self.mask.split_at_mut(mid);
        let (uncertainty_first, uncertainty_second) = self.uncertainty.split_at_mut(mid);
        let (confidence_first, confidence_second) = self.confidence.split_at_mut(mid);
        (
            OutRange {
                start: self.start,
                probabilities: first,
                classes: self.classes,
                mask: mask_first,
                uncertainty: uncertainty_first,
                confidence: confidence_first,
            },
            OutRange {
                start: self.start + mid,
                probabilities: second,
                classes: self.classes,
                mask: mask_second,
                uncertainty: uncertainty_second,
                confidence: confidence_second,
            },
        )
    }
}

/// Fuses one pixel range on this thread: the same chunk loop compiled twice, for the AVX2+FMA
/// CPUs found at run time (8 floats a vector, fused multiply-adds) and for the target's baseline
/// (SSE2 on x86-64: 4 floats, separate multiplies and adds; NEON on aarch64: 4 floats, fused
/// multiply-adds, so a Jetson gives the same bits as an AVX2+FMA PC).
fn fuse_range(logits: &[f32], members: usize, temperatures: &[f32], pixels: usize, range: OutRange<'_>) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma_detected() {
        // SAFETY: the CPU has just been found to support AVX2 and FMA.
        unsafe { fuse_chunks_avx2_fma(logits, members, temperatures, pixels, range) };
        return;
    }
    fuse_chunks_baseline(logits, members, temperatures, pixels, range);
}

/// Whether this CPU runs AVX2 and FMA. `is_x86_feature_detected!` queries CPUID once and keeps
/// the answer in a static, so this costs two loads per layer and allocates nothing.
#[cfg(target_arch = "x86_64")]
fn avx2_fma_detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether the baseline instruction set has a fused multiply-add: every aarch64 CPU does (NEON),
/// x86-64's baseline (SSE2) does not, and there `f32::mul_add` would be a slow library call.
const BASELINE_HAS_FMA: bool = cfg!(target_arch = "aarch64");

/// [`fuse_chunks`] for the build target's baseline instruction set.
fn fuse_chunks_baseline(logits: &[f32], members: usize, temperatures: &[f32], pixels: usize, range: OutRange<'_>) {
    fuse_chunks::<BASELINE_HAS_FMA>(logits, members, temperatures, pixels, range);
}

/// [`fuse_chunks`] compiled for AVX2 and FMA. Rust never contracts `a * b + c` into an FMA on its
/// own; the kernel asks for one where it helps ([`mul_add`]), which rounds once instead of twice,
/// so the results differ from the SSE2 kernel's in the last bits (well within 1e-6).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`avx2_fma_detected`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fuse_chunks_avx2_fma(
    logits: &[f32],
    members: usize,
    temperatures: &[f32],
    pixels: usize,
    range: OutRange<'_>,
) {
    fuse_chunks::<true>(logits, members, temperatures, pixels, range);
}

/// `a * b + c`, with one rounding (a fused multiply-add) when `FMA`, else two.
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The body of [`fuse`] once the sizes are checked; `#[inline(always)]` so each wrapper above
/// compiles its own copy for its instruction set. `FMA`: whether that instruction set has a
/// fused multiply-add (see [`mul_add`]).
#[inline(always)]
fn fuse_chunks<const FMA: bool>(
    logits: &[f32],
    members: usize,
    temperatures: &[f32],
    pixels: usize,
    range: OutRange<'_>,
) {
    let classes = range.classes;
    let range_start = range.start;
    let range_len = range.mask.len();
    // Pixels go in chunks so that every logit plane is read in order and the inner loops run over
    // plain slices the compiler vectorises. The scratch lives on the stack (no allocation): the
    // calibrated probabilities q of one chunk, [M, K, chunk], fit in `Q_SCRATCH` floats (half of a
    // typical L1 data cache, which leaves room for the per-pixel rows).
    let chunk = (Q_SCRATCH / (members * classes)).clamp(1, MAX_CHUNK);
    let mut q_scratch = [0.0f32; Q_SCRATCH];
    let mut max_scratch = [0.0f32; MAX_CHUNK];
    let mut inverse_sum_scratch = [0.0f32; MAX_MEMBERS * MAX_CHUNK];
    let mut deviation_scratch = [0.0f32; MAX_CHUNK];
    let mut best_class_scratch = [0u32; MAX_CHUNK];
    let mut variance_scratch = [0.0f32; MAX_CHUNK];
    let inverse_members = 1.0 / members as f32;

    // `start` counts within the range; the logit planes are indexed from `range_start + start`.
    let mut start = 0;
    while start < range_len {
        let n = chunk.min(range_len - start);
        let q = &mut q_scratch[..members * classes * n];
        let max_scaled = &mut max_scratch[..n];

        for (i, &temperature) in temperatures.iter().enumerate() {
            let q_i = &mut q[i * classes * n..(i + 1) * classes * n];
            // seed 000, Eq. 20: softmax(z / T), shifted by the per-pixel maximum for stability.
            // One multiplication per logit: by 1/T (a division is several times slower) and by
            // log2(e), so that the softmax's exponential is a power of 2.
            let scale = std::f32::consts::LOG2_E / temperature;
            max_scaled.fill(f32::NEG_INFINITY);
            for (k, q_ik) in q_i.chunks_exact_mut(n).enumerate() {
                let plane = (i * classes + k) * pixels + range_start + start;
                let z = &logits[plane..plane + n];
                // Each plane is read in runs of one chunk, too short for the CPU to see a stream:
                // ask for this plane's next chunk now, so it is in cache when its turn comes.
                let next = plane + n..(plane + 2 * n).min((i * classes + k + 1) * pixels);
                prefetch(logits.get(next).unwrap_or_default());
                for ((value, &logit), max) in q_ik.iter_mut().zip(z).zip(max_scaled.iter_mut()) {
                    let scaled = logit * scale;
                    *value = scaled;
                    // `f32::max` rather than a comparison: LLVM turns a conditional update of
                    // `*max` into masked vector stores, which are slow on AMD's CPUs.
                    *max = max.max(scaled);
                }
            }
            // q_i keeps e^(z/T − max); the normalising 1 / Σ is applied where q is read below
            // (the same single multiplication, without a pass that writes q again).
            let inverse_sum = &mut inverse_sum_scratch[i * n..(i + 1) * n];
            inverse_sum.fill(0.0);
            for q_ik in q_i.chunks_exact_mut(n) {
                for ((value, &max), total) in q_ik.iter_mut().zip(max_scaled.iter()).zip(inverse_sum.iter_mut()) {
                    *value = exp2_nonpositive::<FMA>(*value - max);
                    *total += *value;
                }
            }
            for total in inverse_sum.iter_mut() {
                *total = 1.0 / *total;
            }
        }

        let variance_sum = &mut variance_scratch[..n];
        let squared_deviation = &mut deviation_scratch[..n];
        let best_probability = &mut range.confidence[start..start + n];
        let best_class = &mut best_class_scratch[..n];
        variance_sum.fill(0.0);
        best_probability.fill(f32::NEG_INFINITY);
        best_class.fill(0);
        for k in 0..classes {
            // seed 000, Eq. 21: y_k = (1/M) Σ_i softmax(z_i / T_i)_k
            let mean = &mut range.probabilities[k][start..start + n];
            mean.fill(0.0);
            for i in 0..members {
                let e_ik = &q[(i * classes + k) * n..(i * classes + k + 1) * n];
                let inverse_sum = &inverse_sum_scratch[i * n..(i + 1) * n];
                for ((m, &value), &inverse) in mean.iter_mut().zip(e_ik).zip(inverse_sum) {
                    *m = mul_add::<FMA>(value, inverse, *m);
                }
            }
            for m in mean.iter_mut() {
                *m *= inverse_members;
            }
            // seed 000, Eq. 13: Var = E(y²) − [E(y)]², as the mean squared deviation.
            squared_deviation.fill(0.0);
            for i in 0..members {
                let e_ik = &q[(i * classes + k) * n..(i * classes + k + 1) * n];
                let inverse_sum = &inverse_sum_scratch[i * n..(i + 1) * n];
                for (((s, &value), &inverse), &m) in
                    squared_deviation.iter_mut().zip(e_ik).zip(inverse_sum).zip(mean.iter())
                {
                    let deviation = mul_add::<FMA>(value, inverse, -m);
                    *s = mul_add::<FMA>(deviation, deviation, *s);
                }
            }
            for (v, &s) in variance_sum.iter_mut().zip(squared_deviation.iter()) {
                *v += s * inverse_members;
            }
            // seed 000, Eq. 12: ŷ = argmax(y); strict `>` keeps the lower index on ties.
            // Selects on 32-bit lanes (the class as a u32, narrowed after the last class), so the
            // loop vectorises like the others.
            for ((best, class), &m) in best_probability.iter_mut().zip(best_class.iter_mut()).zip(mean.iter()) {
                let (current_best, current_class) = (*best, *class);
                let better = m > current_best;
                *best = if better { m } else { current_best };
                *class = if better { k as u32 } else { current_class };
            }
        }
        for (mask, &class) in range.mask[start..start + n].iter_mut().zip(best_class.iter()) {
            *mask = class as u8;
        }
        let uncertainty = &mut range.uncertainty[start..start + n];
        if members == 1 {
            uncertainty.fill(0.0);
        } else {
            uncertainty.copy_from_slice(variance_sum);
        }
        start += n;
    }
}

/// Hints the CPU to load `values` into its level-2 cache (a prefetch: no fault, no effect on
/// results); level 2 rather than 1, which the chunk's scratch already fills.
#[inline(always)]
fn prefetch(values: &[f32]) {
    const FLOATS_PER_LINE: usize = 16;
    for line in values.chunks(FLOATS_PER_LINE) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and reads nothing into the program; SSE is x86-64's baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(line.as_ptr().cast());
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: PRFM is a hint: it never faults and changes no register or memory.
        unsafe {
            std::arch::asm!("prfm pldl2keep, [{0}]", in(reg) line.as_ptr(), options(nostack, readonly, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = line;
    }
}

/// Floats of stack scratch for one chunk's calibrated probabilities `[M, K, chunk]`: 16 KiB, at
/// least one pixel even at [`MAX_MEMBERS`] x [`MAX_CLASSES`].
const Q_SCRATCH: usize = 4096;
/// The most pixels in one chunk (sizes the per-pixel scratch rows).
const MAX_CHUNK: usize = 512;
const _: () = assert!(Q_SCRATCH >= MAX_MEMBERS * MAX_CLASSES);

/// `2^x` for `x <= 0`, in plain arithmetic the compiler vectorises, unlike a call to the C
/// library's `exp2f`. The softmax works in base 2: `e^(z/T − max) = 2^(z·log2(e)/T − max')` with
/// `max'` the maximum of the base-2 arguments, so the conversion costs nothing per value.
///
/// `x = n + r` with `n` the nearest integer and `|r| <= 1/2` (exact in `f32`), `2^r = 1 + r P(r)`
/// with `P` of degree 5 (coefficients fitted for the smallest relative error on `[-1/2, 1/2]`;
/// they agree with Cephes' `exp2f`), `2^n` built in the exponent bits; relative error within
/// 2e-7 of the true value. Arguments below -126 (where `2^x` leaves the normal range) give
/// `2^-126` (1.2e-38) rather than a subnormal or 0, which no sum of probabilities can tell apart.
#[inline(always)]
fn exp2_nonpositive<const FMA: bool>(x: f32) -> f32 {
    // 1.5 x 2^23: adding it rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    let x = if x > -126.0 { x } else { -126.0 };
    let shifted = x + ROUNDER;
    let n = shifted - ROUNDER;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUNDER.to_bits() as i32);
    let r = x - n;
    let mut p = 1.535_324e-4;
    p = mul_add::<FMA>(p, r, 1.339_886_7e-3);
    p = mul_add::<FMA>(p, r, 9.618_438e-3);
    p = mul_add::<FMA>(p, r, 5.550_332_4e-2);
    p = mul_add::<FMA>(p, r, 2.402_264_8e-1);
    p = mul_add::<FMA>(p, r, 6.931_472e-1);
    mul_add::<FMA>(p, r, 1.0) * f32::from_bits(((exponent + 127) << 23) as u32)
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
        let logits: Vec<f32> = (0..3 * 4 * 5).map(|v| ((v * 37 % 11) as f32 - 5.0) * 0.7).collect();
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
                let mean_square = (0..members).map(|i| q[i][k] * q[i][k]).sum::<f64>() / members as f64;
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
    fn random_ensemble(members: usize, classes: usize, pixels: usize, seed: u64, scale: f32) -> (Vec<f32>, Vec<f32>) {
        let logits = random_values(members * classes * pixels, seed, scale);
        let temperatures = (0..members).map(|i| 0.5 + 0.37 * i as f32).collect();
        (logits, temperatures)
    }

    /// Every kernel this CPU can run (the baseline one and, where the CPU has them, the AVX2+FMA
    /// one) equals the per-pixel reference within 1e-6 on random logits ([`RANDOM_CASES`]).
    #[test]
    fn every_kernel_equals_per_pixel_reference_on_random_logits() {
        for (members, classes, width, height, seed) in RANDOM_CASES {
            let pixels = width * height;
            let (logits, temperatures) = random_ensemble(members, classes, pixels, seed, 12.0);
            let mut expected = Fused::new(width, height, classes);
            reference_fuse(&logits, members, &temperatures, &mut expected);
            for (kernel, fused) in every_kernel(&logits, members, &temperatures, width, height, classes) {
                let case = format!("{kernel} kernel, M={members} K={classes} {width}x{height}");
                assert_close_to_reference(&case, &fused, &expected);
            }
        }
    }

    /// The maps of each kernel this CPU can run, by name.
    fn every_kernel(
        logits: &[f32],
        members: usize,
        temperatures: &[f32],
        width: usize,
        height: usize,
        classes: usize,
    ) -> Vec<(&'static str, Fused)> {
        let pixels = width * height;
        let mut baseline = Fused::new(width, height, classes);
        fuse_chunks_baseline(logits, members, temperatures, pixels, OutRange::whole(&mut baseline));
        #[allow(unused_mut)]
        let mut kernels = vec![("baseline", baseline)];
        #[cfg(target_arch = "x86_64")]
        if avx2_fma_detected() {
            let mut wide = Fused::new(width, height, classes);
            // SAFETY: AVX2 and FMA were just detected on this CPU.
            unsafe { fuse_chunks_avx2_fma(logits, members, temperatures, pixels, OutRange::whole(&mut wide)) };
            kernels.push(("AVX2+FMA", wide));
        }
        kernels
    }

    fn assert_close_to_reference(case: &str, fused: &Fused, expected: &Fused) {
        let pixels = fused.pixels();
        for (index, (a, b)) in fused.probabilities.iter().zip(&expected.probabilities).enumerate() {
            assert!(close(*a, *b, 1e-6), "{case}: probability {index}: {a} vs {b}");
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
                assert!(close(other, expected.confidence[p], 1e-6), "{case}: mask at {p}");
            }
        }
        // Not trivially close: each pixel's probabilities sum to 1.
        for p in 0..pixels {
            let total: f32 = (0..fused.classes).map(|k| fused.probabilities[k * pixels + p]).sum();
            assert!(close(total, 1.0, 1e-5), "{case}: probabilities at {p} sum to {total}");
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

    /// `fuse` takes the fastest kernel this CPU runs: bit for bit the AVX2+FMA kernel's maps where
    /// the CPU has AVX2 and FMA, else the baseline kernel's. The two kernels differ only in
    /// rounding (one rounding per fused multiply-add instead of two), within 1e-6 of each other
    /// even on logits of ±30.
    #[test]
    fn fuse_takes_the_fastest_kernel_and_kernels_agree() {
        for (members, classes, width, height, seed) in RANDOM_CASES {
            let pixels = width * height;
            let (logits, temperatures) = random_ensemble(members, classes, pixels, seed, 30.0);
            let case = format!("M={members} K={classes} {width}x{height}");
            let mut dispatched = Fused::new(width, height, classes);
            fuse(&logits, members, &temperatures, &mut dispatched);
            let kernels = every_kernel(&logits, members, &temperatures, width, height, classes);
            let (fastest, fastest_maps) = kernels.last().expect("the baseline kernel");
            assert!(
                fused_bits(&dispatched) == fused_bits(fastest_maps),
                "{case}: fuse did not take the {fastest} kernel"
            );
            let (_, baseline) = &kernels[0];
            assert_close_to_reference(&case, &dispatched, baseline);
        }
    }

    /// Fusing the pixels split into ranges on several threads gives the same bits as fusing them
    /// in one range on one thread, for range counts that do and do not divide the pixels evenly.
    #[test]
    fn split_ranges_are_bit_identical_to_one_range() {
        let (members, classes, width, height) = (3, 6, 300, 250);
        let pixels = width * height;
        assert!(pixels >= 4 * MIN_RANGE_PIXELS, "the map must be large enough to split");
        let (logits, temperatures) = random_ensemble(members, classes, pixels, 7, 30.0);
        let mut one_range = Fused::new(width, height, classes);
        fuse_range(&logits, members, &temperatures, pixels, OutRange::whole(&mut one_range));
        for ranges in [2, 3, 4] {
            let mut split = Fused::new(width, height, classes);
            fuse_in_ranges(
                &logits,
                members,
                &temperatures,
                pixels,
                OutRange::whole(&mut split),
                ranges,
            );
            assert!(
                fused_bits(&split) == fused_bits(&one_range),
                "{ranges} ranges differ from one"
            );
        }
        // Not trivially equal: the maps were written.
        assert!(one_range.confidence.iter().all(|&c| c >= 1.0 / classes as f32 - 1e-6));
    }

    /// The vectorisable `2^x` is within 2e-7 (relative) of f64 `exp2` over the softmax's range.
    #[test]
    fn exp2_nonpositive_matches_exp2() {
        fn check<const FMA: bool>() {
            for step in 0..=1_270_000 {
                let x = -(step as f32) * 1e-4;
                let expected = (x as f64).exp2();
                let got = exp2_nonpositive::<FMA>(x) as f64;
                if x > -126.0 {
                    assert!(
                        ((got - expected) / expected).abs() < 2e-7,
                        "2^{x} = {got}, expected {expected} (FMA {FMA})"
                    );
                } else {
                    assert!(got < 1.2e-38, "2^{x} = {got}");
                }
            }
            assert_eq!(exp2_nonpositive::<FMA>(0.0), 1.0);
            assert_eq!(exp2_nonpositive::<FMA>(-1.0), 0.5);
            assert_eq!(exp2_nonpositive::<FMA>(-10.0), 1.0 / 1024.0);
        }
        check::<false>();
        check::<true>();
    }
}
