//! The appliance's configuration file (TOML): the bed, the model, refinement, the decision rules.
//! Every key is checked: an unknown key or an out-of-range value is one error naming the file
//! and the key, before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hal::Verdict;
use serde::Deserialize;

/// The configuration that ships inside the binary; `bedsight demo` and `analyze` use it when no
/// `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../assets/bedsight.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bed: BedConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub refine: RefineConfig,
    #[serde(default)]
    pub frame_check: FrameCheckConfig,
    #[serde(default)]
    pub uncertainty_gate: UncertaintyGate,
    #[serde(default)]
    pub recoat: RecoatConfig,
    /// Per-class rules, keyed by the class name of the model image.
    #[serde(default)]
    pub rules: BTreeMap<String, ClassRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedConfig {
    pub width_mm: f64,
    pub height_mm: f64,
    /// The bed's corners in camera pixels: top-left, top-right, bottom-right, bottom-left (as
    /// seen with the recoater travelling left to right). Absent when frames are already the bed.
    #[serde(default)]
    pub corners_px: Option<[[f32; 2]; 4]>,
}

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
        Self { image: None, backend: default_backend(), prefer_fp32: false, min_defect_area_px: default_min_defect_area_px() }
    }
}

fn default_backend() -> String {
    "auto".into()
}

fn default_min_defect_area_px() -> u32 {
    6
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    /// The classes seed 000's Algorithm 2 may relabel high-uncertainty regions to (paper: lattice).
    #[serde(default = "default_refine_classes")]
    pub classes: Vec<String>,
}

impl Default for RefineConfig {
    fn default() -> Self {
        Self { classes: default_refine_classes() }
    }
}

fn default_refine_classes() -> Vec<String> {
    vec!["lattice".into()]
}

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
        Self { min_mean_brightness: default_min_mean(), max_saturated_share: default_max_saturated() }
    }
}

fn default_min_mean() -> f64 {
    8.0
}

fn default_max_saturated() -> f64 {
    0.25
}

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
        Self { pixel_threshold: default_pixel_threshold(), max_share: default_max_share() }
    }
}

fn default_pixel_threshold() -> f32 {
    0.01
}

fn default_max_share() -> f64 {
    0.5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoatConfig {
    /// How many times one layer may be spread again before RECOAT becomes PAUSE.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

impl Default for RecoatConfig {
    fn default() -> Self {
        Self { max_retries: default_max_retries() }
    }
}

fn default_max_retries() -> u32 {
    2
}

/// The limits for one class; any limit passed trips the rule and gives its verdict.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassRule {
    /// Sum of this class's defect areas on the layer.
    #[serde(default)]
    pub max_total_area_mm2: Option<f64>,
    /// The largest single defect of this class.
    #[serde(default)]
    pub max_largest_area_mm2: Option<f64>,
    /// How many defects of this class.
    #[serde(default)]
    pub max_count: Option<u32>,
    /// What the PLC is told when a limit is passed: RECOAT, REVIEW or PAUSE.
    pub verdict: String,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("configuration {}: cannot read it", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The configuration embedded in the binary.
    pub fn embedded() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "embedded bedsight.toml").expect("the embedded configuration is valid")
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("configuration {origin}: {}", e.to_string().trim()))?;
        config.check().with_context(|| format!("configuration {origin}"))?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        positive("bed.width_mm", self.bed.width_mm)?;
        positive("bed.height_mm", self.bed.height_mm)?;
        if let Some(corners) = &self.bed.corners_px {
            if corners.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                bail!("bed.corners_px must be four [x, y] pixel positions, each finite and >= 0");
            }
        }
        parse_backend(&self.model.backend).context("model.backend")?;
        share("frame_check.max_saturated_share", self.frame_check.max_saturated_share)?;
        if !(0.0..255.0).contains(&self.frame_check.min_mean_brightness) {
            bail!("frame_check.min_mean_brightness must be in 0..255, got {}", self.frame_check.min_mean_brightness);
        }
        share("uncertainty_gate.max_share", self.uncertainty_gate.max_share)?;
        let threshold = self.uncertainty_gate.pixel_threshold;
        // The variance of probabilities summed over classes is at most 1 - 1/K < 1.
        if !(threshold.is_finite() && threshold > 0.0 && threshold < 1.0) {
            bail!("uncertainty_gate.pixel_threshold must be in (0, 1), got {threshold}");
        }
        if self.recoat.max_retries > 100 {
            bail!("recoat.max_retries must be at most 100, got {}", self.recoat.max_retries);
        }
        for (class, rule) in &self.rules {
            for (key, value) in [("max_total_area_mm2", rule.max_total_area_mm2), ("max_largest_area_mm2", rule.max_largest_area_mm2)] {
                if let Some(value) = value {
                    if !(value.is_finite() && value >= 0.0) {
                        bail!("rules.{class}.{key} must be a number >= 0, got {value}");
                    }
                }
            }
            match Verdict::parse(&rule.verdict) {
                Some(Verdict::Recoat | Verdict::Review | Verdict::Pause) => {}
                _ => bail!("rules.{class}.verdict must be RECOAT, REVIEW or PAUSE, got {:?}", rule.verdict),
            }
        }
        Ok(())
    }

    /// Checks the names in the configuration against the classes of the model it will run.
    pub fn check_against_classes(&self, class_names: &[String], origin: &str) -> Result<()> {
        let known = class_names.join(", ");
        for class in self.rules.keys() {
            if !class_names.contains(class) {
                bail!("configuration {origin}: rules.{class}: the model has no class {class:?} (it has: {known})");
            }
        }
        for class in &self.refine.classes {
            if !class_names.contains(class) {
                bail!("configuration {origin}: refine.classes: the model has no class {class:?} (it has: {known})");
            }
        }
        Ok(())
    }

    pub fn backend_choice(&self) -> models::BackendChoice {
        parse_backend(&self.model.backend).expect("checked at load")
    }
}

