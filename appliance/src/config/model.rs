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
    /// Components smaller than this are noise, not defects.
    #[serde(default = "default_min_defect_area_px")]
    pub min_defect_area_px: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            image: None,
            backend: default_backend(),
            precision: default_precision(),
            min_defect_area_px: default_min_defect_area_px(),
        }
    }
}

fn default_backend() -> String {
    "auto".into()
}

fn default_precision() -> String {
    "auto".into()
}

fn default_min_defect_area_px() -> u32 {
    6
}

impl ModelConfig {
    pub(super) fn check(&self) -> Result<()> {
        parse_backend(&self.backend).context("model.backend")?;
        parse_precision(&self.precision).context("model.precision")?;
        Ok(())
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
