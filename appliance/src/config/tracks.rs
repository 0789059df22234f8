//! `[tracks]`: the build-long defect map and how defects are followed across layers.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::BedConfig;

/// `[tracks]`: the build-long defect map and the tracks of defects across layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracksConfig {
    /// Two footprints (bounding boxes in bed millimetres) of one class on consecutive layers are
    /// one track when their intersection over union is at least this.
    #[serde(default = "default_min_iou")]
    pub min_iou: f64,
    /// Layers a track may miss and still go on (0: strictly consecutive layers).
    #[serde(default)]
    pub max_gap_layers: u32,
    /// The defect map's cell size in millimetres.
    #[serde(default = "default_cell_mm")]
    pub cell_mm: f64,
    /// Classes that run along the recoater's travel (a streak dragged by the blade): matched by
    /// their overlap along the blade (y) alone, however far along x they start. Absent: the
    /// model's classes among DEFAULT_ALONG_BLADE.
    #[serde(default)]
    pub along_blade: Option<Vec<String>>,
}

/// The classes matched along the blade when `tracks.along_blade` is not set.
pub const DEFAULT_ALONG_BLADE: [&str; 1] = ["streaking"];

impl Default for TracksConfig {
    fn default() -> Self {
        Self {
            min_iou: default_min_iou(),
            max_gap_layers: 0,
            cell_mm: default_cell_mm(),
            along_blade: None,
        }
    }
}

fn default_min_iou() -> f64 {
    0.3
}

fn default_cell_mm() -> f64 {
    5.0
}

impl TracksConfig {
    /// Whether `class` is matched by its overlap along the blade.
    pub fn along_blade(&self, class: &str) -> bool {
        match &self.along_blade {
            Some(classes) => classes.iter().any(|c| c == class),
            None => DEFAULT_ALONG_BLADE.contains(&class),
        }
    }

    pub(super) fn check(&self, bed: &BedConfig) -> Result<()> {
        if !(self.min_iou.is_finite() && self.min_iou > 0.0 && self.min_iou <= 1.0) {
            bail!("tracks.min_iou must be in (0, 1], got {}", self.min_iou);
        }
        if self.max_gap_layers > 100 {
            bail!("tracks.max_gap_layers must be at most 100, got {}", self.max_gap_layers);
        }
        // The map holds (bed / cell)² cells per class: keep it to a few MiB.
        let cells = (bed.width_mm / self.cell_mm).ceil() * (bed.height_mm / self.cell_mm).ceil();
        if !(self.cell_mm.is_finite() && self.cell_mm > 0.0) || cells > crate::judge::defect_map::MAX_CELLS as f64 {
            bail!(
                "tracks.cell_mm must be > 0 and give at most {} cells on the bed, got {}",
                crate::judge::defect_map::MAX_CELLS,
                self.cell_mm
            );
        }
        Ok(())
    }
}