pub fn parse_backend(word: &str) -> Result<models::BackendChoice> {
    match word {
        "auto" => Ok(models::BackendChoice::Auto),
        "ort" => Ok(models::BackendChoice::Ort),
        "tract" => Ok(models::BackendChoice::Tract),
        other => bail!("unknown backend {other:?}: use auto, ort or tract"),
    }
}

fn positive(key: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        bail!("{key} must be a number > 0, got {value}")
    }
}

fn share(key: &str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        bail!("{key} must be in 0..1, got {value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_configuration_is_valid() {
        let config = Config::embedded();
        assert!(config.bed.width_mm > 0.0);
        assert_eq!(config.refine.classes, vec!["lattice".to_string()]);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = Config::parse("[bed]\nwidth_mm = 250\nheight_mm = 250\nwidht = 3\n", "test.toml").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("test.toml") && message.contains("widht"), "{message}");
    }

    #[test]
    fn out_of_range_thresholds_are_named() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        let cases = [
            ("[uncertainty_gate]\nmax_share = 1.5\n", "uncertainty_gate.max_share"),
            ("[rules.streaking]\nmax_total_area_mm2 = -1\nverdict = \"RECOAT\"\n", "rules.streaking.max_total_area_mm2"),
            ("[rules.streaking]\nmax_count = 1\nverdict = \"PASS\"\n", "rules.streaking.verdict"),
            ("[model]\nbackend = \"gpu\"\n", "model.backend"),
        ];
        for (extra, key) in cases {
            let message = format!("{:#}", Config::parse(&format!("{base}{extra}"), "test.toml").unwrap_err());
            assert!(message.contains("test.toml") && message.contains(key), "{key}: {message}");
        }
        let message = format!("{:#}", Config::parse("[bed]\nwidth_mm = 0\nheight_mm = 250\n", "test.toml").unwrap_err());
        assert!(message.contains("bed.width_mm"), "{message}");
    }

    #[test]
    fn rule_classes_must_exist_in_the_model() {
        let config = Config::parse("[bed]\nwidth_mm = 250\nheight_mm = 250\n[rules.porosity]\nmax_count = 0\nverdict = \"PAUSE\"\n", "t.toml").unwrap();
        let classes = vec!["background".to_string(), "lattice".to_string()];
        let message = config.check_against_classes(&classes, "t.toml").unwrap_err().to_string();
        assert!(message.contains("porosity") && message.contains("background, lattice"), "{message}");
    }
}
