//! `manifest.toml`: what the model is, how to feed its graph and how to read what it returns.
//! The fields are documented in `docs/model-image.md`; [`Manifest::parse`] is the only way a
//! manifest enters the program and checks everything that can be checked without the graph.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, Serializer};

use crate::archive::{
    is_listable_entry, ENTRY_FP32_GRAPH, ENTRY_INT8_GRAPH, ENTRY_SELFTEST_EXPECTED, ENTRY_SELFTEST_INPUT,
    ENTRY_TRAINING_WEIGHTS, MAX_MANIFEST_BYTES,
};
use crate::ImageError;

/// The major format version this build reads and writes. A manifest with another major
/// version is refused.
pub const FORMAT_MAJOR: u32 = 1;
/// The minor format version this build writes. A higher minor version of the same major is read.
pub const FORMAT_MINOR: u32 = 4;
/// The `format_version` string this build writes. 1.1 added the optional `[layer_head]`, 1.2 the
/// optional `[domain]`, 1.3 the optional `training/ensemble.pt` entry, 1.4 `[[domain.groups]]`.
pub const FORMAT_VERSION: &str = "1.4";

/// Input sizes the manifest may declare, in pixels, for width and height alike.
const INPUT_SIDE_PX: std::ops::RangeInclusive<u32> = 8..=8192;
/// The most ensemble members a manifest may declare (seed 000 uses a handful).
const MAX_MEMBERS: usize = 64;
/// The most classes a manifest may declare: masks hold 8-bit class indices.
const MAX_CLASSES: usize = 255;
/// The most layer-level classes a `[layer_head]` may declare.
const MAX_LAYER_CLASSES: usize = 64;
/// The most features a `[domain]` table may declare (its matrix is D x D numbers in TOML).
const MAX_DOMAIN_FEATURES: usize = 512;
/// The most groups a `[domain]` table may hold (the synthetic set and a few real folders).
const MAX_DOMAIN_GROUPS: usize = 64;
/// The longest name, version, architecture or class name, in bytes.
const MAX_LABEL_BYTES: usize = 128;

/// The parsed `manifest.toml` of a model image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// "major.minor"; see [`FORMAT_VERSION`].
    pub format_version: String,
    /// Model name, shown in verdicts and on the dashboard.
    pub name: String,
    /// Model version.
    pub version: String,
    /// The network, e.g. "isdnet-sr" or "am-segnet". Informational: nothing depends on it.
    pub architecture: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How to feed the graph.
    pub input: InputTable,
    /// The ensemble members and their temperatures.
    pub ensemble: EnsembleTable,
    /// The classes, in class-index order; index 0 is the background.
    pub classes: Vec<ClassEntry>,
    /// The layer-level classification head (format 1.1); absent in older images and in models
    /// trained without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_head: Option<LayerHeadTable>,
    /// The domain check (format 1.2): what the training layers' features look like; absent in
    /// older images, whose layers the box judges without one (and says so at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainTable>,
    /// Which graph to run; filled in by [`crate::pack`].
    #[serde(default, skip_serializing_if = "GraphsTable::is_empty")]
    pub graphs: GraphsTable,
    /// Entry name → lowercase hex sha256 of every file in the image; filled in by
    /// [`crate::pack`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Metrics the training tool measured (e.g. "miou", "ece_after").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub training: BTreeMap<String, f64>,
}

/// `[input]`: the tensor the graph takes, `[1, channels, height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTable {
    /// W, pixels.
    pub width: u32,
    /// H, pixels.
    pub height: u32,
    /// C: 1 (grey, ITU-R 601 luma) or 3 (RGB).
    pub channels: u32,
    /// Per-channel mean on the 0..1 scale; the graph sees `(x - mean[c]) / std[c]`.
    #[serde(serialize_with = "shortest_floats")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation on the 0..1 scale, each > 0.
    #[serde(serialize_with = "shortest_floats")]
    pub std: Vec<f32>,
}

