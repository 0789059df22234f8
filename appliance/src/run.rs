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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hal::modbus::{spawn_rtu_server, spawn_tcp_server, ModbusOutputs, RegisterBank};
use hal::serial::{Parity, SerialSettings};
use hal::video_trigger::RecoatDetector;
use images::ActiveGeneration;
use hal::{Camera, LoopState, Outputs, ReplayCamera, Trigger, TriggerError, TriggerSource, Verdict, VerdictMessage, CLASSES_ON_WIRE};

use crate::config::{CameraConfig, Config, TriggerConfig};
use crate::decide::RecoatBudget;
use crate::defect_map::Footprint;
use crate::history::BuildHistory;
use crate::journal::{DefectRecord, Journal, LayerRecord};
use crate::layer_images::{ImageStore, JudgedLayer, LayerVerdict, SnapshotSender, VerdictSender};
use crate::model::LoadedModel;
use crate::pipeline::{Pipeline, StageTimes};
use crate::reason::{Reason, RuleKind};
use crate::report::defect_summary;
use crate::web::board::{Board, Status};

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
            reason: Some(Reason { kind: RuleKind::Fault, class_index: 0, class: String::new(), text: reason.clone() }),
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
        self.next = if verdict == Verdict::Recoat { layer } else { layer.saturating_add(1) };
    }
}

