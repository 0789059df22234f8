//! `bedsight run --config FILE`: the appliance loop. Wait for a layer trigger, capture,
//! analyse, tell the PLC; for ever, until SIGINT or SIGTERM (the layer in progress, or one
//! whose trigger was already accepted, is finished and its verdict sent first, then the
//! process exits 0).
//!
//! Two threads and two bounded queues:
//! - the control thread (this one) owns the trigger queue and the PLC outputs; it never blocks
//!   for long, so the heartbeat keeps beating while a layer is analysed;
//! - the analysis thread owns the camera and the pipeline (buffers allocated once at start); it
//!   takes one job at a time and reports back.
//!
//! A trigger that arrives while a layer is in progress is refused by the gate (`hal::trigger`)
//! and answered BUSY by its source; nothing queues up behind a slow model.
//!
//! The group owns the running box: its threads, its devices (camera, trigger, PLC outputs through
//! `hal`), the journal and image recorder it feeds, the dashboard it starts. It must not judge:
//! every verdict comes from `judge` and is sent as it came.

mod analysis;
mod control;
mod devices;
pub mod log;
mod systemd;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hal::modbus::{spawn_rtu_server, spawn_tcp_server, ModbusOutputs, RegisterBank};
use hal::serial::{Parity, SerialSettings};
use hal::video_trigger::RecoatDetector;
use hal::{LoopState, Outputs, Verdict, CLASSES_ON_WIRE};

use crate::config::Config;
use crate::judge::history::BuildHistory;
use crate::judge::pipeline::StageTimes;
use crate::judge::reason::{Reason, RuleKind};
use crate::record::journal::DomainRecord;
use crate::record::journal::{DefectRecord, Journal, LayerRecord};
use crate::record::layer_images::{ImageStore, SnapshotSender, VerdictSender};
use crate::web::board::{Board, Status};
use analysis::{analysis_thread, VideoWatch};
use control::{control_loop, LayerNews};
use devices::{open_camera, open_gpio, start_trigger};

/// The state folder when none is given (`--state-dir`, `BEDSIGHT_STATE_DIR`): slots, journal,
/// images, trusted keys.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bedsight";

/// The analysis thread's job: capture and analyse one layer.
struct LayerJob;

/// What the analysis thread reports.
enum AnalysisEvent {
    /// The pipeline is built (its description) or could not be.
    Started(Result<String, String>),
    /// The frame is captured; the model is running.
    Analysing,
    /// The layer's result, before the recoat budget.
    Done(Box<LayerResult>),
}

struct LayerResult {
    verdict: Verdict,
    defect_count: u32,
    total_defect_area_mm2: f64,
    largest_defect_area_mm2: f64,
    class_areas_mm2: [f64; CLASSES_ON_WIRE],
    uncertainty_score: f64,
    /// Defects per class, or the fault's reason.
    detail: String,
    frame_source: String,
    /// The camera gave no frame (the appliance cannot judge layers until it is back).
    camera_failed: bool,
    /// The model that judged the layer: name and version.
    model: String,
    /// For the journal: the model's name and version apart, the backend, the listed defects
    /// and the pipeline's timings.
    model_name: String,
    model_version: String,
    backend: String,
    defects: Vec<DefectRecord>,
    total_ms: f64,
    infer_ms: f64,
    /// Every stage's time, for /metrics (none when the camera gave no frame).
    timing: Option<StageTimes>,
    /// The rule that gave `verdict`, and the classes whose layer limits were passed.
    reason: Option<Reason>,
    tripped_classes: Vec<String>,
    /// The model's class names (for the reason codes of the track rules).
    class_names: Arc<[String]>,
    /// The layer-level head's call (`clean` or a class) and its confidence; empty without one.
    layer_class: String,
    layer_class_confidence: f32,
    /// The domain check's finding, for models with one.
    domain: Option<DomainRecord>,
}