/// `[ensemble]`: M heads on one trunk, each with its own temperature (seed 000 Eq. 14, 20-21).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleTable {
    /// M, the number of members the graph returns logits for.
    pub members: usize,
    /// T_1..T_M, each finite and > 0.
    #[serde(serialize_with = "shortest_floats")]
    pub temperatures: Vec<f32>,
}

/// `[layer_head]`: the graph's second output `layer_logits` `[1, L]`, one logit per layer class,
/// read as independent (multi-label) probabilities `sigmoid(z_l / temperature)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerHeadTable {
    /// The L layer classes, in output order, each unique (e.g. "streaking").
    pub classes: Vec<String>,
    /// T, finite and > 0, calibrated on the training tool's validation split.
    pub temperature: f32,
}

/// `[domain]`: the graph's third output `features` `[1, D]` against the training layers'. A
/// layer's score is `sqrt((f - mean)^T inverse_covariance (f - mean) / D)`, or with `groups`
/// (format 1.4) the smallest of that over the groups' means; above `threshold` the layer is
/// unlike the training data (quantize/bedsight_train/domain.py fits it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainTable {
    /// D.
    pub feature_size: usize,
    /// The training layers' mean features, D values.
    #[serde(serialize_with = "shortest_floats")]
    pub mean: Vec<f32>,
    /// The inverse of their (shrunk) covariance, D x D values, row by row.
    #[serde(serialize_with = "shortest_floats")]
    pub inverse_covariance: Vec<f32>,
    /// Scores above it are unfamiliar; finite and > 0.
    pub threshold: f64,
    /// Which quantile of the validation layers' scores `threshold` is, in (0, 1).
    pub threshold_quantile: f64,
    /// How many training layers the statistics come from.
    pub fit_layers: u64,
    /// How many validation layers (never fitted) set the threshold.
    pub validation_layers: u64,
    /// Their scores, ascending (up to 1000): what commissioning plots a new camera's against.
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "shortest_floats")]
    pub validation_scores: Vec<f32>,
    /// Format 1.4: the training layers by group (the synthetic set, each real label folder), each
    /// with its own mean under the one (tied) covariance; empty: `mean` is the only centre.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<DomainGroup>,
}

/// One `[[domain.groups]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainGroup {
    /// What the group's layers are ("synthetic", "real No_Defect"), unique in the table.
    pub name: String,
    /// How many training layers it holds.
    pub layers: u64,
    /// Their mean features, D values.
    #[serde(serialize_with = "shortest_floats")]
    pub mean: Vec<f32>,
}

/// One `[[classes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    /// Class name, unique within the manifest.
    pub name: String,
    /// Display colour, "#rrggbb".
    pub colour: String,
    /// Whether a region of this class is a defect (lattice, a support structure, is not).
    pub defect: bool,
}

/// `[graphs]`: entry names of the graphs in the archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphsTable {
    /// The graph the box runs: "model.int8.onnx" when the image has one, else "model.onnx".
    pub default: String,
    /// The fp32 reference graph: "model.onnx".
    pub fp32: String,
}

impl GraphsTable {
    /// True when neither graph is named (a manifest that has not been packed yet).
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.fp32.is_empty()
    }
}

impl ClassEntry {
    /// The colour as `[r, g, b]`. [`Manifest::parse`] refuses invalid colours; for a
    /// `ClassEntry` built by hand with an invalid colour this returns black.
    pub fn rgb(&self) -> [u8; 3] {
        parse_colour(&self.colour).unwrap_or([0, 0, 0])
    }
}

