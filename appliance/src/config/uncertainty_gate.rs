//! `[uncertainty_gate]`: REVIEW when the ensemble is unsure inside the defects it found.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::share;

/// Turns a decision into REVIEW when the model is unsure inside the defects it found.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UncertaintyGate {
    /// A pixel is high-uncertainty when its ensemble variance (seed 000 Eq. 13, summed over
    /// classes) is above this.
    #[serde(default = "default_pixel_threshold")]
    pub pixel_threshold: f32,
    /// The share (0..1) of high-uncertainty pixels inside defects above which the verdict is REVIEW.
    #[serde(default = "default_max_share")]
    pub max_share: f64,
}

impl Default for UncertaintyGate {
    fn default() -> Self {
        Self {
            pixel_threshold: default_pixel_threshold(),
            max_share: default_max_share(),
        }
    }
}

fn default_pixel_threshold() -> f32 {
    0.01
}

fn default_max_share() -> f64 {
    0.5
}

impl UncertaintyGate {
    pub(super) fn check(&self) -> Result<()> {
        share("uncertainty_gate.max_share", self.max_share)?;
        let threshold = self.pixel_threshold;
        // The variance of probabilities summed over classes is at most 1 - 1/K < 1.
        if !(threshold.is_finite() && threshold > 0.0 && threshold < 1.0) {
            bail!("uncertainty_gate.pixel_threshold must be in (0, 1), got {threshold}");
        }
        Ok(())
    }
}
