//! The appliance's configuration file (TOML): the bed, the model, refinement, the decision rules,
//! and the tables of `bedsight run`. Every key is checked: an unknown key or an out-of-range value
//! is one error naming the file and the key, before anything runs.
//!
//! One module per table: its type, its defaults and its checks side by side. This module holds
//! the whole file's type, the checks that span tables, and where files go.
//!
//! Owns the file's meaning of every key and its limits. Must not open devices or any file but
//! the configuration itself, nor act on a value: the tables are plain data that the other groups
//! read.

mod bed;
mod camera;
mod dashboard;
mod frame_check;
mod images;
mod journal;
mod layer_classifier;
mod model;
mod plc;
mod recoat;
mod record;
mod refine;
mod rules;
mod tracks;
mod trigger;
mod uncertainty_gate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub use bed::BedConfig;
pub use camera::CameraConfig;
pub use dashboard::DashboardConfig;
pub use frame_check::{FrameCheckConfig, OcclusionAction};
pub use images::ImagesConfig;
pub use journal::JournalConfig;
pub use layer_classifier::LayerClassifierConfig;
pub use model::{parse_backend, parse_precision, ModelConfig};
pub use plc::{GpioConfig, ModbusRtuConfig, ModbusTcpConfig, PlcConfig, SerialLineConfig};
pub use recoat::{RecoatConfig, DEFAULT_RECOAT_FIXABLE};
pub use record::RecordConfig;
pub use refine::RefineConfig;
pub use rules::{ClassRule, TrackRule};
pub use tracks::TracksConfig;
pub use trigger::TriggerConfig;
pub use uncertainty_gate::UncertaintyGate;

/// The configuration that ships inside the binary; `bedsight demo` and `analyze` use it when no
/// `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/bedsight.toml"));

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
    /// Per-class rules, keyed by the class name of the model image; without the table, the
    /// embedded configuration's.
    #[serde(default = "rules::embedded")]
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
    /// The tables the file left out, which hold the embedded configuration's values (`[rules]`)
    /// or their defaults (the others; equal to the embedded ones, a test holds them so).
    #[serde(skip)]
    pub defaulted_tables: Vec<&'static str>,
}

/// Every table a configuration file may hold, in the order `bedsight run` lists them.
pub const TABLES: [&str; 16] = [
    "bed",
    "model",
    "refine",
    "frame_check",
    "uncertainty_gate",
    "layer_classifier",
    "recoat",
    "rules",
    "tracks",
    "images",
    "camera",
    "trigger",
    "plc",
    "journal",
    "record",
    "dashboard",
];