impl Manifest {
    /// Parses and validates a manifest. `origin` names where the text came from and starts every
    /// error message (e.g. "model image models/a.bsimg: manifest.toml" or "out/manifest.toml").
    ///
    /// Refuses: text over [`MAX_MANIFEST_BYTES`], invalid TOML, an unknown major format version,
    /// unknown or missing keys, and everything [`Manifest::validate`] refuses.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ImageError> {
        let problem = |problem: String| ImageError::Manifest {
            origin: origin.to_string(),
            problem,
        };
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(problem(format!(
                "is {} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                text.len()
            )));
        }
        // The version first, so that a manifest of another major version is refused as such and
        // not for the keys that version added.
        let table: toml::Table =
            toml::from_str(text).map_err(|e| problem(format!("is not valid TOML: {}", e.to_string().trim_end())))?;
        match table.get("format_version") {
            None => {
                return Err(problem(format!(
                    "has no format_version (this bedsight writes \"{FORMAT_VERSION}\")"
                )))
            }
            Some(toml::Value::String(version)) => check_format_version(version, origin)?,
            Some(other) => {
                return Err(problem(format!(
                    "format_version must be a string such as \"{FORMAT_VERSION}\", not {other}"
                )))
            }
        }
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| problem(format!("is not a valid manifest: {}", e.to_string().trim_end())))?;
        manifest.validate(origin)?;
        Ok(manifest)
    }

    /// Checks everything in the manifest that can be checked without the graph. All problems
    /// are reported at once, in one [`ImageError::Manifest`].
    ///
    /// `[graphs]` and `[files]` may both be empty (a manifest the training tool wrote, before
    /// packing); when either is filled in, they must describe a valid image layout.
    pub fn validate(&self, origin: &str) -> Result<(), ImageError> {
        check_format_version(&self.format_version, origin)?;
        let mut problems = Vec::new();

        check_label("name", &self.name, &mut problems);
        check_label("version", &self.version, &mut problems);
        check_label("architecture", &self.architecture, &mut problems);

        let input = &self.input;
        for (key, side) in [("width", input.width), ("height", input.height)] {
            if !INPUT_SIDE_PX.contains(&side) {
                problems.push(format!(
                    "input.{key} is {side}, it must be {}..={} pixels",
                    INPUT_SIDE_PX.start(),
                    INPUT_SIDE_PX.end()
                ));
            }
        }
        if input.channels != 1 && input.channels != 3 {
            problems.push(format!(
                "input.channels is {}, it must be 1 (grey) or 3 (RGB)",
                input.channels
            ));
        }
        for (key, values) in [("mean", &input.mean), ("std", &input.std)] {
            if values.len() != input.channels as usize {
                problems.push(format!(
                    "input.{key} has {} values, it needs one per channel ({})",
                    values.len(),
                    input.channels
                ));
            }
        }
        if input.mean.iter().any(|mean| !mean.is_finite()) {
            problems.push(format!("input.mean {:?} must be finite numbers", input.mean));
        }
        if input.std.iter().any(|std| !(std.is_finite() && *std > 0.0)) {
            problems.push(format!(
                "input.std {:?} must be finite numbers > 0 (the graph divides by them)",
                input.std
            ));
        }

        let ensemble = &self.ensemble;
        if !(1..=MAX_MEMBERS).contains(&ensemble.members) {
            problems.push(format!(
                "ensemble.members is {}, it must be 1..={MAX_MEMBERS}",
                ensemble.members
            ));
        }
        if ensemble.temperatures.len() != ensemble.members {
            problems.push(format!(
                "ensemble.temperatures has {} values but ensemble.members is {}: give one \
                 temperature per member",
                ensemble.temperatures.len(),
                ensemble.members
            ));
        }
        if ensemble.temperatures.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
            problems.push(format!(
                "ensemble.temperatures {:?} must be finite numbers > 0 (seed 000 Eq. 21 divides \
                 the logits by them)",
                ensemble.temperatures
            ));
        }

        if self.classes.is_empty() || self.classes.len() > MAX_CLASSES {
            problems.push(format!(
                "has {} [[classes]], it needs 1..={MAX_CLASSES} (masks hold 8-bit class indices)",
                self.classes.len()
            ));
        }
        let mut class_names = BTreeSet::new();
        for (index, class) in self.classes.iter().enumerate() {
            check_label(&format!("classes[{index}].name"), &class.name, &mut problems);
            if !class_names.insert(class.name.as_str()) {
                problems.push(format!(
                    "classes[{index}].name \"{}\" is used twice; class names must be unique",
                    class.name
                ));
            }
            if parse_colour(&class.colour).is_none() {
                problems.push(format!(
                    "classes[{index}] (\"{}\") colour \"{}\" is not a colour: write \"#rrggbb\" \
                     in hex",
                    class.name, class.colour
                ));
            }
        }
        if let Some(background) = self.classes.first() {
            if background.defect {
                problems.push(format!(
                    "classes[0] (\"{}\") is the background and cannot be a defect",
                    background.name
                ));
            }
        }

        if let Some(head) = &self.layer_head {
            if self.format().is_some_and(|(_, minor)| minor < 1) {
                problems.push(format!(
                    "has a [layer_head], which format_version 1.1 added, but says format_version \
                     \"{}\"",
                    self.format_version
                ));
            }
            if head.classes.is_empty() || head.classes.len() > MAX_LAYER_CLASSES {
                problems.push(format!(
                    "layer_head.classes has {} names, it needs 1..={MAX_LAYER_CLASSES}",
                    head.classes.len()
                ));
            }
            let mut names = BTreeSet::new();
            for (index, name) in head.classes.iter().enumerate() {
                check_label(&format!("layer_head.classes[{index}]"), name, &mut problems);
                if !names.insert(name.as_str()) {
                    problems.push(format!(
                        "layer_head.classes[{index}] \"{name}\" is used twice; layer class names \
                         must be unique"
                    ));
                }
            }
            if !(head.temperature.is_finite() && head.temperature > 0.0) {
                problems.push(format!(
                    "layer_head.temperature {} must be a finite number > 0",
                    head.temperature
                ));
            }
        }

        if let Some(domain) = &self.domain {
            domain.check(self, &mut problems);
        }

        for (key, value) in &self.training {
            if key.is_empty() || !value.is_finite() {
                problems.push(format!("training.{key} = {value} must be a finite number"));
            }
        }

        self.check_layout(&mut problems);

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ImageError::Manifest {
                origin: origin.to_string(),
                problem: problems.join("; "),
            })
        }
    }

    /// `[graphs]` and `[files]`: empty both (not packed yet) or a valid image layout.
    fn check_layout(&self, problems: &mut Vec<String>) {
        if self.graphs.is_empty() && self.files.is_empty() {
            return;
        }
        for (name, hash) in &self.files {
            if !is_listable_entry(name) {
                problems.push(format!(
                    "files lists \"{name}\", which format {FORMAT_MAJOR}.x does not define (it \
                     defines {ENTRY_FP32_GRAPH}, {ENTRY_INT8_GRAPH}, {ENTRY_SELFTEST_INPUT}, \
                     {ENTRY_SELFTEST_EXPECTED} and {ENTRY_TRAINING_WEIGHTS})"
                ));
            }
            if parse_sha256(hash).is_none() {
                problems.push(format!("files.\"{name}\" = \"{hash}\" is not a sha256 (64 hex digits)"));
            }
        }
        if self.files.contains_key(ENTRY_TRAINING_WEIGHTS) && self.format().is_some_and(|(_, minor)| minor < 3) {
            problems.push(format!(
                "files lists {ENTRY_TRAINING_WEIGHTS}, which format_version 1.3 added, but says \
                 format_version \"{}\"",
                self.format_version
            ));
        }
        let has_int8 = self.files.contains_key(ENTRY_INT8_GRAPH);
        if !self.files.contains_key(ENTRY_FP32_GRAPH) {
            problems.push(format!("files does not list {ENTRY_FP32_GRAPH}, the fp32 graph"));
        }
        if self.graphs.fp32 != ENTRY_FP32_GRAPH {
            problems.push(format!(
                "graphs.fp32 is \"{}\", it must be \"{ENTRY_FP32_GRAPH}\"",
                self.graphs.fp32
            ));
        }
        let default = if has_int8 { ENTRY_INT8_GRAPH } else { ENTRY_FP32_GRAPH };
        if self.graphs.default != default {
            problems.push(format!(
                "graphs.default is \"{}\", it must be \"{default}\" ({})",
                self.graphs.default,
                if has_int8 {
                    "an image with an INT8 graph runs it"
                } else {
                    "the image has no INT8 graph"
                }
            ));
        }
        if self.files.contains_key(ENTRY_SELFTEST_INPUT) != self.files.contains_key(ENTRY_SELFTEST_EXPECTED) {
            problems.push(format!(
                "files lists only one of {ENTRY_SELFTEST_INPUT} and {ENTRY_SELFTEST_EXPECTED}; \
                 a self-test needs both"
            ));
        }
    }

    /// The manifest as TOML, as [`crate::pack`] writes it into the image. Empty optional tables
    /// are left out; floats are written in their shortest form. `parse(to_toml())` gives back an
    /// equal manifest.
    pub fn to_toml(&self) -> String {
        // Cannot fail: every plain value comes before every table in the struct, the maps have
        // string keys, and floats serialize (non-finite ones as nan/inf).
        toml::to_string(self).expect("a Manifest always serializes to TOML")
    }

    /// The major and minor parts of `format_version`, if it is "major.minor".
    pub fn format(&self) -> Option<(u32, u32)> {
        parse_format_version(&self.format_version)
    }
}

