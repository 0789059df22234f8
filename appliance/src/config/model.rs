//! `[model]`: which model image, which backend, which graph, and the smallest defect.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A model image (.bsimg); absent means the one embedded in the binary.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// `auto` (ONNX Runtime where its library is found, else tract), `ort` or `tract`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Run the fp32 graph instead of the image's default (INT8) graph.
    #[serde(default)]
    pub prefer_fp32: bool,
    /// Components smaller than this are noise, not defects.
    #[serde(default = "default_min_defect_area_px")]
    pub min_defect_area_px: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            image: None,
            backend: default_backend(),
            prefer_fp32: false,
            min_defect_area_px: default_min_defect_area_px(),
        }
    }
}

fn default_backend() -> String {
    "auto".into()
}

fn default_min_defect_area_px() -> u32 {
    6
}

impl ModelConfig {
    pub(super) fn check(&self) -> Result<()> {
        parse_backend(&self.backend).context("model.backend")?;
        Ok(())
    }

    pub fn backend_choice(&self) -> models::BackendChoice {
        parse_backend(&self.backend).expect("checked at load")
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
