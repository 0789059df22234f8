//! `[frame_check]`: the limits of a frame the model must not judge (docs/frame-checks.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::share;

/// Limits for frames the model must not judge: black, over-exposed, frozen, and, against the
/// commissioning reference, blurred, low in contrast or from a camera that moved; and a bed that
/// something covers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameCheckConfig {
    /// A frame whose mean brightness (0..255) is below this is black: FAULT.
    #[serde(default = "default_min_mean")]
    pub min_mean_brightness: f64,
    /// A frame with more than this share of saturated pixels is over-exposed: FAULT.
    #[serde(default = "default_max_saturated")]
    pub max_saturated_share: f64,
    /// FAULT once a frame is the last judged layer's bed again this many times in a row
    /// (0: never). One repeat is already a verdict on a bed the box judged before.
    #[serde(default = "default_frozen_after")]
    pub frozen_after: u32,
    /// Correlation of the frame's fine grain (pixel minus its 3x3 mean) with the last judged
    /// layer's above which it is that bed again: fresh powder shares little of its grain with
    /// the last layer (PBLM: under 0.05 mostly, 0.25 at most), the same bed all of it but the
    /// sensor noise (PBLM with fresh noise of sigma 2: mostly 0.6-0.9).
    #[serde(default = "default_frozen_min_correlation")]
    pub frozen_min_correlation: f64,
    /// The commissioning frame that `bedsight calibrate --frame-reference` wrote (relative paths
    /// are taken from the configuration file's folder). The sharpness, contrast and camera
    /// checks compare against it; without it they do not run.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// REVIEW when the bed's sharpness falls below this share of the reference's (fog, soot,
    /// focus). Needs `reference`; default 0.5 when it is set.
    #[serde(default)]
    pub min_sharpness_ratio: Option<f64>,
    /// REVIEW when the bed's contrast falls below this share of the reference's (fog, a fume
    /// cloud). Needs `reference`; default 0.5 when it is set.
    #[serde(default)]
    pub min_contrast_ratio: Option<f64>,
    /// FAULT when the bed's edges lie further than this from where the reference had them (a
    /// knocked camera). Needs `reference` and `bed.corners_px`; default 2 mm when both are set.
    #[serde(default)]
    pub max_camera_shift_mm: Option<f64>,
    /// What a covered bed gives: "review", "fault" or "off".
    #[serde(default = "default_occlusion")]
    pub occlusion: String,
    /// A cell of the bed darker than this share of the bed's median brightness is covered; a
    /// row or column of such cells across most of the bed is an object across it (the recoater).
    #[serde(default = "default_occlusion_dark_ratio")]
    pub occlusion_dark_ratio: f64,
    /// A cell of the bed with more than this share of saturated pixels is glare, spatter or the
    /// laser plume.
    #[serde(default = "default_occlusion_glare_share")]
    pub occlusion_glare_share: f64,
    /// With `trigger.kind = "video"`: how long to capture again for a clear bed before judging
    /// what is there (milliseconds, 0: judge at once).
    #[serde(default = "default_occlusion_wait_ms")]
    pub occlusion_wait_ms: u64,
}

/// What a covered bed gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcclusionAction {
    Review,
    Fault,
    Off,
}

/// The ratios and shift that apply when a reference is set and the file leaves them out.
pub const DEFAULT_MIN_SHARPNESS_RATIO: f64 = 0.5;
pub const DEFAULT_MIN_CONTRAST_RATIO: f64 = 0.5;
pub const DEFAULT_MAX_CAMERA_SHIFT_MM: f64 = 2.0;

impl Default for FrameCheckConfig {
    fn default() -> Self {
        Self {
            min_mean_brightness: default_min_mean(),
            max_saturated_share: default_max_saturated(),
            frozen_after: default_frozen_after(),
            frozen_min_correlation: default_frozen_min_correlation(),
            reference: None,
            min_sharpness_ratio: None,
            min_contrast_ratio: None,
            max_camera_shift_mm: None,
            occlusion: default_occlusion(),
            occlusion_dark_ratio: default_occlusion_dark_ratio(),
            occlusion_glare_share: default_occlusion_glare_share(),
            occlusion_wait_ms: default_occlusion_wait_ms(),
        }
    }
}