impl DomainTable {
    fn check(&self, manifest: &Manifest, problems: &mut Vec<String>) {
        if manifest.format().is_some_and(|(_, minor)| minor < 2) {
            problems.push(format!(
                "has a [domain] table, which format_version 1.2 added, but says format_version \"{}\"",
                manifest.format_version
            ));
        }
        let d = self.feature_size;
        if d == 0 || d > MAX_DOMAIN_FEATURES {
            problems.push(format!("domain.feature_size {d} must be 1..={MAX_DOMAIN_FEATURES}"));
            return;
        }
        if self.mean.len() != d {
            problems.push(format!(
                "domain.mean has {} values, feature_size is {d}",
                self.mean.len()
            ));
        }
        if self.inverse_covariance.len() != d * d {
            problems.push(format!(
                "domain.inverse_covariance has {} values, feature_size {d} needs {}",
                self.inverse_covariance.len(),
                d * d
            ));
        }
        if self.mean.iter().chain(&self.inverse_covariance).any(|v| !v.is_finite()) {
            problems.push("domain.mean and domain.inverse_covariance must hold finite numbers".to_string());
        }
        self.check_groups(manifest, problems);
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            problems.push(format!(
                "domain.threshold {} must be a finite number > 0",
                self.threshold
            ));
        }
        if self.validation_scores.len() > 1000 || self.validation_scores.iter().any(|v| !v.is_finite()) {
            problems.push(format!(
                "domain.validation_scores must be at most 1000 finite numbers (it has {})",
                self.validation_scores.len()
            ));
        }
        if !(self.threshold_quantile > 0.0 && self.threshold_quantile < 1.0) {
            problems.push(format!(
                "domain.threshold_quantile {} must be in (0, 1)",
                self.threshold_quantile
            ));
        }
    }

    fn check_groups(&self, manifest: &Manifest, problems: &mut Vec<String>) {
        if self.groups.is_empty() {
            return;
        }
        if manifest.format().is_some_and(|(_, minor)| minor < 4) {
            problems.push(format!(
                "has [[domain.groups]], which format_version 1.4 added, but says format_version \"{}\"",
                manifest.format_version
            ));
        }
        if self.groups.len() > MAX_DOMAIN_GROUPS {
            problems.push(format!(
                "domain.groups has {} groups; at most {MAX_DOMAIN_GROUPS}",
                self.groups.len()
            ));
        }
        let d = self.feature_size;
        for (i, group) in self.groups.iter().enumerate() {
            let name = &group.name;
            if name.trim().is_empty() {
                problems.push(format!("domain.groups[{i}] has an empty name"));
            } else if self.groups[..i].iter().any(|g| &g.name == name) {
                problems.push(format!("domain.groups[{i}]: the name {name:?} appears twice"));
            }
            if group.mean.len() != d {
                problems.push(format!(
                    "domain.groups[{i}] ({name:?}) has {} mean values, feature_size is {d}",
                    group.mean.len()
                ));
            }
            if group.mean.iter().any(|v| !v.is_finite()) {
                problems.push(format!(
                    "domain.groups[{i}] ({name:?}): the mean must hold finite numbers"
                ));
            }
        }
    }
}