/// Runs the loop until SIGINT/SIGTERM.
pub fn run(config_path: &Path, backend: Option<&str>, state_dir: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    let origin = config_path.display().to_string();
    let base_dir = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let camera_config = config.camera.clone().ok_or_else(|| anyhow!("configuration {origin}: [camera] is missing: bedsight run needs a camera"))?;
    let trigger_config =
        config.trigger.clone().ok_or_else(|| anyhow!("configuration {origin}: [trigger] is missing: bedsight run needs a layer trigger"))?;

    let journal_path = config.journal_file(&base_dir, state_dir);
    let (journal, opened) = Journal::open(&journal_path)?;
    println!("journal: {}: {opened}", journal_path.display());
    // The build so far: the defect map, the tracks and the recoats carry on from the journal.
    let restored = if opened.records > 0 { crate::journal::read(&journal_path)?.records } else { Vec::new() };
    let mut history = BuildHistory::restore(&config, &restored);
    if !restored.is_empty() {
        println!("history: restored from {} journal records: {}", restored.len(), history.summary());
    }
    let (board, recorder) = start_board_and_recorder(&config, &origin, &base_dir, state_dir, &journal_path, restored.clone())?;

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
            let (address, handle) = spawn_tcp_server(&tcp.listen, tcp.unit_id, bank.clone(), stop.clone())
                .with_context(|| format!("configuration {origin}: plc.modbus_tcp.listen"))?;
            println!("modbus tcp: listening on {address}, unit {}", tcp.unit_id);
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
            println!("modbus rtu: serving unit {} on {} at {} baud", rtu.unit_id, rtu.port, rtu.baud);
            labels.push(format!("Modbus RTU on {}", rtu.port));
            threads.push(handle);
        }
        modbus_bank = Some(bank.clone());
        outputs.push(Box::new(ModbusOutputs { bank, label: labels.join(" and ") }));
    }
    if let Some(line) = &plc.serial_line {
        let line_gate = (trigger_config.kind == "serial").then(|| gate.clone());
        let (line_outputs, handle) = hal::line::spawn_line_server(&SerialSettings::new(&line.port, line.baud), line_gate, stop.clone())
            .with_context(|| format!("configuration {origin}: plc.serial_line.port"))?;
        println!("serial line: LAYER/VERDICT protocol on {} at {} baud", line.port, line.baud);
        outputs.push(Box::new(line_outputs));
        threads.push(handle);
    }
    if let Some(gpio) = &plc.gpio {
        let plan = gpio.plan();
        let acknowledged = Arc::new(AtomicBool::new(false));
        let key = if gpio.driver == "rppal" { "plc.gpio.driver" } else { "plc.gpio.chip" };
        let (lines, inputs) = open_gpio(&gpio.driver, &plan).with_context(|| format!("configuration {origin}: {key}"))?;
        let gpio_outputs = hal::gpio::GpioOutputs::new(lines, &plan, acknowledged.clone()).with_context(|| format!("configuration {origin}: plc.gpio"))?;
        if let Some(inputs) = inputs {
            let gpio_gate = (trigger_config.kind == "gpio").then(|| gate.clone());
            threads.push(hal::gpio::spawn_gpio_inputs(inputs, gpio_gate, acknowledged, plan.debounce, stop.clone()));
        }
        println!("gpio: {} output and {} input lines on {}", plan.outputs.len(), plan.inputs.len(), plan.chip);
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
        .spawn(move || analysis_thread(config_path_owned, backend_owned, state_dir_owned, camera, video, job_receiver, (event_sender, snapshots)))
        .context("cannot start the analysis thread")?;
    let model_label = match events.recv() {
        Ok(AnalysisEvent::Started(Ok(label))) => label,
        Ok(AnalysisEvent::Started(Err(error))) => bail!("{error}"),
        _ => bail!("the analysis thread stopped while starting"),
    };

    println!(
        "bedsight run: model {model_label}, camera: {camera_label}, trigger: {trigger_label}, outputs: {}",
        outputs.describe()
    );
    board.set_status(Status::new(&model_label, &camera_label, &trigger_label, &outputs.describe()));
    let dashboard = &config.dashboard;
    if dashboard.enabled {
        let (address, handle) = crate::web::spawn(&dashboard.address, dashboard.token.clone(), board.clone(), stop.clone())
            .with_context(|| format!("configuration {origin}: dashboard.address"))?;
        println!("dashboard: http://{address}/");
        threads.push(handle);
    }
    outputs.set_state(LoopState::Ready).map_err(|e| anyhow!("{e}"))?;
    println!("ready");
    std::io::stdout().flush().ok();

    let mut news = LayerNews { journal, board: board.clone(), images: verdict_sender };
    let layers = control_loop(&config, &mut queue, &mut outputs, &job_sender, &events, &stop, &mut news, &mut history, &restored)?;
    println!("stopped after {layers} layers ({} triggers answered BUSY)", queue.busy_refusals());
    println!("{}", history.summary());
    println!("journal: {} records in {}", news.journal.records(), journal_path.display());
    if let Some(bank) = &modbus_bank {
        let counters = bank.lock().unwrap_or_else(|p| p.into_inner()).counters;
        println!(
            "modbus: {} requests answered ({} with an exception), {} frames dropped for a bad CRC, {} broken frames",
            counters.requests, counters.exceptions, counters.crc_errors, counters.broken_frames
        );
    }
    std::io::stdout().flush().ok();
    stop.store(true, Ordering::Relaxed);
    drop(job_sender);
    analysis.join().ok();
    // The recorder finishes the images it has, then the build report is written from them.
    drop(news);
    if let Some(thread) = recorder_thread {
        thread.join().ok();
    }
    let report_path = journal_path.with_file_name("build-report.html");
    match crate::build_report::write(&journal_path, board.images_folder.as_deref(), &report_path, &config) {
        Ok(()) => println!("report: {}", report_path.display()),
        Err(error) => eprintln!("report: {error:#}"),
    }
    for thread in threads {
        thread.join().ok();
    }
    Ok(())
}

type Recorder = (SnapshotSender, VerdictSender, std::thread::JoinHandle<()>);

