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
    /// What the layer-level classification head (models that have one) may change.
    #[serde(default)]
    pub layer_classifier: LayerClassifierConfig,
    #[serde(default)]
    pub recoat: RecoatConfig,
    /// Per-class rules, keyed by the class name of the model image.
    #[serde(default)]
    pub rules: BTreeMap<String, ClassRule>,
    /// Model images: whether unsigned ones may be installed, where the trusted keys are.
    #[serde(default)]
    pub images: ImagesConfig,
    /// Where `bedsight run` gets its frames from.
    #[serde(default)]
    pub camera: Option<CameraConfig>,
    /// What tells `bedsight run` that a layer is ready to inspect.
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    /// How `bedsight run` talks to the printer's PLC.
    #[serde(default)]
    pub plc: PlcConfig,
    /// Where `bedsight run` keeps its per-layer journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// How defects are followed across layers (docs/tracks.md).
    #[serde(default)]
    pub tracks: TracksConfig,
    /// Where `bedsight run` keeps each layer's images, and how much of them.
    #[serde(default)]
    pub record: RecordConfig,
    /// The operator's web page of `bedsight run`: on, on loopback, unless the table says otherwise.
    #[serde(default)]
    pub dashboard: DashboardConfig,
}

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
        RecordConfig { enabled: true, folder: None, max_gb: default_max_gb() }
    }
}

fn yes() -> bool {
    true
}

fn default_max_gb() -> f64 {
    20.0
}

/// `[dashboard]`: the web page, `/metrics` and `/healthz` of `bedsight run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// false: no web server (the table's other keys are kept for later).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `IP:port` to listen on; loopback by default. Port 0 takes a free port.
    #[serde(default = "default_dashboard_address")]
    pub address: String,
    /// The token that page controls which change anything must send (`Authorization: Bearer`);
    /// without it those controls are refused.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { enabled: true, address: default_dashboard_address(), token: None }
    }
}

fn default_dashboard_address() -> String {
    "127.0.0.1:8080".into()
}

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
}

impl Default for TracksConfig {
    fn default() -> Self {
        Self { min_iou: default_min_iou(), max_gap_layers: 0, cell_mm: default_cell_mm() }
    }
}

fn default_min_iou() -> f64 {
    0.3
}

fn default_cell_mm() -> f64 {
    5.0
}

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

/// `[journal]`: the per-layer journal of `bedsight run`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The journal file; default: `journal/layers.bsj` in the state folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// `[camera]`: where frames come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// `replay`: a folder of images, in name order, one per trigger.
    pub kind: String,
    /// `replay`: the folder (relative paths are taken from the configuration file's folder).
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// `replay`: start again from the first image after the last one (else: FAULT, no frames).
    #[serde(default)]
    pub repeat: bool,
    /// `v4l2`: the device, e.g. `/dev/video0` or a stable udev name (board/).
    #[serde(default)]
    pub device: Option<String>,
    /// `v4l2`: frame size in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// `v4l2`: GREY, Y16, YUYV or MJPEG.
    #[serde(default)]
    pub pixel_format: Option<String>,
    /// `v4l2`: frames averaged per layer.
    #[serde(default = "default_frames_averaged")]
    pub frames_averaged: u32,
    /// `v4l2`: exposure (V4L2 absolute exposure, 100 µs units) where the driver offers it.
    #[serde(default)]
    pub exposure: Option<i64>,
    /// `v4l2`: gain where the driver offers it.
    #[serde(default)]
    pub gain: Option<i64>,
    /// `v4l2`: driver buffers; as many stale frames are dropped before the kept ones.
    #[serde(default = "default_camera_buffers")]
    pub buffers: u32,
}

fn default_frames_averaged() -> u32 {
    4
}

fn default_camera_buffers() -> u32 {
    2
}

impl CameraConfig {
    /// The hal's settings for a `v4l2` camera (checked at load).
    pub fn v4l2_settings(&self) -> Option<hal::v4l2::V4l2Settings> {
        Some(hal::v4l2::V4l2Settings {
            device: self.device.clone()?,
            width: self.width?,
            height: self.height?,
            format: hal::v4l2::PixelFormat::parse(self.pixel_format.as_deref()?)?,
            frames_averaged: self.frames_averaged,
            exposure: self.exposure,
            gain: self.gain,
            buffers: self.buffers,
            capture_timeout: std::time::Duration::from_secs(1),
        })
    }
}

