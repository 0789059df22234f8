//! The domain check: is this layer like the layers the model learned from?
//!
//! A model image of format 1.2 carries a `[domain]` table (quantize/bedsight_train/domain.py fits
//! it): the mean and inverse covariance of the training layers' `features` (the graph's third
//! output, the shared trunk's encoder features averaged over the bed) and a threshold, a quantile
//! of validation layers' scores. Each layer's score is
//!
//! ```text
//! score = sqrt((f - mean)^T inverse_covariance (f - mean) / D)
//! ```
//!
//! and a layer scoring above the threshold is unfamiliar: the model is outside its ground, and
//! the box asks a person (REVIEW) rather than acting on what the model says (`decide::apply_domain`).
//! Format 1.4 may name groups of training layers (the synthetic set, each real label folder), each
//! with its own mean under the one covariance; the score is then the smallest over the groups'
//! means (Lee et al., NeurIPS 2018: class-conditional Gaussians with a tied covariance), so a
//! camera's clean beds, few among the training layers, are not unfamiliar for being few.

use images::DomainTable;
use serde::Serialize;

/// One layer's domain score against the model's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DomainFinding {
    pub score: f64,
    pub threshold: f64,
    /// `score <= threshold`; a score that is not a number (features that are not) is unfamiliar.
    pub familiar: bool,
}

/// The statistics of a `[domain]` table, with the scratch vector of one layer.
#[derive(Debug, Clone)]
pub struct DomainCheck {
    /// The centres the score is measured from, D values each: the groups' means, or the mean.
    means: Vec<Vec<f64>>,
    /// D x D, row by row.
    inverse_covariance: Vec<f64>,
    threshold: f64,
    /// f - a centre for the current layer, kept between layers (no allocation per layer).
    centred: Vec<f64>,
}

impl DomainCheck {
    /// From a validated `[domain]` table.
    pub fn new(table: &DomainTable) -> DomainCheck {
        let widen = |values: &[f32]| values.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let means = if table.groups.is_empty() {
            vec![widen(&table.mean)]
        } else {
            table.groups.iter().map(|group| widen(&group.mean)).collect()
        };
        DomainCheck {
            means,
            inverse_covariance: widen(&table.inverse_covariance),
            threshold: table.threshold,
            centred: vec![0.0; table.feature_size],
        }
    }

    /// Scores one layer's features (D values: the backend's `features()`).
    pub fn assess(&mut self, features: &[f32]) -> DomainFinding {
        let d = self.centred.len();
        // features of the wrong length, or not numbers, are unfamiliar (and would make every
        // distance NaN, which `f64::min` drops)
        let score = if features.len() == d && features.iter().all(|f| f.is_finite()) {
            let mut nearest = f64::INFINITY;
            for mean in &self.means {
                for ((c, &f), &m) in self.centred.iter_mut().zip(features).zip(mean) {
                    *c = f64::from(f) - m;
                }
                let quadratic: f64 = self
                    .inverse_covariance
                    .chunks_exact(d)
                    .zip(&self.centred)
                    .map(|(row, &ci)| ci * row.iter().zip(&self.centred).map(|(a, cj)| a * cj).sum::<f64>())
                    .sum();
                nearest = nearest.min((quadratic / d as f64).sqrt());
            }
            nearest
        } else {
            f64::NAN
        };
        DomainFinding {
            score,
            threshold: self.threshold,
            familiar: score <= self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DomainTable {
        // two features, mean (1, 2), inverse covariance [[2, 1], [1, 2]], threshold 1.5
        DomainTable {
            feature_size: 2,
            mean: vec![1.0, 2.0],
            inverse_covariance: vec![2.0, 1.0, 1.0, 2.0],
            threshold: 1.5,
            threshold_quantile: 0.99,
            fit_layers: 100,
            validation_layers: 20,
            validation_scores: vec![0.5, 1.0, 1.5],
            groups: Vec::new(),
        }
    }

    #[test]
    fn the_score_is_the_mahalanobis_distance_per_feature() {
        let mut check = DomainCheck::new(&table());
        // f - mean = (1, 1): (1,1) [[2,1],[1,2]] (1,1)^T = 6; sqrt(6 / 2) = 1.732 > 1.5
        let far = check.assess(&[2.0, 3.0]);
        assert!((far.score - 3f64.sqrt()).abs() < 1e-12, "{far:?}");
        assert!(!far.familiar);
        // f - mean = (1, -1): 2 - 1 - 1 + 2 = 2; sqrt(2 / 2) = 1
        let near = check.assess(&[2.0, 1.0]);
        assert!((near.score - 1.0).abs() < 1e-12 && near.familiar, "{near:?}");
        assert_eq!(check.assess(&[1.0, 2.0]).score, 0.0);
    }

    #[test]
    fn features_that_are_not_numbers_or_the_wrong_length_are_unfamiliar() {
        let mut check = DomainCheck::new(&table());
        let nan = check.assess(&[f32::NAN, 2.0]);
        assert!(nan.score.is_nan() && !nan.familiar);
        assert!(!check.assess(&[1.0]).familiar);
    }

    #[test]
    fn with_groups_the_score_is_the_distance_to_the_nearest_groups_mean() {
        // the same covariance; centres (1, 2) and (5, 5)
        let mut grouped = table();
        grouped.groups = vec![
            images::DomainGroup {
                name: "synthetic".into(),
                layers: 90,
                mean: vec![1.0, 2.0],
            },
            images::DomainGroup {
                name: "real No_Defect".into(),
                layers: 10,
                mean: vec![5.0, 5.0],
            },
        ];
        let mut check = DomainCheck::new(&grouped);
        // f = (2, 3): (1, 1) from the first centre, score sqrt(3); (-3, -2) from the second:
        // 2*9 + 2*6 + 2*4 = 38, sqrt(19); the nearest is sqrt(3)
        let first = check.assess(&[2.0, 3.0]);
        assert!((first.score - 3f64.sqrt()).abs() < 1e-12, "{first:?}");
        // f = (5, 4): (4, 2) from the first: 2*16 + 2*8 + 2*4 = 56, sqrt(28); (0, -1) from the
        // second: 2, sqrt(1) = 1, familiar, though far from the first centre
        let second = check.assess(&[5.0, 4.0]);
        assert!((second.score - 1.0).abs() < 1e-12 && second.familiar, "{second:?}");
        let nan = check.assess(&[f32::NAN, 4.0]);
        assert!(nan.score.is_nan() && !nan.familiar);
    }
}
