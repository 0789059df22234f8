//! `[model]`: which model image, which backend, which graph, and the smallest defect.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::model::Precision;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A model image (.bsimg); absent means the one embedded in the binary.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// `auto` (ONNX Runtime where its library is found, else tract), `ort` or `tract`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Which of the image's graphs runs: `auto` (INT8 where the execution provider runs it
    /// faster, TensorRT; fp32 on ONNX Runtime's CPU and CUDA providers and on tract, where INT8
    /// is slower: docs/performance.md), `int8` or `fp32`.
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Components smaller than this many square millimetres of bed are noise, not defects. In
    /// mm², not pixels: a pixel count changes meaning with the installed model's resolution
    /// (6 px is 5.7 mm² at 256x256 on a 250 mm bed, 0.36 mm² at 1024x1024).
    #[serde(default = "default_min_defect_area_mm2")]
    pub min_defect_area_mm2: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            image: None,
            backend: default_backend(),
            precision: default_precision(),
            min_defect_area_mm2: default_min_defect_area_mm2(),
        }
    }
}

fn default_backend() -> String {
    "auto".into()
}

fn default_precision() -> String {
    "auto".into()
}

fn default_min_defect_area_mm2() -> f64 {
    5.0
}

impl ModelConfig {
    pub(super) fn check(&self) -> Result<()> {
        parse_backend(&self.backend).context("model.backend")?;
        parse_precision(&self.precision).context("model.precision")?;
        let area = self.min_defect_area_mm2;
        if !(area.is_finite() && area >= 0.0) {
            bail!("model.min_defect_area_mm2 must be a number >= 0, got {area}");
        }
        Ok(())
    }

    /// The smallest component, in pixels of a mask whose pixel is `mm_per_px` wide, that is at
    /// least `min_defect_area_mm2`.
    pub fn min_defect_area_px(&self, mm_per_px: f64) -> u32 {
        let pixels = self.min_defect_area_mm2 / (mm_per_px * mm_per_px);
        // a limit of exactly k pixels' area is k pixels, not k + 1 from rounding
        (pixels - 1e-9).ceil().clamp(0.0, u32::MAX as f64) as u32
    }

    pub fn backend_choice(&self) -> models::BackendChoice {
        parse_backend(&self.backend).expect("checked at load")
    }

    pub fn precision(&self) -> Precision {
        parse_precision(&self.precision).expect("checked at load")
    }
}

/// `auto`, `ort` or `tract`, as the configuration and the command line spell them.
pub fn parse_backend(word: &str) -> Result<models::BackendChoice> {
    match word {
        "auto" => Ok(models::BackendChoice::Auto),
        "ort" => Ok(models::BackendChoice::Ort),
        "tract" => Ok(models::BackendChoice::Tract),
        other => bail!("unknown backend {other:?}: use auto, ort or tract"),
    }
}

/// `auto`, `int8` or `fp32`, as the configuration and the command line spell them.
pub fn parse_precision(word: &str) -> Result<Precision> {
    match word {
        "auto" => Ok(Precision::Auto),
        "int8" => Ok(Precision::Int8),
        "fp32" => Ok(Precision::Fp32),
        other => bail!("unknown precision {other:?}: use auto, int8 or fp32"),
    }
}