/// `[trigger]`: the one source of layer triggers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// `modbus` (command register 102), `serial` (`LAYER <n>` on plc.serial_line) or `timer`.
    pub kind: String,
    /// `timer`: milliseconds between layers. `video`: milliseconds between preview frames
    /// (default 100).
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// `video`: mean grey-level change (0..255) between preview frames above which the
    /// recoater is passing (default 10).
    #[serde(default)]
    pub pass_threshold: Option<f64>,
    /// `video`: change below which the bed is still (default 2).
    #[serde(default)]
    pub settle_threshold: Option<f64>,
    /// `video`: how long the bed must stay still after a pass (default 1000).
    #[serde(default)]
    pub hold_ms: Option<u64>,
}

impl TriggerConfig {
    /// The recoat detector's settings for `kind = "video"`, defaults filled in.
    pub fn video_settings(&self) -> hal::video_trigger::VideoTriggerSettings {
        hal::video_trigger::VideoTriggerSettings {
            pass_threshold: self.pass_threshold.unwrap_or(10.0),
            settle_threshold: self.settle_threshold.unwrap_or(2.0),
            hold: std::time::Duration::from_millis(self.hold_ms.unwrap_or(1_000)),
        }
    }

    /// Milliseconds between preview frames for `kind = "video"`.
    pub fn video_interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(100)
    }
}

/// `[plc]`: the outputs, any combination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlcConfig {
    #[serde(default)]
    pub modbus_tcp: Option<ModbusTcpConfig>,
    #[serde(default)]
    pub modbus_rtu: Option<ModbusRtuConfig>,
    #[serde(default)]
    pub serial_line: Option<SerialLineConfig>,
    #[serde(default)]
    pub gpio: Option<GpioConfig>,
}

/// `[plc.gpio]`: lines on the Linux GPIO character device, by offset on `chip`. A line left
/// out is not driven (or not watched).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// `cdev` (the Linux GPIO character device, default) or `rppal` (Raspberry Pi, BCM
    /// numbers; needs a build with the `rppal` feature).
    #[serde(default = "default_gpio_driver")]
    pub driver: String,
    /// The character device, e.g. `/dev/gpiochip0` (ignored by `rppal`).
    pub chip: String,
    #[serde(default)]
    pub ready: Option<u32>,
    #[serde(default)]
    pub busy: Option<u32>,
    #[serde(default)]
    pub pass: Option<u32>,
    #[serde(default)]
    pub nok: Option<u32>,
    #[serde(default)]
    pub code0: Option<u32>,
    #[serde(default)]
    pub code1: Option<u32>,
    #[serde(default)]
    pub alive: Option<u32>,
    /// Input: the PLC's "recoat done" (the layer trigger when trigger.kind = "gpio").
    #[serde(default)]
    pub layer_ready: Option<u32>,
    /// Input: the PLC has read the verdict (clears the verdict lines in level mode).
    #[serde(default)]
    pub ack: Option<u32>,
    /// Names of the lines that are active-low, e.g. ["busy", "layer_ready"].
    #[serde(default)]
    pub active_low: Vec<String>,
    /// `level` (held until the next layer or ACK) or `pulse` (active for pulse_ms).
    #[serde(default = "default_verdict_mode")]
    pub verdict_mode: String,
    #[serde(default = "default_pulse_ms")]
    pub pulse_ms: u64,
    /// Input edges closer together than this are one edge.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl GpioConfig {
    /// The hal's plan for these lines (checked at load).
    pub fn plan(&self) -> hal::gpio::GpioPlan {
        use hal::gpio::{GpioPlan, InputLine, LineSpec, OutputLine, VerdictMode};
        let spec = |name: &str, offset: u32| LineSpec { offset, active_low: self.active_low.iter().any(|n| n == name) };
        let outputs = [
            (OutputLine::Ready, self.ready),
            (OutputLine::Busy, self.busy),
            (OutputLine::Pass, self.pass),
            (OutputLine::Nok, self.nok),
            (OutputLine::Code0, self.code0),
            (OutputLine::Code1, self.code1),
            (OutputLine::Alive, self.alive),
        ]
        .into_iter()
        .filter_map(|(line, offset)| offset.map(|offset| (line, spec(line.name(), offset))))
        .collect();
        let inputs = [(InputLine::LayerReady, self.layer_ready), (InputLine::Ack, self.ack)]
            .into_iter()
            .filter_map(|(line, offset)| offset.map(|offset| (line, spec(line.name(), offset))))
            .collect();
        let verdict_mode = if self.verdict_mode == "pulse" { VerdictMode::Pulse(std::time::Duration::from_millis(self.pulse_ms)) } else { VerdictMode::Level };
        GpioPlan { chip: self.chip.clone(), outputs, inputs, verdict_mode, debounce: std::time::Duration::from_millis(self.debounce_ms) }
    }
}

