//! The layer-level classification head's logits to calibrated probabilities.
//!
//! The head is multi-label: each layer class is its own yes/no question, so each logit goes
//! through its own sigmoid after temperature scaling (Guo et al. 2017, the one-parameter Platt
//! scaling that seed 000 Eq. 20 applies to the segmentation members): `p_l = 1 / (1 + e^(-z_l/T))`.

/// Writes `sigmoid(z_l / temperature)` for every logit into `probabilities` (same length).
pub fn layer_probabilities(logits: &[f32], temperature: f32, probabilities: &mut [f32]) {
    debug_assert_eq!(logits.len(), probabilities.len());
    for (p, &z) in probabilities.iter_mut().zip(logits) {
        *p = 1.0 / (1.0 + (-z / temperature).exp());
    }
}

/// The most probable layer class and its probability, or `None` for an empty head.
pub fn most_probable(probabilities: &[f32]) -> Option<(usize, f32)> {
    probabilities
        .iter()
        .copied()
        .enumerate()
        .fold(None, |best, (l, p)| match best {
            Some((_, best_p)) if best_p >= p => best,
            _ => Some((l, p)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_scaled_sigmoid_by_hand() {
        let mut p = [0.0f32; 3];
        layer_probabilities(&[0.0, 2.0, -4.0], 2.0, &mut p);
        // sigmoid(0) = 0.5; sigmoid(1) = 0.7310586; sigmoid(-2) = 0.1192029.
        assert!((p[0] - 0.5).abs() < 1e-6);
        assert!((p[1] - 0.731_058_6).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.119_202_9).abs() < 1e-6, "{p:?}");
        assert_eq!(most_probable(&p), Some((1, p[1])));
        assert_eq!(most_probable(&[]), None);
    }
}