fn yes() -> bool {
    true
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

    /// Reads and checks a configuration file. A relative `bed.flat_field` or
    /// `frame_check.reference` is taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("configuration {}: cannot read it", path.display()))?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let folder = path.parent().unwrap_or(Path::new(""));
        if let Some(flat_field) = &mut config.bed.flat_field {
            *flat_field = folder.join(&*flat_field);
        }
        if let Some(reference) = &mut config.frame_check.reference {
            *reference = folder.join(&*reference);
        }
        Ok(config)
    }

    /// The configuration embedded in the binary.
    pub fn embedded() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "embedded bedsight.toml").expect("the embedded configuration is valid")
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("configuration {origin}: {}", e.to_string().trim()))?;
        // Parsed again as a table only to see which tables the file holds (it parsed above).
        let present: toml::Table = toml::from_str(text).unwrap_or_default();
        config.defaulted_tables = TABLES
            .into_iter()
            .filter(|table| !present.contains_key(*table))
            .collect();
        config.check().with_context(|| format!("configuration {origin}"))?;
        Ok(config)
    }

    /// Every table's own checks, then those that span tables; the first problem is the error.
    fn check(&self) -> Result<()> {
        self.bed.check()?;
        self.model.check()?;
        self.frame_check.check(self.bed.corners_px.is_some())?;
        self.uncertainty_gate.check()?;
        self.layer_classifier.check()?;
        self.recoat.check()?;
        rules::check(&self.rules)?;
        self.tracks.check(&self.bed)?;
        self.record.check()?;
        self.dashboard.check()?;
        // `[camera]`, `[trigger]` and `[plc]`: only `bedsight run` uses them, but they are
        // checked whenever the file is read.
        if let Some(camera) = &self.camera {
            camera.check()?;
        }
        self.plc.check()?;
        if let Some(trigger) = &self.trigger {
            trigger.check(&self.plc)?;
        }
        Ok(())
    }

    /// Checks the names in the configuration against the classes of the model it will run, and
    /// that every defect class (`defect[i]` for `class_names[i]`) has a rule: a class the model
    /// finds and no rule judges would pass every layer silently.
    pub fn check_against_classes(&self, class_names: &[String], defect: &[bool], origin: &str) -> Result<()> {
        let unjudged: Vec<&String> = class_names
            .iter()
            .zip(defect)
            .filter(|(class, defect)| **defect && !self.rules.contains_key(*class))
            .map(|(class, _)| class)
            .collect();
        match unjudged.as_slice() {
            [] => {}
            [class] => bail!(
                "configuration {origin}: rules.{class} is missing: the model finds {class} and no rule judges it; \
                 add [rules.{class}] with a limit and a verdict, or verdict = \"ignore\" to let it through"
            ),
            classes => bail!(
                "configuration {origin}: rules.{} are missing: the model finds these classes and no rule judges them; \
                 add [rules.<class>] with a limit and a verdict for each, or verdict = \"ignore\" to let one through",
                classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", rules.")
            ),
        }
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
        for class in self.tracks.along_blade.iter().flatten() {
            if !class_names.contains(class) {
                bail!("configuration {origin}: tracks.along_blade: the model has no class {class:?} (it has: {known})");
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
        self.model.backend_choice()
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

    /// docs/bedsight-reference.toml: every table and key, with what it does.
    const REFERENCE: &str = include_str!("../../../docs/bedsight-reference.toml");

    /// The keys a table of the reference names, live or in a commented `# key =` line, and the
    /// sub-tables under it (`plc` -> `modbus_tcp`, ...), by table path ("" for the top).
    fn documented_keys(text: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut keys: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
        let mut table = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.split(']').next()) {
                table = header.trim().to_string();
                let mut parent = String::new();
                for part in table.split('.') {
                    keys.entry(parent.clone()).or_default().insert(part.to_string());
                    parent = if parent.is_empty() {
                        part.to_string()
                    } else {
                        format!("{parent}.{part}")
                    };
                }
                continue;
            }
            let line = trimmed.strip_prefix('#').map(str::trim_start).unwrap_or(trimmed);
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    keys.entry(table.clone()).or_default().insert(key.to_string());
                }
            }
        }
        keys
    }

    /// The fields serde says `table` takes: the "expected" list of the error for a key it does
    /// not know, put under the table's header (or at the top).
    fn fields_taken(table: &str) -> Vec<String> {
        let text = if table.is_empty() {
            format!("zz_not_a_key = 1\n{REFERENCE}")
        } else {
            // at the header's line (the rest of that line, a comment, stays a comment)
            REFERENCE.replacen(&format!("\n[{table}]"), &format!("\n[{table}]\nzz_not_a_key = 1\n#"), 1)
        };
        let message = format!(
            "{:#}",
            Config::parse(&text, "reference").expect_err("an unknown key is refused")
        );
        let expected = message
            .split("unknown field `zz_not_a_key`, expected")
            .nth(1)
            .unwrap_or_else(|| panic!("[{table}]: {message}"));
        expected.split('`').skip(1).step_by(2).map(String::from).collect()
    }

    #[test]
    fn the_reference_configuration_parses_and_documents_every_key_the_code_takes() {
        Config::parse(REFERENCE, "docs/bedsight-reference.toml").unwrap();
        let documented = documented_keys(REFERENCE);
        let mut tables: Vec<String> = documented.keys().filter(|t| !t.starts_with("rules")).cloned().collect();
        // one class rule and its track rule stand for every class
        tables.extend([
            "rules.super-elevation".to_string(),
            "rules.super-elevation.track".to_string(),
        ]);
        for table in tables {
            if table == "plc" {
                continue; // no header of its own: its fields are the [plc.*] tables, checked below
            }
            let taken = fields_taken(&table);
            assert!(!taken.is_empty(), "[{table}]");
            for field in &taken {
                assert!(
                    documented.get(&table).is_some_and(|keys| keys.contains(field)),
                    "[{table}] {field}: taken by the code, not in docs/bedsight-reference.toml"
                );
            }
        }
        let plc: std::collections::BTreeSet<String> = ["modbus_tcp", "modbus_rtu", "serial_line", "gpio"]
            .map(String::from)
            .into();
        assert_eq!(documented["plc"], plc);
        // every top-level table is there
        for table in TABLES {
            assert!(
                documented[""].contains(table),
                "[{table}] is not in docs/bedsight-reference.toml"
            );
        }
    }

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
        let message = format!(
            "{:#}",
            Config::parse(&format!("{base}[journal]\nfile = \"x\"\n"), "test.toml").unwrap_err()
        );
        assert!(message.contains("test.toml") && message.contains("file"), "{message}");
    }

    #[test]
    fn record_and_dashboard_tables_are_checked() {
        let base = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";
        let config = Config::parse(base, "test.toml").unwrap();
        assert!(config.record.enabled && config.record.max_gb == 20.0);
        assert!(
            config.dashboard.enabled
                && config.dashboard.address == "127.0.0.1:8080"
                && config.dashboard.token.is_none()
        );
        let config = Config::parse(
            &format!("{base}[dashboard]\ntoken = \"s3cret-token\"\n[record]\nmax_gb = 0.5\n"),
            "test.toml",
        )
        .unwrap();
        let dashboard = config.dashboard;
        assert_eq!(
            (dashboard.address.as_str(), dashboard.token.as_deref()),
            ("127.0.0.1:8080", Some("s3cret-token"))
        );
        assert_eq!(config.record.max_gb, 0.5);
        for (table, needle) in [
            ("[record]\nmax_gb = 0\n", "record.max_gb"),
            ("[dashboard]\naddress = \"localhost\"\n", "dashboard.address"),
            ("[dashboard]\ntoken = \"short\"\n", "dashboard.token"),
        ] {
            let message = format!(
                "{:#}",
                Config::parse(&format!("{base}{table}"), "test.toml").unwrap_err()
            );
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
            (
                "[rules.streaking]\nmax_total_area_mm2 = -1\nverdict = \"RECOAT\"\n",
                "rules.streaking.max_total_area_mm2",
            ),
            (
                "[rules.streaking]\nmax_count = 1\nverdict = \"PASS\"\n",
                "rules.streaking.verdict",
            ),
            ("[model]\nbackend = \"gpu\"\n", "model.backend"),
            ("[model]\nmin_defect_area_mm2 = -1\n", "model.min_defect_area_mm2"),
            ("[model]\nmin_defect_area_mm2 = nan\n", "model.min_defect_area_mm2"),
        ];
        for (extra, key) in cases {
            let message = format!(
                "{:#}",
                Config::parse(&format!("{base}{extra}"), "test.toml").unwrap_err()
            );
            assert!(
                message.contains("test.toml") && message.contains(key),
                "{key}: {message}"
            );
        }
        let message = format!(
            "{:#}",
            Config::parse("[bed]\nwidth_mm = 0\nheight_mm = 250\n", "test.toml").unwrap_err()
        );
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
        let settings = Config::parse(&v4l2, "t.toml")
            .unwrap()
            .camera
            .unwrap()
            .v4l2_settings()
            .unwrap();
        assert_eq!(
            (
                settings.width,
                settings.format,
                settings.frames_averaged,
                settings.exposure
            ),
            (1280, hal::v4l2::PixelFormat::Y16, 4, Some(50))
        );
        let plan = Config::parse(&gpio, "t.toml").unwrap().plc.gpio.unwrap().plan();
        assert_eq!(plan.outputs.len(), 2);
        assert!(
            plan.outputs[&hal::gpio::OutputLine::Busy].active_low
                && !plan.outputs[&hal::gpio::OutputLine::Ready].active_low
        );
        assert!(plan.inputs[&hal::gpio::InputLine::LayerReady].active_low);
        assert_eq!(
            plan.verdict_mode,
            hal::gpio::VerdictMode::Pulse(std::time::Duration::from_millis(300))
        );
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
        let config = Config::parse(
            &format!("{base}[images]\nallow_unsigned = true\ntrusted_keys = \"/etc/keys\"\n"),
            "t.toml",
        )
        .unwrap();
        assert!(config.images.allow_unsigned);
        assert_eq!(config.images.trusted_keys.as_deref(), Some(Path::new("/etc/keys")));
        let message = format!(
            "{:#}",
            Config::parse(&format!("{base}[images]\nallow_unsigend = true\n"), "t.toml").unwrap_err()
        );
        assert!(
            message.contains("t.toml") && message.contains("allow_unsigend"),
            "{message}"
        );
    }

    #[test]
    fn rule_classes_must_exist_in_the_model() {
        let config = Config::parse(
            "[bed]\nwidth_mm = 250\nheight_mm = 250\n[rules.porosity]\nmax_count = 0\nverdict = \"PAUSE\"\n",
            "t.toml",
        )
        .unwrap();
        let classes = vec!["background".to_string(), "lattice".to_string()];
        let message = config
            .check_against_classes(&classes, &[false, false], "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("porosity") && message.contains("background, lattice"),
            "{message}"
        );
    }

    const BED: &str = "[bed]\nwidth_mm = 250\nheight_mm = 250\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn modbus_tcp_keeps_four_clients_and_closes_them_after_a_minute_idle_unless_told() {
        let tcp = |extra: &str| format!("{BED}[plc.modbus_tcp]\nlisten = \"127.0.0.1:1502\"\n{extra}");
        let config = Config::parse(&tcp(""), "t.toml").unwrap();
        let limits = config.plc.modbus_tcp.unwrap().limits();
        assert_eq!((limits.max_clients, limits.idle_timeout.as_secs()), (4, 60));
        let config = Config::parse(&tcp("max_clients = 8\nidle_timeout_s = 5\n"), "t.toml").unwrap();
        let limits = config.plc.modbus_tcp.unwrap().limits();
        assert_eq!((limits.max_clients, limits.idle_timeout.as_secs()), (8, 5));
        let message = |extra: &str| format!("{:#}", Config::parse(&tcp(extra), "t.toml").unwrap_err());
        assert_eq!(
            message("max_clients = 0\n"),
            "configuration t.toml: plc.modbus_tcp.max_clients must be in 1..32, got 0"
        );
        assert_eq!(
            message("idle_timeout_s = 0\n"),
            "configuration t.toml: plc.modbus_tcp.idle_timeout_s must be in 1..86400 seconds, got 0"
        );
    }

    #[test]
    fn a_file_without_rules_takes_the_embedded_rules_and_says_so() {
        let config = Config::parse(BED, "t.toml").unwrap();
        let embedded = Config::embedded();
        assert_eq!(format!("{:?}", config.rules), format!("{:?}", embedded.rules));
        assert!(config.rules.contains_key("super-elevation") && config.rules.contains_key("streaking"));
        assert!(config.defaulted_tables.contains(&"rules") && !config.defaulted_tables.contains(&"bed"));
        assert!(embedded.defaulted_tables.contains(&"camera") && !embedded.defaulted_tables.contains(&"rules"));
    }

    #[test]
    fn the_smallest_defect_is_an_area_of_bed_whatever_the_models_resolution() {
        let model = Config::embedded().model;
        // 250 mm over 256 px: 0.954 mm² a pixel, so 5 mm² is 5.24 px: components from 6 px
        assert_eq!(model.min_defect_area_px(250.0 / 256.0), 6);
        // over 1024 px: 0.0596 mm² a pixel, 5 mm² is 83.9 px
        assert_eq!(model.min_defect_area_px(250.0 / 1024.0), 84);
        // exactly four pixels' area is four pixels
        let config = Config::parse(&format!("{BED}[model]\nmin_defect_area_mm2 = 1.0\n"), "t.toml").unwrap();
        assert_eq!(config.model.min_defect_area_px(0.5), 4);
        // the pixel count it replaced is refused by name, and the error names the key to use
        let message = format!(
            "{:#}",
            Config::parse(&format!("{BED}[model]\nmin_defect_area_px = 6\n"), "t.toml").unwrap_err()
        );
        assert!(
            message.contains("t.toml")
                && message.contains("min_defect_area_px")
                && message.contains("min_defect_area_mm2"),
            "{message}"
        );
    }

    #[test]
    fn every_other_tables_default_is_the_embedded_value() {
        // A table left out takes its default; these must be what the embedded file says, so a
        // file without the table behaves as the shipped configuration.
        let bare = Config::parse(BED, "t.toml").unwrap();
        let embedded = Config::embedded();
        for (table, bare, embedded) in [
            ("model", format!("{:?}", bare.model), format!("{:?}", embedded.model)),
            ("refine", format!("{:?}", bare.refine), format!("{:?}", embedded.refine)),
            (
                "frame_check",
                format!("{:?}", bare.frame_check),
                format!("{:?}", embedded.frame_check),
            ),
            (
                "uncertainty_gate",
                format!("{:?}", bare.uncertainty_gate),
                format!("{:?}", embedded.uncertainty_gate),
            ),
            (
                "layer_classifier",
                format!("{:?}", bare.layer_classifier),
                format!("{:?}", embedded.layer_classifier),
            ),
            ("recoat", format!("{:?}", bare.recoat), format!("{:?}", embedded.recoat)),
            ("tracks", format!("{:?}", bare.tracks), format!("{:?}", embedded.tracks)),
        ] {
            assert_eq!(bare, embedded, "[{table}]");
        }
    }

    #[test]
    fn a_defect_class_without_a_rule_is_refused_unless_ignored_on_purpose() {
        let classes = names(&["background", "incompleteness", "hopping", "lattice"]);
        let defect = [false, true, true, false];
        let partial = format!("{BED}[rules.incompleteness]\nmax_count = 0\nverdict = \"RECOAT\"\n");
        let config = Config::parse(&partial, "t.toml").unwrap();
        let message = config
            .check_against_classes(&classes, &defect, "t.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "configuration t.toml: rules.hopping is missing: the model finds hopping and no rule judges it; \
             add [rules.hopping] with a limit and a verdict, or verdict = \"ignore\" to let it through"
        );
        let ignored = format!("{partial}[rules.hopping]\nverdict = \"ignore\"\n");
        let config = Config::parse(&ignored, "t.toml").unwrap();
        config.check_against_classes(&classes, &defect, "t.toml").unwrap();
        assert!(config.rules["hopping"].is_ignore());
    }

    #[test]
    fn a_rule_that_sets_nothing_or_ignores_with_limits_is_refused() {
        let message = |text: &str| format!("{:#}", Config::parse(&format!("{BED}{text}"), "t.toml").unwrap_err());
        assert_eq!(
            message("[rules.hopping]\n"),
            "configuration t.toml: rules.hopping sets nothing: give a limit and a verdict, or verdict = \"ignore\" to let hopping through"
        );
        assert_eq!(
            message("[rules.hopping]\nmax_count = 0\nverdict = \"ignore\"\n"),
            "configuration t.toml: rules.hopping.verdict = \"ignore\" takes no limit and no track: remove them, or give a verdict"
        );
        assert!(message("[rules.hopping]\nmax_count = 0\nverdict = \"PASS\"\n")
            .contains("must be RECOAT, REVIEW, PAUSE or ignore"));
    }
}