fn default_min_mean() -> f64 {
    8.0
}

fn default_max_saturated() -> f64 {
    0.25
}

fn default_frozen_after() -> u32 {
    1
}

fn default_frozen_min_correlation() -> f64 {
    0.4
}

fn default_occlusion() -> String {
    "review".into()
}

fn default_occlusion_dark_ratio() -> f64 {
    0.4
}

fn default_occlusion_glare_share() -> f64 {
    0.3
}

fn default_occlusion_wait_ms() -> u64 {
    2000
}

impl FrameCheckConfig {
    pub fn occlusion_action(&self) -> OcclusionAction {
        match self.occlusion.as_str() {
            "fault" => OcclusionAction::Fault,
            "off" => OcclusionAction::Off,
            _ => OcclusionAction::Review,
        }
    }

    /// The sharpness ratio in force: none without a reference.
    pub fn sharpness_ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .map(|_| self.min_sharpness_ratio.unwrap_or(DEFAULT_MIN_SHARPNESS_RATIO))
    }

    /// The contrast ratio in force: none without a reference.
    pub fn contrast_ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .map(|_| self.min_contrast_ratio.unwrap_or(DEFAULT_MIN_CONTRAST_RATIO))
    }

    /// The camera shift limit in force: none without a reference or without bed corners.
    pub fn camera_shift_mm(&self, has_corners: bool) -> Option<f64> {
        (self.reference.is_some() && has_corners)
            .then(|| self.max_camera_shift_mm.unwrap_or(DEFAULT_MAX_CAMERA_SHIFT_MM))
    }

    /// Which checks run, for `bedsight run` to say at start.
    pub fn summary(&self, has_corners: bool) -> String {
        let mut on = vec!["format", "black", "over_exposed"];
        let mut off = Vec::new();
        let mut push = |running: bool, name| if running { on.push(name) } else { off.push(name) };
        push(self.frozen_after > 0, "frozen");
        push(self.camera_shift_mm(has_corners).is_some(), "camera_moved");
        push(self.sharpness_ratio().is_some(), "blurred");
        push(self.contrast_ratio().is_some(), "low_contrast");
        push(self.occlusion_action() != OcclusionAction::Off, "occluded");
        let mut text = format!("frame checks: {} on", on.join(", "));
        if !off.is_empty() {
            text.push_str(&format!("; {} off", off.join(", ")));
        }
        if self.reference.is_none() {
            text.push_str(" (no frame_check.reference: capture one with `bedsight calibrate --frame-reference`)");
        } else if !has_corners {
            text.push_str(" (camera_moved needs bed.corners_px)");
        }
        text
    }

    pub(super) fn check(&self, has_corners: bool) -> Result<()> {
        share("frame_check.max_saturated_share", self.max_saturated_share)?;
        if !(0.0..255.0).contains(&self.min_mean_brightness) {
            bail!(
                "frame_check.min_mean_brightness must be in 0..255, got {}",
                self.min_mean_brightness
            );
        }
        if !(self.frozen_min_correlation > 0.0 && self.frozen_min_correlation < 1.0) {
            bail!(
                "frame_check.frozen_min_correlation must be between 0 and 1, got {}",
                self.frozen_min_correlation
            );
        }
        let capture = "capture one with `bedsight calibrate --config FILE --frame FRAME --frame-reference` \
                       and set frame_check.reference";
        for (key, value) in [
            ("min_sharpness_ratio", self.min_sharpness_ratio),
            ("min_contrast_ratio", self.min_contrast_ratio),
        ] {
            if let Some(ratio) = value {
                if self.reference.is_none() {
                    bail!("frame_check.{key} compares with the commissioning reference, and frame_check.reference is not set: {capture}");
                }
                if !(ratio > 0.0 && ratio < 1.0) {
                    bail!("frame_check.{key} must be between 0 and 1, got {ratio}");
                }
            }
        }
        if let Some(shift) = self.max_camera_shift_mm {
            if self.reference.is_none() {
                bail!("frame_check.max_camera_shift_mm compares with the commissioning reference, and frame_check.reference is not set: {capture}");
            }
            if !has_corners {
                bail!("frame_check.max_camera_shift_mm measures the bed's edges where bed.corners_px puts them, and bed.corners_px is not set: run `bedsight calibrate` to find them");
            }
            if !(shift.is_finite() && shift > 0.0) {
                bail!("frame_check.max_camera_shift_mm must be a number > 0, got {shift}");
            }
        }
        if !matches!(self.occlusion.as_str(), "review" | "fault" | "off") {
            bail!(
                "frame_check.occlusion must be \"review\", \"fault\" or \"off\", got {:?}",
                self.occlusion
            );
        }
        if !(self.occlusion_dark_ratio > 0.0 && self.occlusion_dark_ratio < 1.0) {
            bail!(
                "frame_check.occlusion_dark_ratio must be between 0 and 1, got {}",
                self.occlusion_dark_ratio
            );
        }
        if !(self.occlusion_glare_share > 0.0 && self.occlusion_glare_share <= 1.0) {
            bail!(
                "frame_check.occlusion_glare_share must be in (0, 1], got {}",
                self.occlusion_glare_share
            );
        }
        if self.occlusion_wait_ms > 60_000 {
            bail!(
                "frame_check.occlusion_wait_ms must be at most 60000, got {}",
                self.occlusion_wait_ms
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(tables: &str) -> anyhow::Result<Config> {
        Config::parse(
            &format!("[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n{tables}"),
            "test.toml",
        )
    }

    fn error(tables: &str) -> String {
        format!("{:#}", parse(tables).expect_err("refused"))
    }

    #[test]
    fn a_limit_that_needs_the_reference_without_one_names_the_key_and_the_command() {
        let message = error("[frame_check]\nmin_sharpness_ratio = 0.4\n");
        assert!(
            message.contains("frame_check.min_sharpness_ratio compares with the commissioning reference"),
            "{message}"
        );
        assert!(
            message.contains("bedsight calibrate --config FILE --frame FRAME --frame-reference"),
            "{message}"
        );
        let message = error("[frame_check]\nmax_camera_shift_mm = 1.0\n");
        assert!(
            message.contains("frame_check.max_camera_shift_mm compares with the commissioning reference"),
            "{message}"
        );
        let message = error("[frame_check]\nreference = \"ref.png\"\nmax_camera_shift_mm = 1.0\n");
        assert!(message.contains("and bed.corners_px is not set"), "{message}");
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        let message = error("[frame_check]\nfrozen_min_correlation = 1.5\n");
        assert!(
            message.contains("frame_check.frozen_min_correlation must be between 0 and 1, got 1.5"),
            "{message}"
        );
        let message = error("[frame_check]\nocclusion = \"pause\"\n");
        assert!(
            message.contains("frame_check.occlusion must be \"review\", \"fault\" or \"off\", got \"pause\""),
            "{message}"
        );
        let message = error("[frame_check]\nreference = \"ref.png\"\nmin_contrast_ratio = 0.0\n");
        assert!(
            message.contains("frame_check.min_contrast_ratio must be between 0 and 1, got 0"),
            "{message}"
        );
    }

    #[test]
    fn without_the_table_or_the_reference_the_checks_that_need_none_run() {
        let config = parse("").unwrap();
        let checks = &config.frame_check;
        assert_eq!((checks.frozen_after, checks.occlusion.as_str()), (1, "review"));
        assert_eq!(
            (
                checks.sharpness_ratio(),
                checks.contrast_ratio(),
                checks.camera_shift_mm(true)
            ),
            (None, None, None)
        );
        assert_eq!(
            checks.summary(false),
            "frame checks: format, black, over_exposed, frozen, occluded on; camera_moved, blurred, low_contrast off \
             (no frame_check.reference: capture one with `bedsight calibrate --frame-reference`)"
        );
        // a reference turns them on with the documented defaults
        let config = parse("[frame_check]\nreference = \"ref.png\"\n").unwrap();
        let checks = &config.frame_check;
        assert_eq!(
            (checks.sharpness_ratio(), checks.contrast_ratio()),
            (Some(0.5), Some(0.5))
        );
        assert_eq!(
            (checks.camera_shift_mm(true), checks.camera_shift_mm(false)),
            (Some(2.0), None)
        );
    }
}