impl LayerResult {
    fn fault(reason: String) -> LayerResult {
        LayerResult {
            verdict: Verdict::Fault,
            defect_count: 0,
            total_defect_area_mm2: 0.0,
            largest_defect_area_mm2: 0.0,
            class_areas_mm2: [0.0; CLASSES_ON_WIRE],
            uncertainty_score: 0.0,
            reason: Some(Reason {
                kind: RuleKind::Fault,
                class_index: 0,
                class: String::new(),
                text: reason.clone(),
            }),
            tripped_classes: Vec::new(),
            class_names: Arc::new([]),
            detail: reason,
            frame_source: String::new(),
            camera_failed: false,
            model: String::new(),
            model_name: String::new(),
            model_version: String::new(),
            backend: String::new(),
            defects: Vec::new(),
            total_ms: 0.0,
            infer_ms: 0.0,
            timing: None,
            layer_class: String::new(),
            layer_class_confidence: 0.0,
            domain: None,
        }
    }
}

/// Layer numbers for triggers that carry none (timer, GPIO edge, video): the next layer after a
/// verdict, the same layer again after a RECOAT.
#[derive(Debug)]
struct LayerCounter {
    next: u32,
}

impl LayerCounter {
    fn after(&mut self, layer: u32, verdict: Verdict) {
        self.next = if verdict == Verdict::Recoat {
            layer
        } else {
            layer.saturating_add(1)
        };
    }
}

/// Where each table of the configuration came from: the file, or (left out) the embedded
/// configuration and the defaults, which are the same values.
fn table_sources(config: &Config, origin: &str) -> String {
    let from_file: Vec<&str> = crate::config::TABLES
        .into_iter()
        .filter(|table| !config.defaulted_tables.contains(table))
        .collect();
    format!(
        "configuration {origin}: [{}] from the file; [{}] embedded defaults",
        from_file.join("] ["),
        config.defaulted_tables.join("] [")
    )
}