/// The dashboard's state (the build so far, from the journal) and, unless `[record]` turns it
/// off, the image recorder that tells it when a layer's images are in place.
fn start_board_and_recorder(config: &Config, origin: &str, base_dir: &Path, state_dir: &Path, journal_path: &Path, history: Vec<LayerRecord>) -> Result<(Arc<Board>, Option<Recorder>)> {
    let images_folder = config.images_folder(base_dir, state_dir);
    let store = match &images_folder {
        Some(folder) => Some(ImageStore::open(folder, (config.record.max_gb * 1e9) as u64).with_context(|| format!("configuration {origin}"))?),
        None => None,
    };
    let annotations = journal_path.with_file_name("annotations.jsonl");
    let board = Arc::new(Board::new(history, journal_path.to_path_buf(), images_folder.clone(), annotations, Status::new("starting", "", "", ""))?);
    board.config.set(config.clone()).ok();
    if let Some(folder) = &images_folder {
        println!("record: layer images in {} (limit {} GB)", folder.display(), config.record.max_gb);
    }
    let Some(store) = store else { return Ok((board, None)) };
    let news = board.clone();
    let (snapshots, verdicts, stats, thread) = crate::layer_images::spawn_recorder(store, move |index, deleted| news.images_written(index, deleted))?;
    board.metrics.watch_recorder(stats);
    Ok((board, Some((snapshots, verdicts, thread))))
}

type GpioPorts = (Box<dyn hal::gpio::GpioOutputPort>, Option<Box<dyn hal::gpio::GpioInputPort>>);

/// The GPIO driver the configuration names: its outputs, and its inputs when any are wired.
fn open_gpio(driver: &str, plan: &hal::gpio::GpioPlan) -> Result<GpioPorts> {
    match driver {
        #[cfg(feature = "rppal")]
        "rppal" => {
            let outputs = hal::gpio::rpi::RppalOutputs::open(plan)?;
            let inputs = if plan.inputs.is_empty() { None } else { Some(Box::new(hal::gpio::rpi::RppalInputs::open(plan)?) as Box<dyn hal::gpio::GpioInputPort>) };
            Ok((Box::new(outputs), inputs))
        }
        #[cfg(not(feature = "rppal"))]
        "rppal" => bail!("this bedsight was built without Raspberry Pi GPIO: build it with --features rppal, or use driver = \"cdev\""),
        _ => {
            let outputs = hal::gpio::cdev::CdevOutputs::open(plan)?;
            let inputs = if plan.inputs.is_empty() { None } else { Some(Box::new(hal::gpio::cdev::CdevInputs::open(plan)?) as Box<dyn hal::gpio::GpioInputPort>) };
            Ok((Box::new(outputs), inputs))
        }
    }
}

fn open_camera(camera: &CameraConfig, base_dir: &Path) -> Result<Box<dyn Camera + Send>> {
    match camera.kind.as_str() {
        "replay" => {
            let folder = camera.folder.as_ref().expect("checked at load");
            let folder: PathBuf = if folder.is_absolute() { folder.clone() } else { base_dir.join(folder) };
            let replay = ReplayCamera::from_folder(&folder).map_err(|e| anyhow!("camera.folder: {e}"))?;
            Ok(Box::new(replay.repeating(camera.repeat)))
        }
        "v4l2" => {
            let settings = camera.v4l2_settings().expect("checked at load");
            let v4l2 = hal::v4l2::V4l2Camera::open(settings).map_err(|e| anyhow!("camera.device: {e}"))?;
            Ok(Box::new(v4l2))
        }
        other => bail!("camera.kind {other:?} is not available"),
    }
}

/// Starts the trigger source that is not a PLC protocol (the timer); returns its description.
fn start_trigger(trigger: &TriggerConfig, gate: &hal::TriggerGate, stop: &Arc<AtomicBool>, threads: &mut Vec<std::thread::JoinHandle<()>>) -> String {
    match trigger.kind.as_str() {
        "timer" => {
            let interval = Duration::from_millis(trigger.interval_ms.expect("checked at load"));
            threads.push(hal::trigger::spawn_timer(gate.clone(), interval, stop.clone()));
            format!("timer every {} ms", interval.as_millis())
        }
        "modbus" => "Modbus command register 102".into(),
        "serial" => "LAYER lines on the serial line".into(),
        "gpio" => "the GPIO LAYER_READY line".into(),
        "video" => {
            let video = trigger.video_settings();
            format!(
                "the video (recoater: change > {}, settled: change < {} for {} ms)",
                video.pass_threshold,
                video.settle_threshold,
                video.hold.as_millis()
            )
        }
        other => other.to_string(),
    }
}