/// The line names `[plc.gpio]` knows.
const GPIO_LINE_NAMES: [&str; 9] = ["ready", "busy", "pass", "nok", "code0", "code1", "alive", "layer_ready", "ack"];

fn default_gpio_driver() -> String {
    "cdev".into()
}

fn default_verdict_mode() -> String {
    "level".into()
}

fn default_pulse_ms() -> u64 {
    200
}

fn default_debounce_ms() -> u64 {
    20
}

/// `[plc.modbus_tcp]`: bedsight as a Modbus TCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTcpConfig {
    /// Address to listen on, e.g. `0.0.0.0:502`; port 0 picks a free port (printed at start).
    pub listen: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
}

/// `[plc.modbus_rtu]`: bedsight as a Modbus RTU slave on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRtuConfig {
    pub port: String,
    #[serde(default = "default_rtu_baud")]
    pub baud: u32,
    /// `none`, `even` (the Modbus serial-line default) or `odd`.
    #[serde(default = "default_rtu_parity")]
    pub parity: String,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
}

/// `[plc.serial_line]`: the `LAYER n` / `VERDICT ...` line protocol on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialLineConfig {
    pub port: String,
    #[serde(default = "default_line_baud")]
    pub baud: u32,
}

fn default_unit_id() -> u8 {
    1
}

fn default_rtu_baud() -> u32 {
    19_200
}

fn default_rtu_parity() -> String {
    "even".into()
}

fn default_stop_bits() -> u8 {
    1
}

fn default_line_baud() -> u32 {
    9_600
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

/// `[layer_classifier]`: a layer that the model's classification head calls defective while the
/// segmentation finds no defect is REVIEW, not PASS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerClassifierConfig {
    /// The calibrated probability (0..1] of the most probable layer class from which the layer
    /// counts as defective.
    #[serde(default = "default_review_threshold")]
    pub review_threshold: f32,
}

impl Default for LayerClassifierConfig {
    fn default() -> Self {
        Self { review_threshold: default_review_threshold() }
    }
}

fn default_review_threshold() -> f32 {
    0.5
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
    /// The classes a recoat can fix; a rule that asks for RECOAT for any other class gives
    /// PAUSE instead. Default: incompleteness, hopping and streaking (those the model has).
    #[serde(default)]
    pub fixable: Option<Vec<String>>,
}

impl Default for RecoatConfig {
    fn default() -> Self {
        Self { max_retries: default_max_retries(), fixable: None }
    }
}

/// What `recoat.fixable` means when it is left out.
pub const DEFAULT_RECOAT_FIXABLE: [&str; 3] = ["incompleteness", "hopping", "streaking"];

impl RecoatConfig {
    /// Whether a recoat can fix `class`.
    pub fn can_fix(&self, class: &str) -> bool {
        match &self.fixable {
            Some(classes) => classes.iter().any(|c| c == class),
            None => DEFAULT_RECOAT_FIXABLE.contains(&class),
        }
    }
}

fn default_max_retries() -> u32 {
    2
}

/// `[images]`: what `bedsight image install` accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Install model images that carry no signature (development boxes only). A signature that
    /// is present is always checked.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The folder of trusted public keys (`*.pub`); default: `trusted-keys` in the state folder.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
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
    /// limit is set).
    #[serde(default)]
    pub verdict: Option<String>,
    /// Rules on the tracks of this class across layers.
    #[serde(default)]
    pub track: Option<TrackRule>,
}