/// Runs the loop until SIGINT/SIGTERM.
pub fn run(config_path: &Path, backend: Option<&str>, state_dir: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let origin = config_path.display().to_string();
    let base_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let camera_config = config
        .camera
        .clone()
        .ok_or_else(|| anyhow!("configuration {origin}: [camera] is missing: bedsight run needs a camera"))?;
    let trigger_config = config
        .trigger
        .clone()
        .ok_or_else(|| anyhow!("configuration {origin}: [trigger] is missing: bedsight run needs a layer trigger"))?;
    tracing::info!("{}", table_sources(&config, &origin));
    tracing::info!("{}", config.frame_check.summary(config.bed.corners_px.is_some()));

    let journal_path = config.journal_file(&base_dir, state_dir);
    let (journal, opened) = Journal::open(&journal_path)?;
    tracing::info!("journal: {}: {opened}", journal_path.display());
    // The build so far: the defect map, the tracks and the recoats carry on from the journal.
    let restored = if opened.records > 0 {
        crate::record::journal::read(&journal_path)?.records
    } else {
        Vec::new()
    };
    let mut history = BuildHistory::restore(&config, &restored);
    if !restored.is_empty() {
        tracing::info!(
            "history: restored from {} journal records: {}",
            restored.len(),
            history.summary()
        );
    }
    let (board, recorder) =
        start_board_and_recorder(&config, &origin, &base_dir, state_dir, &journal_path, restored.clone())?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("cannot install the SIGINT/SIGTERM handler")?;
    }

    let camera = open_camera(&camera_config, &base_dir).with_context(|| format!("configuration {origin}: camera"))?;
    let camera_label = camera.describe();

    let (gate, mut queue) = hal::trigger_channel();
    let mut outputs: Vec<Box<dyn Outputs + Send>> = Vec::new();
    let mut threads = Vec::new();
    let plc = &config.plc;
    let mut modbus_bank = None;
    if plc.modbus_tcp.is_some() || plc.modbus_rtu.is_some() {
        let modbus_gate = (trigger_config.kind == "modbus").then(|| gate.clone());
        let bank = Arc::new(Mutex::new(RegisterBank::new(modbus_gate)));
        let mut labels = Vec::new();
        if let Some(tcp) = &plc.modbus_tcp {
            let (address, handle) =
                spawn_tcp_server(&tcp.listen, tcp.unit_id, tcp.limits(), bank.clone(), stop.clone())
                    .with_context(|| format!("configuration {origin}: plc.modbus_tcp.listen"))?;
            tracing::info!("modbus tcp: listening on {address}, unit {}", tcp.unit_id);
            labels.push(format!("Modbus TCP on {address}"));
            threads.push(handle);
        }
        if let Some(rtu) = &plc.modbus_rtu {
            let settings = SerialSettings {
                port: rtu.port.clone(),
                baud: rtu.baud,
                parity: Parity::parse(&rtu.parity).expect("checked at load"),
                stop_bits: rtu.stop_bits,
            };
            let handle = spawn_rtu_server(&settings, rtu.unit_id, bank.clone(), stop.clone())
                .with_context(|| format!("configuration {origin}: plc.modbus_rtu.port"))?;
            tracing::info!(
                "modbus rtu: serving unit {} on {} at {} baud",
                rtu.unit_id,
                rtu.port,
                rtu.baud
            );
            labels.push(format!("Modbus RTU on {}", rtu.port));
            threads.push(handle);
        }
        board.metrics.watch_modbus(bank.clone());
        modbus_bank = Some(bank.clone());
        outputs.push(Box::new(ModbusOutputs {
            bank,
            label: labels.join(" and "),
        }));
    }
    if let Some(line) = &plc.serial_line {
        let line_gate = (trigger_config.kind == "serial").then(|| gate.clone());
        let (line_outputs, handle) =
            hal::line::spawn_line_server(&SerialSettings::new(&line.port, line.baud), line_gate, stop.clone())
                .with_context(|| format!("configuration {origin}: plc.serial_line.port"))?;
        tracing::info!(
            "serial line: LAYER/VERDICT protocol on {} at {} baud",
            line.port,
            line.baud
        );
        outputs.push(Box::new(line_outputs));
        threads.push(handle);
    }
    if let Some(gpio) = &plc.gpio {
        let plan = gpio.plan();
        let acknowledged = Arc::new(AtomicBool::new(false));
        let key = if gpio.driver == "rppal" {
            "plc.gpio.driver"
        } else {
            "plc.gpio.chip"
        };
        let (lines, inputs) =
            open_gpio(&gpio.driver, &plan).with_context(|| format!("configuration {origin}: {key}"))?;
        let gpio_outputs = hal::gpio::GpioOutputs::new(lines, &plan, acknowledged.clone())
            .with_context(|| format!("configuration {origin}: plc.gpio"))?;
        if let Some(inputs) = inputs {
            let gpio_gate = (trigger_config.kind == "gpio").then(|| gate.clone());
            threads.push(hal::gpio::spawn_gpio_inputs(
                inputs,
                gpio_gate,
                acknowledged,
                plan.debounce,
                stop.clone(),
            ));
        }
        tracing::info!(
            "gpio: {} output and {} input lines on {}",
            plan.outputs.len(),
            plan.inputs.len(),
            plan.chip
        );
        outputs.push(Box::new(gpio_outputs));
    }
    let trigger_label = start_trigger(&trigger_config, &gate, &stop, &mut threads);

    let (snapshots, verdict_sender, recorder_thread) = match recorder {
        Some((snapshots, verdicts, thread)) => (Some(snapshots), Some(verdicts), Some(thread)),
        None => (None, None, None),
    };
    let (job_sender, job_receiver) = sync_channel::<LayerJob>(1);
    let (event_sender, events) = sync_channel::<AnalysisEvent>(2);
    let config_path_owned = config_path.to_path_buf();
    let backend_owned = backend.map(str::to_string);
    let video = (trigger_config.kind == "video").then(|| VideoWatch {
        detector: RecoatDetector::new(trigger_config.video_settings()),
        interval: Duration::from_millis(trigger_config.video_interval_ms()),
        gate: gate.clone(),
    });
    drop(gate);
    let state_dir_owned = state_dir.to_path_buf();
    let analysis = std::thread::Builder::new()
        .name("analysis".into())
        .spawn(move || {
            analysis_thread(
                config_path_owned,
                backend_owned,
                state_dir_owned,
                camera,
                video,
                job_receiver,
                (event_sender, snapshots),
            )
        })
        .context("cannot start the analysis thread")?;
    let model_label = match events.recv() {
        Ok(AnalysisEvent::Started(Ok(label))) => label,
        Ok(AnalysisEvent::Started(Err(error))) => bail!("{error}"),
        _ => bail!("the analysis thread stopped while starting"),
    };

    tracing::info!(
        "bedsight run: model {model_label}, camera: {camera_label}, trigger: {trigger_label}, outputs: {}",
        outputs.describe()
    );
    board.set_status(Status::new(
        &model_label,
        &camera_label,
        &trigger_label,
        &outputs.describe(),
    ));
    let dashboard = &config.dashboard;
    if dashboard.enabled {
        let (address, handle) =
            crate::web::spawn(&dashboard.address, dashboard.token.clone(), board.clone(), stop.clone())
                .with_context(|| format!("configuration {origin}: dashboard.address"))?;
        tracing::info!("dashboard: http://{address}/");
        threads.push(handle);
    }
    outputs.set_state(LoopState::Ready).map_err(|e| anyhow!("{e}"))?;
    tracing::info!("ready");
    systemd::ready(&format!(
        "judging layers: model {model_label}, trigger: {trigger_label}"
    ));

    let mut news = LayerNews {
        journal,
        board: board.clone(),
        images: verdict_sender,
    };
    let layers = control_loop(
        &config,
        &mut queue,
        &mut outputs,
        &job_sender,
        &events,
        &stop,
        &mut news,
        &mut history,
        &restored,
    )?;
    systemd::stopping();
    tracing::info!(
        "stopped after {layers} layers ({} triggers answered BUSY)",
        queue.busy_refusals()
    );
    tracing::info!("{}", history.summary());
    tracing::info!(
        "journal: {} records in {}",
        news.journal.records(),
        journal_path.display()
    );
    if let Some(bank) = &modbus_bank {
        let counters = bank.lock().unwrap_or_else(|p| p.into_inner()).counters;
        tracing::info!(
            "modbus: {} requests answered ({} with an exception), {} frames dropped for a bad CRC, {} broken frames",
            counters.requests,
            counters.exceptions,
            counters.crc_errors,
            counters.broken_frames
        );
    }
    stop.store(true, Ordering::Relaxed);
    drop(job_sender);
    analysis.join().ok();
    // The recorder finishes the images it has, then the build report is written from them.
    drop(news);
    if let Some(thread) = recorder_thread {
        thread.join().ok();
    }
    let report_path = journal_path.with_file_name("build-report.html");
    match crate::web::report::write(&journal_path, board.images_folder.as_deref(), &report_path, &config) {
        Ok(()) => tracing::info!("report: {}", report_path.display()),
        Err(error) => tracing::error!("report: {error:#}"),
    }
    for thread in threads {
        thread.join().ok();
    }
    Ok(())
}

