//! `[layer_classifier]`: what the layer-level classification head may change.

use anyhow::{bail, Result};
use serde::Deserialize;

/// `[layer_classifier]`: a layer that the model's classification head calls defective while the
/// segmentation finds no defect is REVIEW, not PASS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerClassifierConfig {
    /// The calibrated probability (0..1] of the most probable layer class from which the layer
    /// counts as defective.
    #[serde(default = "default_review_threshold")]
    pub review_threshold: f32,
}

impl Default for LayerClassifierConfig {
    fn default() -> Self {
        Self {
            review_threshold: default_review_threshold(),
        }
    }
}

fn default_review_threshold() -> f32 {
    0.5
}

impl LayerClassifierConfig {
    pub(super) fn check(&self) -> Result<()> {
        let review_threshold = self.review_threshold;
        if !(review_threshold > 0.0 && review_threshold <= 1.0) {
            bail!("layer_classifier.review_threshold must be in (0, 1], got {review_threshold}");
        }
        Ok(())
    }
}
