//! `[bed]`: the bed's size and where its corners are in the camera frame.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::positive;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedConfig {
    pub width_mm: f64,
    pub height_mm: f64,
    /// The bed's corners in camera pixels: top-left, top-right, bottom-right, bottom-left (as
    /// seen with the recoater travelling left to right). Absent when frames are already the bed.
    #[serde(default)]
    pub corners_px: Option<[[f32; 2]; 4]>,
    /// The flat-field reference that `bedsight calibrate --flat-field` wrote (relative paths are
    /// taken from the configuration file's folder); absent: frames are judged as they come.
    #[serde(default)]
    pub flat_field: Option<PathBuf>,
}

impl BedConfig {
    pub(super) fn check(&self) -> Result<()> {
        positive("bed.width_mm", self.width_mm)?;
        positive("bed.height_mm", self.height_mm)?;
        if let Some(corners) = &self.corners_px {
            if corners.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                bail!("bed.corners_px must be four [x, y] pixel positions, each finite and >= 0");
            }
        }
        Ok(())
    }
}