fn check_format_version(version: &str, origin: &str) -> Result<(), ImageError> {
    match parse_format_version(version) {
        None => Err(ImageError::Manifest {
            origin: origin.to_string(),
            problem: format!(
                "format_version \"{version}\" is not \"major.minor\" (this bedsight writes \
                 \"{FORMAT_VERSION}\")"
            ),
        }),
        Some((FORMAT_MAJOR, _minor)) => Ok(()),
        Some(_) => Err(ImageError::UnsupportedFormat {
            origin: origin.to_string(),
            found: version.to_string(),
            supported: FORMAT_MAJOR,
        }),
    }
}

fn parse_format_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    let number = |part: &str| -> Option<u32> {
        if part.is_empty() || part.len() > 6 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    Some((number(major)?, number(minor)?))
}

/// Names and versions: non-empty, short, one line.
fn check_label(key: &str, value: &str, problems: &mut Vec<String>) {
    if value.trim().is_empty() {
        problems.push(format!("{key} is empty"));
    } else if value.len() > MAX_LABEL_BYTES {
        problems.push(format!("{key} is longer than {MAX_LABEL_BYTES} bytes"));
    } else if value.chars().any(char::is_control) {
        problems.push(format!("{key} {value:?} holds control characters (a line break?)"));
    }
}