impl ClassRule {
    /// The per-layer verdict (checked at load when a limit is set).
    pub fn layer_verdict(&self) -> Verdict {
        self.verdict.as_deref().and_then(Verdict::parse).unwrap_or(Verdict::Pass)
    }
}

impl Config {
    /// The journal file of `bedsight run`: `[journal] path` (relative to `base_dir`, the
    /// configuration's folder), else `journal/layers.bsj` in the state folder.
    pub fn journal_file(&self, base_dir: &Path, state_dir: &Path) -> PathBuf {
        match &self.journal.path {
            Some(path) => base_dir.join(path),
            None => state_dir.join("journal").join("layers.bsj"),
        }
    }

    /// The layer image folder: `[record] folder` (relative to `base_dir`), else `images` in the
    /// state folder; none when `[record] enabled = false`.
    pub fn images_folder(&self, base_dir: &Path, state_dir: &Path) -> Option<PathBuf> {
        self.record.enabled.then(|| match &self.record.folder {
            Some(folder) => base_dir.join(folder),
            None => state_dir.join("images"),
        })
    }

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
        let review_threshold = self.layer_classifier.review_threshold;
        if !(review_threshold > 0.0 && review_threshold <= 1.0) {
            bail!("layer_classifier.review_threshold must be in (0, 1], got {review_threshold}");
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
            let has_limit = rule.max_total_area_mm2.is_some() || rule.max_largest_area_mm2.is_some() || rule.max_count.is_some();
            match rule.verdict.as_deref().map(Verdict::parse) {
                Some(Some(Verdict::Recoat | Verdict::Review | Verdict::Pause)) => {}
                None if !has_limit => {}
                None => bail!("rules.{class}.verdict is missing: say RECOAT, REVIEW or PAUSE for when a limit is passed"),
                Some(_) => bail!("rules.{class}.verdict must be RECOAT, REVIEW or PAUSE, got {:?}", rule.verdict.as_deref().unwrap_or_default()),
            }
            if let Some(track) = &rule.track {
                if let Some(value) = track.max_growth_mm2_per_layer {
                    if !(value.is_finite() && value >= 0.0) {
                        bail!("rules.{class}.track.max_growth_mm2_per_layer must be a number >= 0, got {value}");
                    }
                }
                if track.max_layers == Some(0) {
                    bail!("rules.{class}.track.max_layers must be at least 1");
                }
                match Verdict::parse(&track.verdict) {
                    Some(Verdict::Recoat | Verdict::Review | Verdict::Pause) => {}
                    _ => bail!("rules.{class}.track.verdict must be RECOAT, REVIEW or PAUSE, got {:?}", track.verdict),
                }
                if track.max_layers.is_none() && track.max_growth_mm2_per_layer.is_none() && !track.after_recoat {
                    bail!("rules.{class}.track sets no limit: give max_layers, max_growth_mm2_per_layer or after_recoat = true");
                }
            }
        }
        let tracks = &self.tracks;
        if !(tracks.min_iou.is_finite() && tracks.min_iou > 0.0 && tracks.min_iou <= 1.0) {
            bail!("tracks.min_iou must be in (0, 1], got {}", tracks.min_iou);
        }
        if tracks.max_gap_layers > 100 {
            bail!("tracks.max_gap_layers must be at most 100, got {}", tracks.max_gap_layers);
        }
        // The map holds (bed / cell)² cells per class: keep it to a few MiB.
        let cells = (self.bed.width_mm / tracks.cell_mm).ceil() * (self.bed.height_mm / tracks.cell_mm).ceil();
        if !(tracks.cell_mm.is_finite() && tracks.cell_mm > 0.0) || cells > crate::defect_map::MAX_CELLS as f64 {
            bail!("tracks.cell_mm must be > 0 and give at most {} cells on the bed, got {}", crate::defect_map::MAX_CELLS, tracks.cell_mm);
        }
        if !(self.record.max_gb.is_finite() && self.record.max_gb > 0.0) {
            bail!("record.max_gb must be a number of gigabytes > 0, got {}", self.record.max_gb);
        }
        let dashboard = &self.dashboard;
        if dashboard.address.parse::<std::net::SocketAddr>().is_err() {
            bail!("dashboard.address must be IP:port (e.g. \"127.0.0.1:8080\"), got {:?}", dashboard.address);
        }
        if let Some(token) = &dashboard.token {
            if token.len() < 8 || !token.chars().all(|c| c.is_ascii_graphic()) {
                bail!("dashboard.token must be at least 8 printable ASCII characters without spaces");
            }
        }
        self.check_run_tables()
    }

    /// `[camera]`, `[trigger]` and `[plc]`: only `bedsight run` uses them, but they are checked
    /// whenever the file is read.
    fn check_run_tables(&self) -> Result<()> {
        if let Some(camera) = &self.camera {
            let v4l2_keys = [
                ("device", camera.device.is_some()),
                ("width", camera.width.is_some()),
                ("height", camera.height.is_some()),
                ("pixel_format", camera.pixel_format.is_some()),
                ("exposure", camera.exposure.is_some()),
                ("gain", camera.gain.is_some()),
            ];
            match camera.kind.as_str() {
                "replay" => {
                    if camera.folder.is_none() {
                        bail!("camera.folder is missing: a replay camera needs the folder of images to replay");
                    }
                    if let Some((key, _)) = v4l2_keys.iter().find(|(_, set)| *set) {
                        bail!("camera.{key} is for kind = \"v4l2\", not \"replay\"");
                    }
                }
                "v4l2" => {
                    for (key, set) in &v4l2_keys[..4] {
                        if !set {
                            bail!("camera.{key} is missing: a v4l2 camera needs device, width, height and pixel_format");
                        }
                    }
                    if camera.folder.is_some() || camera.repeat {
                        bail!("camera.folder and camera.repeat are for kind = \"replay\", not \"v4l2\"");
                    }
                    let format = camera.pixel_format.as_deref().unwrap_or_default();
                    if hal::v4l2::PixelFormat::parse(format).is_none() {
                        bail!("camera.pixel_format must be GREY, Y16, YUYV or MJPEG, got {format:?}");
                    }
                    for (key, value) in [("width", camera.width), ("height", camera.height)] {
                        let value = value.unwrap_or_default();
                        if !(16..=16_384).contains(&value) {
                            bail!("camera.{key} must be in 16..16384 pixels, got {value}");
                        }
                    }
                    if !(1..=64).contains(&camera.frames_averaged) {
                        bail!("camera.frames_averaged must be in 1..64, got {}", camera.frames_averaged);
                    }
                    if !(1..=16).contains(&camera.buffers) {
                        bail!("camera.buffers must be in 1..16, got {}", camera.buffers);
                    }
                }
                other => bail!("camera.kind must be \"replay\" or \"v4l2\", got {other:?}"),
            }
        }
        let plc = &self.plc;
        if let Some(tcp) = &plc.modbus_tcp {
            if tcp.listen.parse::<std::net::SocketAddr>().is_err() {
                bail!("plc.modbus_tcp.listen must be an address and port such as \"0.0.0.0:502\", got {:?}", tcp.listen);
            }
        }
        if let Some(rtu) = &plc.modbus_rtu {
            serial_port_keys("plc.modbus_rtu", &rtu.port, rtu.baud)?;
            if hal::serial::Parity::parse(&rtu.parity).is_none() {
                bail!("plc.modbus_rtu.parity must be none, even or odd, got {:?}", rtu.parity);
            }
            if !matches!(rtu.stop_bits, 1 | 2) {
                bail!("plc.modbus_rtu.stop_bits must be 1 or 2, got {}", rtu.stop_bits);
            }
            if !(1..=247).contains(&rtu.unit_id) {
                bail!("plc.modbus_rtu.unit_id must be in 1..247, got {}", rtu.unit_id);
            }
        }
        if let Some(line) = &plc.serial_line {
            serial_port_keys("plc.serial_line", &line.port, line.baud)?;
            if plc.modbus_rtu.as_ref().is_some_and(|rtu| rtu.port == line.port) {
                bail!("plc.serial_line.port and plc.modbus_rtu.port are both {}: one port carries one protocol", line.port);
            }
        }
        if let Some(gpio) = &plc.gpio {
            match gpio.driver.as_str() {
                "cdev" | "rppal" => {}
                other => bail!("plc.gpio.driver must be cdev or rppal, got {other:?}"),
            }
            if gpio.chip.trim().is_empty() {
                bail!("plc.gpio.chip must name a GPIO character device, e.g. \"/dev/gpiochip0\"");
            }
            for name in &gpio.active_low {
                if !GPIO_LINE_NAMES.contains(&name.as_str()) {
                    bail!("plc.gpio.active_low: no line called {name:?} (lines: {})", GPIO_LINE_NAMES.join(", "));
                }
            }
            match gpio.verdict_mode.as_str() {
                "level" | "pulse" => {}
                other => bail!("plc.gpio.verdict_mode must be level or pulse, got {other:?}"),
            }
            if !(10..=10_000).contains(&gpio.pulse_ms) {
                bail!("plc.gpio.pulse_ms must be in 10..10000, got {}", gpio.pulse_ms);
            }
            if gpio.debounce_ms > 1_000 {
                bail!("plc.gpio.debounce_ms must be at most 1000, got {}", gpio.debounce_ms);
            }
            gpio.plan().check().map_err(|reason| anyhow::anyhow!("plc.gpio: {reason}"))?;
        }
        if let Some(trigger) = &self.trigger {
            match trigger.kind.as_str() {
                "modbus" => {
                    if plc.modbus_tcp.is_none() && plc.modbus_rtu.is_none() {
                        bail!("trigger.kind = \"modbus\" needs [plc.modbus_tcp] or [plc.modbus_rtu]");
                    }
                }
                "serial" => {
                    if plc.serial_line.is_none() {
                        bail!("trigger.kind = \"serial\" needs [plc.serial_line]");
                    }
                }
                "timer" => match trigger.interval_ms {
                    Some(interval) if (50..=3_600_000).contains(&interval) => {}
                    Some(interval) => bail!("trigger.interval_ms must be in 50..3600000, got {interval}"),
                    None => bail!("trigger.interval_ms is missing: a timer trigger needs it"),
                },
                "gpio" => {
                    if plc.gpio.as_ref().and_then(|gpio| gpio.layer_ready).is_none() {
                        bail!("trigger.kind = \"gpio\" needs plc.gpio.layer_ready (the PLC's recoat-done line)");
                    }
                }
                "video" => {
                    let video = trigger.video_settings();
                    if !(video.pass_threshold.is_finite() && video.pass_threshold > 0.0 && video.pass_threshold < 255.0) {
                        bail!("trigger.pass_threshold must be in (0, 255), got {}", video.pass_threshold);
                    }
                    if !(video.settle_threshold.is_finite() && video.settle_threshold > 0.0 && video.settle_threshold < video.pass_threshold) {
                        bail!("trigger.settle_threshold must be > 0 and below trigger.pass_threshold, got {}", video.settle_threshold);
                    }
                    if video.hold > std::time::Duration::from_secs(60) {
                        bail!("trigger.hold_ms must be at most 60000, got {}", video.hold.as_millis());
                    }
                    if !(20..=10_000).contains(&trigger.video_interval_ms()) {
                        bail!("trigger.interval_ms must be in 20..10000 for a video trigger, got {}", trigger.video_interval_ms());
                    }
                }
                other => bail!("trigger.kind must be modbus, serial, gpio, timer or video, got {other:?}"),
            }
            if !matches!(trigger.kind.as_str(), "timer" | "video") && trigger.interval_ms.is_some() {
                bail!("trigger.interval_ms is only for trigger.kind = \"timer\" or \"video\"");
            }
            if trigger.kind != "video" && (trigger.pass_threshold.is_some() || trigger.settle_threshold.is_some() || trigger.hold_ms.is_some()) {
                bail!("trigger.pass_threshold, settle_threshold and hold_ms are only for trigger.kind = \"video\"");
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
        for class in self.recoat.fixable.iter().flatten() {
            if !class_names.contains(class) {
                bail!("configuration {origin}: recoat.fixable: the model has no class {class:?} (it has: {known})");
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

fn serial_port_keys(table: &str, port: &str, baud: u32) -> Result<()> {
    if port.trim().is_empty() {
        bail!("{table}.port must name a serial device, e.g. \"/dev/ttyUSB0\"");
    }
    if !(300..=4_000_000).contains(&baud) {
        bail!("{table}.baud must be in 300..4000000, got {baud}");
    }
    Ok(())
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
    fn the_journal_table_takes_a_path_and_nothing_else() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        assert_eq!(Config::parse(base, "test.toml").unwrap().journal.path, None);
        let config = Config::parse(&format!("{base}[journal]\npath = \"/data/layers.bsj\"\n"), "test.toml").unwrap();
        assert_eq!(config.journal.path, Some(PathBuf::from("/data/layers.bsj")));
        let message = format!("{:#}", Config::parse(&format!("{base}[journal]\nfile = \"x\"\n"), "test.toml").unwrap_err());
        assert!(message.contains("test.toml") && message.contains("file"), "{message}");
    }

    #[test]
    fn record_and_dashboard_tables_are_checked() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        let config = Config::parse(base, "test.toml").unwrap();
        assert!(config.record.enabled && config.record.max_gb == 20.0);
        assert!(config.dashboard.enabled && config.dashboard.address == "127.0.0.1:8080" && config.dashboard.token.is_none());
        let config = Config::parse(&format!("{base}[dashboard]\ntoken = \"s3cret-token\"\n[record]\nmax_gb = 0.5\n"), "test.toml").unwrap();
        let dashboard = config.dashboard;
        assert_eq!((dashboard.address.as_str(), dashboard.token.as_deref()), ("127.0.0.1:8080", Some("s3cret-token")));
        assert_eq!(config.record.max_gb, 0.5);
        for (table, needle) in [
            ("[record]\nmax_gb = 0\n", "record.max_gb"),
            ("[dashboard]\naddress = \"localhost\"\n", "dashboard.address"),
            ("[dashboard]\ntoken = \"short\"\n", "dashboard.token"),
        ] {
            let message = format!("{:#}", Config::parse(&format!("{base}{table}"), "test.toml").unwrap_err());
            assert!(message.contains("test.toml") && message.contains(needle), "{message}");
        }
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
    fn run_tables_parse_and_bad_ones_are_named() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        let good = format!(
            "{base}[camera]\nkind = \"replay\"\nfolder = \"frames\"\nrepeat = true\n[trigger]\nkind = \"modbus\"\n\
             [plc.modbus_tcp]\nlisten = \"127.0.0.1:1502\"\n[plc.modbus_rtu]\nport = \"/dev/ttyUSB0\"\nparity = \"none\"\n\
             [plc.serial_line]\nport = \"/dev/ttyS1\"\n"
        );
        let config = Config::parse(&good, "t.toml").unwrap();
        assert_eq!(config.plc.modbus_rtu.as_ref().unwrap().baud, 19_200);
        assert_eq!(config.plc.serial_line.as_ref().unwrap().baud, 9_600);
        assert_eq!(config.plc.modbus_tcp.as_ref().unwrap().unit_id, 1);
        let gpio = format!(
            "{base}[trigger]\nkind = \"gpio\"\n[plc.gpio]\nchip = \"/dev/gpiochip0\"\nready = 5\nbusy = 6\nlayer_ready = 16\n\
             active_low = [\"busy\", \"layer_ready\"]\nverdict_mode = \"pulse\"\npulse_ms = 300\n"
        );
        let v4l2 = format!(
            "{base}[camera]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nwidth = 1280\nheight = 1024\npixel_format = \"Y16\"\nexposure = 50\n"
        );
        let settings = Config::parse(&v4l2, "t.toml").unwrap().camera.unwrap().v4l2_settings().unwrap();
        assert_eq!((settings.width, settings.format, settings.frames_averaged, settings.exposure), (1280, hal::v4l2::PixelFormat::Y16, 4, Some(50)));
        let plan = Config::parse(&gpio, "t.toml").unwrap().plc.gpio.unwrap().plan();
        assert_eq!(plan.outputs.len(), 2);
        assert!(plan.outputs[&hal::gpio::OutputLine::Busy].active_low && !plan.outputs[&hal::gpio::OutputLine::Ready].active_low);
        assert!(plan.inputs[&hal::gpio::InputLine::LayerReady].active_low);
        assert_eq!(plan.verdict_mode, hal::gpio::VerdictMode::Pulse(std::time::Duration::from_millis(300)));
        let cases = [
            ("[camera]\nkind = \"replay\"\n", "camera.folder"),
            ("[camera]\nkind = \"webcam\"\n", "camera.kind"),
            ("[camera]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nwidth = 640\nheight = 480\n", "camera.pixel_format"),
            ("[camera]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nwidth = 640\nheight = 480\npixel_format = \"NV12\"\n", "camera.pixel_format"),
            ("[camera]\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nwidth = 640\nheight = 480\npixel_format = \"GREY\"\nframes_averaged = 0\n", "camera.frames_averaged"),
            ("[camera]\nkind = \"replay\"\nfolder = \"f\"\ndevice = \"/dev/video0\"\n", "camera.device"),
            ("[camera]\nkind = \"replay\"\nfolder = \"f\"\nfps = 3\n", "fps"),
            ("[trigger]\nkind = \"modbus\"\n", "trigger.kind"),
            ("[trigger]\nkind = \"timer\"\ninterval_ms = 1\n", "trigger.interval_ms"),
            ("[trigger]\nkind = \"serial\"\n", "plc.serial_line"),
            ("[trigger]\nkind = \"video\"\nsettle_threshold = 20.0\n", "trigger.settle_threshold"),
            ("[trigger]\nkind = \"timer\"\ninterval_ms = 100\nhold_ms = 5\n", "trigger.pass_threshold"),
            ("[plc.modbus_tcp]\nlisten = \"localhost\"\n", "plc.modbus_tcp.listen"),
            ("[plc.modbus_rtu]\nport = \"/dev/x\"\nparity = \"mark\"\n", "plc.modbus_rtu.parity"),
            ("[plc.modbus_rtu]\nport = \"/dev/x\"\n[plc.serial_line]\nport = \"/dev/x\"\n", "plc.serial_line.port"),
            ("[plc.serial_line]\nport = \"/dev/x\"\nbaud = 7\n", "plc.serial_line.baud"),
            ("[plc.gpio]\nchip = \"/dev/gpiochip0\"\nready = 3\nbusy = 3\n", "plc.gpio: lines ready and busy are both offset 3"),
            ("[plc.gpio]\nchip = \"/dev/gpiochip0\"\nactive_low = [\"redy\"]\n", "plc.gpio.active_low"),
            ("[plc.gpio]\nchip = \"/dev/gpiochip0\"\nverdict_mode = \"toggle\"\n", "plc.gpio.verdict_mode"),
            ("[plc.gpio]\nchip = \"/dev/gpiochip0\"\nready = 3\n[trigger]\nkind = \"gpio\"\n", "plc.gpio.layer_ready"),
        ];
        for (extra, key) in cases {
            let message = format!("{:#}", Config::parse(&format!("{base}{extra}"), "t.toml").unwrap_err());
            assert!(message.contains("t.toml") && message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn the_images_table_defaults_to_signed_images_only_and_refuses_unknown_keys() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        let config = Config::parse(base, "t.toml").unwrap();
        assert!(!config.images.allow_unsigned && config.images.trusted_keys.is_none());
        let config = Config::parse(&format!("{base}[images]\nallow_unsigned = true\ntrusted_keys = \"/etc/keys\"\n"), "t.toml").unwrap();
        assert!(config.images.allow_unsigned);
        assert_eq!(config.images.trusted_keys.as_deref(), Some(Path::new("/etc/keys")));
        let message = format!("{:#}", Config::parse(&format!("{base}[images]\nallow_unsigend = true\n"), "t.toml").unwrap_err());
        assert!(message.contains("t.toml") && message.contains("allow_unsigend"), "{message}");
    }

    #[test]
    fn rule_classes_must_exist_in_the_model() {
        let config = Config::parse("[bed]\nwidth_mm = 250\nheight_mm = 250\n[rules.porosity]\nmax_count = 0\nverdict = \"PAUSE\"\n", "t.toml").unwrap();
        let classes = vec!["background".to_string(), "lattice".to_string()];
        let message = config.check_against_classes(&classes, "t.toml").unwrap_err().to_string();
        assert!(message.contains("porosity") && message.contains("background, lattice"), "{message}");
    }
}
