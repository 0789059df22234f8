//! `[rules.<class>]` and `[rules.<class>.track]`: the limits per class on a layer and on a
//! track across layers, and the verdict when one is passed.
//!
//! Rules cannot vanish: a file without `[rules]` takes the embedded configuration's rules, and
//! every defect class of the model needs a rule, or `verdict = "ignore"` said on purpose
//! (`Config::check_against_classes`); a rule that sets nothing is refused.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use hal::Verdict;
use serde::Deserialize;

/// `[rules.<class>.track]`: limits on a track of this class; any limit passed gives `verdict`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackRule {
    /// The track spans more than this many layers (first to last, inclusive).
    #[serde(default)]
    pub max_layers: Option<u32>,
    /// The track's area grows faster than this (least-squares slope over its kept areas, from
    /// its third layer on).
    #[serde(default)]
    pub max_growth_mm2_per_layer: Option<f64>,
    /// The track's defect is still there when its layer is inspected again after a RECOAT.
    #[serde(default)]
    pub after_recoat: bool,
    /// RECOAT, REVIEW or PAUSE.
    pub verdict: String,
    /// Said with the verdict (stdout, journal), e.g. "recoater blade damage suspected".
    #[serde(default)]
    pub message: Option<String>,
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
    /// What the PLC is told when a limit is passed: RECOAT, REVIEW or PAUSE (needed when a
    /// limit is set); or `ignore`, with no limit: this class never decides a layer.
    #[serde(default)]
    pub verdict: Option<String>,
    /// Rules on the tracks of this class across layers.
    #[serde(default)]
    pub track: Option<TrackRule>,
}

impl ClassRule {
    /// `verdict = "ignore"`: the configuration lets this class through on purpose.
    pub fn is_ignore(&self) -> bool {
        self.verdict.as_deref() == Some("ignore")
    }

    /// The per-layer verdict (checked at load when a limit is set).
    pub fn layer_verdict(&self) -> Verdict {
        self.verdict
            .as_deref()
            .and_then(Verdict::parse)
            .unwrap_or(Verdict::Pass)
    }
}

/// The embedded configuration's rules, for a file without `[rules]`.
pub(super) fn embedded() -> BTreeMap<String, ClassRule> {
    super::Config::embedded().rules
}

/// Checks every class's rule; the class names are checked against the model later
/// (`Config::check_against_classes`).
pub(super) fn check(rules: &BTreeMap<String, ClassRule>) -> Result<()> {
    for (class, rule) in rules {
        for (key, value) in [
            ("max_total_area_mm2", rule.max_total_area_mm2),
            ("max_largest_area_mm2", rule.max_largest_area_mm2),
        ] {
            if let Some(value) = value {
                if !(value.is_finite() && value >= 0.0) {
                    bail!("rules.{class}.{key} must be a number >= 0, got {value}");
                }
            }
        }
        let has_limit =
            rule.max_total_area_mm2.is_some() || rule.max_largest_area_mm2.is_some() || rule.max_count.is_some();
        if rule.is_ignore() {
            if has_limit || rule.track.is_some() {
                bail!("rules.{class}.verdict = \"ignore\" takes no limit and no track: remove them, or give a verdict");
            }
            continue;
        }
        match rule.verdict.as_deref().map(Verdict::parse) {
            Some(Some(Verdict::Recoat | Verdict::Review | Verdict::Pause)) => {}
            None if !has_limit && rule.track.is_some() => {}
            None if !has_limit => bail!(
                "rules.{class} sets nothing: give a limit and a verdict, or verdict = \"ignore\" to let {class} through"
            ),
            None => bail!("rules.{class}.verdict is missing: say RECOAT, REVIEW or PAUSE for when a limit is passed"),
            Some(_) => bail!(
                "rules.{class}.verdict must be RECOAT, REVIEW, PAUSE or ignore, got {:?}",
                rule.verdict.as_deref().unwrap_or_default()
            ),
        }
        if let Some(track) = &rule.track {
            track.check(class)?;
        }
    }
    Ok(())
}

impl TrackRule {
    fn check(&self, class: &str) -> Result<()> {
        if let Some(value) = self.max_growth_mm2_per_layer {
            if !(value.is_finite() && value >= 0.0) {
                bail!("rules.{class}.track.max_growth_mm2_per_layer must be a number >= 0, got {value}");
            }
        }
        if self.max_layers == Some(0) {
            bail!("rules.{class}.track.max_layers must be at least 1");
        }
        match Verdict::parse(&self.verdict) {
            Some(Verdict::Recoat | Verdict::Review | Verdict::Pause) => {}
            _ => bail!(
                "rules.{class}.track.verdict must be RECOAT, REVIEW or PAUSE, got {:?}",
                self.verdict
            ),
        }
        if self.max_layers.is_none() && self.max_growth_mm2_per_layer.is_none() && !self.after_recoat {
            bail!(
                "rules.{class}.track sets no limit: give max_layers, max_growth_mm2_per_layer or after_recoat = true"
            );
        }
        Ok(())
    }
}