/// "#rrggbb" (either case) → [r, g, b].
fn parse_colour(colour: &str) -> Option<[u8; 3]> {
    let digits = colour.strip_prefix('#')?;
    if digits.len() != 6 {
        return None;
    }
    let mut rgb = [0u8; 3];
    hex::decode_to_slice(digits, &mut rgb).ok()?;
    Some(rgb)
}

/// 64 hex digits (either case) → the 32 bytes.
pub(crate) fn parse_sha256(hash: &str) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    if hash.len() != 64 {
        return None;
    }
    hex::decode_to_slice(hash, &mut bytes).ok()?;
    Some(bytes)
}

/// Writes f32s through their shortest decimal form, so that 1.12f32 appears as 1.12 and not as
/// 1.1200000047683716 (TOML floats are f64).
fn shortest_floats<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        values
            .iter()
            .map(|value| value.to_string().parse::<f64>().unwrap_or(f64::from(*value))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_in_either_case_and_refuse_the_rest() {
        assert_eq!(parse_colour("#ff8000"), Some([255, 128, 0]));
        assert_eq!(parse_colour("#FF8000"), Some([255, 128, 0]));
        for bad in ["ff8000", "#ff800", "#ff80000", "#gg8000", "", "#", "#ff 800"] {
            assert_eq!(parse_colour(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn format_versions_are_major_dot_minor() {
        assert_eq!(parse_format_version("1.0"), Some((1, 0)));
        assert_eq!(parse_format_version("12.34"), Some((12, 34)));
        for bad in ["1", "1.", ".0", "1.0.0", "v1.0", "1.-1", "+1.0", " 1.0"] {
            assert_eq!(parse_format_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn floats_are_written_in_shortest_form() {
        let table = EnsembleTable {
            members: 3,
            temperatures: vec![1.12, 0.97, 1.05],
        };
        let text = toml::to_string(&table).unwrap();
        assert!(text.contains("[1.12, 0.97, 1.05]"), "{text}");
        let back: EnsembleTable = toml::from_str(&text).unwrap();
        assert_eq!(back, table);
    }
}