/// Builds the pipeline on this thread (the model's backend stays where it was made), then
/// analyses one layer per job until the job queue closes.
/// The video trigger: preview frames between layers go through the recoat detector.
struct VideoWatch {
    detector: RecoatDetector,
    interval: Duration,
    gate: hal::TriggerGate,
}

/// Waits for the next job; with a video trigger, watches the bed meanwhile. `None`: the
/// control thread is gone.
fn next_job(jobs: &Receiver<LayerJob>, camera: &mut Box<dyn Camera + Send>, video: &mut Option<VideoWatch>) -> Option<LayerJob> {
    let Some(watch) = video else { return jobs.recv().ok() };
    loop {
        match jobs.recv_timeout(watch.interval) {
            Ok(job) => return Some(job),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if watch.gate.is_busy() {
            continue;
        }
        // A preview frame that cannot be had is skipped; the layer's own capture reports it.
        if let Ok(frame) = camera.preview() {
            if watch.detector.push(&frame.image, Instant::now()) {
                let _ = watch.gate.request(None, TriggerSource::Video);
            }
        }
    }
}

/// The loop's model: the configuration's fixed `[model] image` when set; otherwise the image
/// active in the slots under `state_dir` (what `bedsight image install` activated), and the
/// embedded one on a box where nothing is installed yet.
fn load_pipeline(config_path: &Path, backend: Option<&str>, state_dir: &Path) -> Result<(Pipeline, Option<ActiveGeneration>)> {
    let config = Config::load(config_path)?;
    if config.model.image.is_none() && matches!(images::active_generation(state_dir), Ok(Some(_))) {
        let choice = match backend {
            Some(word) => crate::config::parse_backend(word).context("--backend")?,
            None => config.backend_choice(),
        };
        if let Some((model, generation)) = LoadedModel::load_active(state_dir, choice, config.model.prefer_fp32)? {
            return Ok((Pipeline::new(config, model, &config_path.display().to_string())?, Some(generation)));
        }
    }
    Ok((crate::build_pipeline(Some(config_path), None, backend, false)?, None))
}

/// Between layers: when a new image has been activated in the slots, load it and run the next
/// layer on it. An image that does not load leaves the running model in place.
fn follow_active_image(pipeline: &mut Pipeline, generation: &mut Option<ActiveGeneration>, config_path: &Path, backend: Option<&str>, state_dir: &Path) {
    let Ok(Some(active)) = images::active_generation(state_dir) else { return };
    if generation.as_ref() == Some(&active) {
        return;
    }
    match load_pipeline(config_path, backend, state_dir) {
        Ok((next, next_generation)) => {
            println!("model: now {} {} from slot {} on {}", next.model.name, next.model.version, active.slot, next.model.backend_label());
            *pipeline = next;
            *generation = next_generation;
        }
        Err(error) => {
            eprintln!("model: the newly active image in {} did not load; still running {} {}: {error:#}", state_dir.display(), pipeline.model.name, pipeline.model.version);
            *generation = Some(active);
        }
    }
}

fn analysis_thread(
    config_path: PathBuf,
    backend: Option<String>,
    state_dir: PathBuf,
    mut camera: Box<dyn Camera + Send>,
    mut video: Option<VideoWatch>,
    jobs: Receiver<LayerJob>,
    (events, snapshots): (SyncSender<AnalysisEvent>, Option<SnapshotSender>),
) {
    let mut seq = 0u64;
    let (mut pipeline, mut generation) = match load_pipeline(&config_path, backend.as_deref(), &state_dir) {
        Ok(loaded) => loaded,
        Err(error) => {
            events.send(AnalysisEvent::Started(Err(format!("{error:#}")))).ok();
            return;
        }
    };
    let label = format!("{} {} on {}", pipeline.model.name, pipeline.model.version, pipeline.model.backend_label());
    if events.send(AnalysisEvent::Started(Ok(label))).is_err() {
        return;
    }
    while let Some(LayerJob) = next_job(&jobs, &mut camera, &mut video) {
        seq += 1;
        if pipeline.config.model.image.is_none() {
            follow_active_image(&mut pipeline, &mut generation, &config_path, backend.as_deref(), &state_dir);
        }
        let frame = match camera.capture() {
            Ok(frame) => frame,
            Err(error) => {
                let mut result = LayerResult::fault(format!("camera: {error}"));
                result.camera_failed = true;
                result.model = format!("{} {}", pipeline.model.name, pipeline.model.version);
                result.model_name = pipeline.model.name.clone();
                result.model_version = pipeline.model.version.clone();
                result.backend = pipeline.model.backend_label();
                if events.send(AnalysisEvent::Done(Box::new(result))).is_err() {
                    return;
                }
                continue;
            }
        };
        if events.send(AnalysisEvent::Analysing).is_err() {
            return;
        }
        let outcome = pipeline.run_layer(&frame.image);
        let mm_per_px = pipeline.bed_mm_per_px_xy();
        let detail = match &outcome.fault {
            Some(reason) => reason.clone(),
            None => defect_summary(&outcome, &pipeline.model.class_names),
        };
        let result = LayerResult {
            verdict: outcome.verdict,
            defect_count: outcome.totals.count,
            total_defect_area_mm2: outcome.totals.total_area_mm2,
            largest_defect_area_mm2: outcome.totals.largest_area_mm2,
            class_areas_mm2: outcome.totals.class_areas_mm2,
            uncertainty_score: outcome.decision.as_ref().map(|d| d.uncertainty_score).unwrap_or(0.0),
            detail,
            frame_source: frame.source,
            camera_failed: false,
            model: format!("{} {}", pipeline.model.name, pipeline.model.version),
            model_name: pipeline.model.name.clone(),
            model_version: pipeline.model.version.clone(),
            backend: pipeline.model.backend_label(),
            defects: outcome
                .defects
                .iter()
                .map(|d| DefectRecord {
                    class: pipeline.model.class_names.get(d.class as usize).cloned().unwrap_or_else(|| format!("class {}", d.class)),
                    area_mm2: d.area_mm2,
                    bbox: d.bbox,
                    bbox_mm: Footprint::from_bbox_px(d.bbox, mm_per_px).to_xywh(),
                    centroid: d.centroid,
                    mean_uncertainty: d.mean_uncertainty,
                })
                .collect(),
            total_ms: outcome.timing.total_ms,
            infer_ms: outcome.timing.infer_ms,
            timing: Some(outcome.timing),
            reason: match &outcome.fault {
                Some(fault) => Some(Reason { kind: RuleKind::Fault, class_index: 0, class: String::new(), text: fault.clone() }),
                None => outcome.decision.as_ref().and_then(|d| d.reason.clone()),
            },
            tripped_classes: outcome.decision.as_ref().map(|d| d.tripped_classes.clone()).unwrap_or_default(),
            class_names: pipeline.model.class_names.clone(),
        };
        if events.send(AnalysisEvent::Done(Box::new(result))).is_err() {
            return;
        }
        // The PLC has its verdict on the way: now copy the layer's pixels for the recorder.
        if let Some(snapshots) = &snapshots {
            snapshots.offer(|snapshot| match outcome.fault {
                None => snapshot.fill(
                    seq,
                    &frame.image,
                    &JudgedLayer {
                        bed: &pipeline.bed_image,
                        fused: &pipeline.fused,
                        defects: &outcome.defects,
                        classes: &pipeline.model.spec.classes,
                        mm_per_px: pipeline.bed_mm_per_px,
                    },
                ),
                Some(_) => snapshot.fill_unjudged(seq, &frame.image),
            });
        }
    }
}

/// Where each finished layer goes after the PLC has its verdict: the journal, the dashboard
/// and the image recorder.
struct LayerNews {
    journal: Journal,
    board: Arc<Board>,
    images: Option<VerdictSender>,
}

/// One layer in flight: its number, who asked, when.
struct InFlight {
    layer: u32,
    source: TriggerSource,
    started: Instant,
}

/// The control loop; returns how many layers got a verdict.
fn control_loop(
    config: &Config,
    queue: &mut hal::TriggerQueue,
    outputs: &mut Vec<Box<dyn Outputs + Send>>,
    jobs: &SyncSender<LayerJob>,
    events: &Receiver<AnalysisEvent>,
    stop: &AtomicBool,
    news: &mut LayerNews,
    history: &mut BuildHistory,
    restored: &[LayerRecord],
) -> Result<u64> {
    let mut seq = 0u64;
    let tick = Duration::from_millis(50);
    let mut next_heartbeat = Instant::now() + Duration::from_secs(1);
    let mut budget = RecoatBudget::default();
    let mut counter = LayerCounter { next: 1 };
    // After a restart the layer numbers and the recoat budget go on from the journal.
    for record in restored {
        let verdict = Verdict::parse(&record.verdict).unwrap_or(Verdict::Fault);
        budget.apply(record.layer, verdict, config.recoat.max_retries);
        counter.after(record.layer, verdict);
    }
    let mut in_flight: Option<InFlight> = None;
    let mut layers = 0u64;
    loop {
        if Instant::now() >= next_heartbeat {
            report(outputs.heartbeat());
            next_heartbeat += Duration::from_secs(1);
            // After a stall, beat on from now: the missed beats are what tells the PLC.
            if next_heartbeat < Instant::now() {
                next_heartbeat = Instant::now() + Duration::from_secs(1);
            }
        }
        report(outputs.tick());
        match &in_flight {
            None => {
                // Stopping: a trigger the gate already accepted is still answered, then out.
                let stopping = stop.load(Ordering::Relaxed);
                let request = match queue.wait(if stopping { Duration::ZERO } else { tick }) {
                    Ok(Some(request)) => request,
                    Ok(None) if stopping => return Ok(layers),
                    Ok(None) => continue,
                    Err(_) if stopping => return Ok(layers),
                    Err(TriggerError::Closed) => {
                        // Every source is gone (nothing to trigger layers): idle until stopped.
                        std::thread::sleep(tick);
                        continue;
                    }
                    Err(error) => {
                        eprintln!("trigger: {error}");
                        continue;
                    }
                };
                let layer = request.layer.unwrap_or(counter.next);
                report(outputs.set_state(LoopState::Capturing));
                jobs.send(LayerJob).map_err(|_| anyhow!("the analysis thread stopped"))?;
                in_flight = Some(InFlight { layer, source: request.source, started: Instant::now() });
            }
            Some(flight) => match events.recv_timeout(tick) {
                Ok(AnalysisEvent::Analysing) => report(outputs.set_state(LoopState::Analysing)),
                Ok(AnalysisEvent::Done(mut result)) => {
                    let assessed = history.assess(config, &result.class_names, flight.layer, &result.defects, result.verdict, result.reason.take(), &result.tripped_classes);
                    let verdict = budget.apply(flight.layer, assessed.verdict, config.recoat.max_retries);
                    let reason = if verdict != assessed.verdict {
                        let class_index = assessed.reason.as_ref().map(|r| r.class_index).unwrap_or(0);
                        let text = format!("layer {} spread {} times already (recoat.max_retries) → PAUSE", flight.layer, config.recoat.max_retries + 1);
                        Some(Reason { kind: RuleKind::RecoatBudget, class_index, class: String::new(), text })
                    } else {
                        assessed.reason.clone().filter(|_| verdict != Verdict::Pass)
                    };
                    let message = VerdictMessage {
                        layer: flight.layer,
                        verdict,
                        defect_count: result.defect_count,
                        total_defect_area_mm2: result.total_defect_area_mm2,
                        largest_defect_area_mm2: result.largest_defect_area_mm2,
                        class_areas_mm2: result.class_areas_mm2,
                        uncertainty_score: result.uncertainty_score,
                        reason_code: reason.as_ref().map(Reason::code).unwrap_or(0),
                    };
                    // Free the gate first: a PLC that triggers the moment it sees this verdict
                    // must not be told BUSY. A trigger that slips in between waits in the
                    // one-slot queue until this iteration is over.
                    queue.layer_done();
                    report(outputs.publish(&message));
                    // A camera that gave no frame is a standing fault until a layer captures again.
                    report(outputs.set_state(if result.camera_failed { LoopState::Fault } else { LoopState::Ready }));
                    counter.after(flight.layer, verdict);
                    layers += 1;
                    let budget_note = if verdict != assessed.verdict { format!(" ({} past recoat.max_retries)", assessed.verdict) } else { String::new() };
                    println!(
                        "layer {} {}{budget_note} defects {} area {:.2} mm2 uncertainty {:.3} [{}] {:.0} ms model {} {} {}",
                        flight.layer,
                        verdict,
                        result.defect_count,
                        result.total_defect_area_mm2,
                        result.uncertainty_score,
                        flight.source.as_str(),
                        flight.started.elapsed().as_secs_f64() * 1e3,
                        if result.model.is_empty() { "-" } else { &result.model },
                        result.frame_source,
                        result.detail
                    );
                    for hit in &assessed.hits {
                        println!("track: {}", hit.reason.text);
                    }
                    if let Some(reason) = &reason {
                        println!("rule: {} (code {}): {}", reason.rule(), reason.code(), reason.text);
                    }
                    let recoat_outcome = match assessed.recoat_fixed {
                        Some(fixed) => {
                            let word = if fixed { "fixed" } else { "not fixed" };
                            let counts = history.recoats;
                            println!("recoat: layer {} {word} ({} of {} re-spread layers fixed)", flight.layer, counts.fixed, counts.fixed + counts.not_fixed);
                            word.to_string()
                        }
                        None => String::new(),
                    };
                    let recoat_classes = if verdict == Verdict::Recoat { BuildHistory::recoat_classes(&result.tripped_classes, &assessed.hits) } else { Vec::new() };
                    history.record_verdict(flight.layer, verdict, recoat_classes.clone());
                    std::io::stdout().flush().ok();
                    // After the PLC has its verdict: a journal that cannot be written is
                    // reported and the build goes on.
                    let record = LayerRecord {
                        layer: flight.layer,
                        time_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_millis() as u64).unwrap_or(0),
                        trigger: flight.source.as_str().to_string(),
                        verdict: verdict.as_str().to_string(),
                        defects: result.defects,
                        uncertainty_score: result.uncertainty_score,
                        model: result.model_name,
                        model_version: result.model_version,
                        backend: result.backend,
                        total_ms: result.total_ms,
                        infer_ms: result.infer_ms,
                        rule: reason.as_ref().map(Reason::rule).unwrap_or_default(),
                        reason_code: reason.as_ref().map(Reason::code).unwrap_or(0),
                        reason: reason.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
                        recoat_outcome,
                        recoat_classes,
                    };
                    if let Err(error) = news.journal.append(&record) {
                        eprintln!("{error:#}");
                    }
                    seq += 1;
                    let (board, index) = (&news.board, news.board.next_index());
                    let model_error = result.detail.starts_with("inference failed").then(|| result.detail.clone());
                    board.metrics.layer(verdict, result.timing.as_ref(), flight.started.elapsed().as_secs_f64(), result.camera_failed, model_error.is_some());
                    let camera_error = result.camera_failed.then(|| result.detail.trim_start_matches("camera: ").to_string());
                    let verdict_word = record.verdict.clone();
                    board.add_record(record, camera_error, model_error);
                    // After the dashboard has the record: the recorder's "images written" news
                    // must find it there.
                    if let Some(images) = &news.images {
                        images.send(LayerVerdict { seq, index, layer: flight.layer, verdict: verdict_word });
                    }
                    in_flight = None;
                }
                Ok(AnalysisEvent::Started(_)) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("the analysis thread stopped during layer {}", flight.layer),
            },
        }
    }
}

/// An output that fails is reported and the loop goes on: the other outputs still work.
fn report(result: Result<(), hal::PlcError>) {
    crate::metrics::PLC.note(result.is_ok());
    if let Err(error) = result {
        eprintln!("plc: {error}");
    }
}

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
