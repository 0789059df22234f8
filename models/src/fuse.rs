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
/// Nothing is allocated.
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

    // Calibrated member probabilities of one pixel, q[i * K + k]; on the stack, so no allocation.
    let mut member_probabilities = [0.0f32; MAX_MEMBERS * MAX_CLASSES];
    let q = &mut member_probabilities[..members * classes];
    let inverse_members = 1.0 / members as f32;

    for p in 0..pixels {
        for (i, &temperature) in temperatures.iter().enumerate() {
            let member_logits = &logits[i * classes * pixels..(i + 1) * classes * pixels];
            let q_i = &mut q[i * classes..(i + 1) * classes];
            // seed 000, Eq. 20: softmax(z / T), shifted by the maximum for stability.
            let mut max_scaled = f32::NEG_INFINITY;
            for k in 0..classes {
                let scaled = member_logits[k * pixels + p] / temperature;
                q_i[k] = scaled;
                max_scaled = max_scaled.max(scaled);
            }
            let mut sum = 0.0f32;
            for value in q_i.iter_mut() {
                *value = (*value - max_scaled).exp();
                sum += *value;
            }
            let inverse_sum = 1.0 / sum;
            for value in q_i.iter_mut() {
                *value *= inverse_sum;
            }
        }

        let mut best_class = 0usize;
        let mut best_probability = f32::NEG_INFINITY;
        let mut variance_sum = 0.0f32;
        for k in 0..classes {
            // seed 000, Eq. 21: y_k = (1/M) Σ_i softmax(z_i / T_i)_k
            let mut mean = 0.0f32;
            for i in 0..members {
                mean += q[i * classes + k];
            }
            mean *= inverse_members;
            // seed 000, Eq. 13: Var = E(y²) − [E(y)]², as the mean squared deviation.
            let mut squared_deviation = 0.0f32;
            for i in 0..members {
                let deviation = q[i * classes + k] - mean;
                squared_deviation += deviation * deviation;
            }
            variance_sum += squared_deviation * inverse_members;
            out.probabilities[k * pixels + p] = mean;
            // seed 000, Eq. 12: ŷ = argmax(y); strict `>` keeps the lower index on ties.
            if mean > best_probability {
                best_probability = mean;
                best_class = k;
            }
        }
        out.mask[p] = best_class as u8;
        out.confidence[p] = best_probability;
        out.uncertainty[p] = if members == 1 { 0.0 } else { variance_sum };
    }
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
}