type Recorder = (SnapshotSender, VerdictSender, std::thread::JoinHandle<()>);

/// The dashboard's state (the build so far, from the journal) and, unless `[record]` turns it
/// off, the image recorder that tells it when a layer's images are in place.
fn start_board_and_recorder(
    config: &Config,
    origin: &str,
    base_dir: &Path,
    state_dir: &Path,
    journal_path: &Path,
    history: Vec<LayerRecord>,
) -> Result<(Arc<Board>, Option<Recorder>)> {
    let images_folder = config.images_folder(base_dir, state_dir);
    let store = match &images_folder {
        Some(folder) => Some(
            ImageStore::open(folder, (config.record.max_gb * 1e9) as u64)
                .with_context(|| format!("configuration {origin}"))?,
        ),
        None => None,
    };
    let annotations = journal_path.with_file_name("annotations.jsonl");
    let board = Arc::new(Board::new(
        history,
        journal_path.to_path_buf(),
        images_folder.clone(),
        annotations,
        Status::new("starting", "", "", ""),
    )?);
    board.config.set(config.clone()).ok();
    if let Some(folder) = &images_folder {
        tracing::info!(
            "record: layer images in {} (limit {} GB)",
            folder.display(),
            config.record.max_gb
        );
    }
    let Some(store) = store else { return Ok((board, None)) };
    let news = board.clone();
    let (snapshots, verdicts, stats, thread) =
        crate::record::layer_images::spawn_recorder(store, move |index, deleted| news.images_written(index, deleted))?;
    board.metrics.watch_recorder(stats);
    Ok((board, Some((snapshots, verdicts, thread))))
}

type GpioPorts = (
    Box<dyn hal::gpio::GpioOutputPort>,
    Option<Box<dyn hal::gpio::GpioInputPort>>,
);
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_without_numbers_count_on_and_repeat_after_recoat() {
        let mut counter = LayerCounter { next: 1 };
        counter.after(1, Verdict::Pass);
        assert_eq!(counter.next, 2);
        counter.after(2, Verdict::Recoat);
        assert_eq!(counter.next, 2);
        counter.after(2, Verdict::Pause);
        assert_eq!(counter.next, 3);
    }
}
