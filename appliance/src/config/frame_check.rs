//! `[frame_check]`: the limits of a frame the model must not judge.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::share;

/// Limits for frames the model must not judge (black, over-exposed, frozen).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameCheckConfig {
    /// A frame whose mean brightness (0..255) is below this is black: FAULT.
    #[serde(default = "default_min_mean")]
    pub min_mean_brightness: f64,
    /// A frame with more than this share of saturated pixels is over-exposed: FAULT.
    #[serde(default = "default_max_saturated")]
    pub max_saturated_share: f64,
}

impl Default for FrameCheckConfig {
    fn default() -> Self {
        Self {
            min_mean_brightness: default_min_mean(),
            max_saturated_share: default_max_saturated(),
        }
    }
}

fn default_min_mean() -> f64 {
    8.0
}

fn default_max_saturated() -> f64 {
    0.25
}

impl FrameCheckConfig {
    pub(super) fn check(&self) -> Result<()> {
        share("frame_check.max_saturated_share", self.max_saturated_share)?;
        if !(0.0..255.0).contains(&self.min_mean_brightness) {
            bail!(
                "frame_check.min_mean_brightness must be in 0..255, got {}",
                self.min_mean_brightness
            );
        }
        Ok(())
    }
}
