//! `[record]`: the per-layer images that `bedsight run` keeps.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::yes;

/// `[record]`: the per-layer images of `bedsight run` (raw, rectified, overlay, mask,
/// uncertainty), see docs/dashboard.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// false: no images are written.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The image folder; default: `images` in the state folder.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Past this many gigabytes the oldest PASS layers' images are deleted; other layers' never.
    #[serde(default = "default_max_gb")]
    pub max_gb: f64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            enabled: true,
            folder: None,
            max_gb: default_max_gb(),
        }
    }
}

fn default_max_gb() -> f64 {
    20.0
}

impl RecordConfig {
    pub(super) fn check(&self) -> Result<()> {
        if !(self.max_gb.is_finite() && self.max_gb > 0.0) {
            bail!("record.max_gb must be a number of gigabytes > 0, got {}", self.max_gb);
        }
        Ok(())
    }
}
