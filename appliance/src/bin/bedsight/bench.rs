//! `bedsight bench`: how fast this box runs a layer, measured, printed as a table and written as
//! JSON (docs/performance.md records this machine's figures and the command).
//!
//! Per model (the embedded default, and any model folder or image given):
//! - inference alone, per backend (ONNX Runtime with the execution provider it got, tract) and
//!   per graph (fp32, INT8): median and p95 of `Backend::infer` over `--runs` runs after
//!   `--warmup` runs, on a real pre-processed layer;
//! - the same graph and input through Python onnxruntime in a child process, taking turns with
//!   the Rust ONNX Runtime path (which must stay within 1.1x of it) so both meet the same load;
//! - every stage of a layer (capture from a replay, check, rectify, pre-process, infer, fuse,
//!   refine, measure, decide, the copy for the image recorder, the journal record) and its share
//!   of the layer, and apart from them the image recorder's writing (its own thread);
//! - the ensemble graph against the same network with one head (`one-member/` beside the model),
//!   seed 000's feature-reuse claim: 5 members under 2x one;
//! - resident memory after the warm-up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hal::camera::{Camera, ReplayCamera};
use image::{DynamicImage, GrayImage};
use images::{Manifest, ModelImage};
use models::{BackendChoice, ModelSpec};
use serde::Serialize;

use appliance::config::Config;
use appliance::judge::defect_map::Footprint;
use appliance::judge::pipeline::Pipeline;
use appliance::model::{spec_of, LoadedModel, Precision};
use appliance::record::journal::{DefectRecord, Journal, LayerRecord};
use appliance::record::layer_images::{ImageStore, JudgedLayer, LayerSnapshot, LayerVerdict};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model image (.bsimg) or folder (manifest.toml, model.onnx, model.int8.onnx, one-member/);
    /// repeatable. Default: the embedded model and every folder in out/bench-graphs/ (made by
    /// quantize/scripts/build-bench-graphs.sh).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Only models of these input widths, e.g. 256 or 256,1024.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<u32>,
    /// Backends to time: ort, tract (the first also runs the stages and the ensemble check).
    #[arg(long, value_delimiter = ',', default_value = "ort,tract")]
    backends: Vec<String>,
    /// Graphs to time: fp32, int8.
    #[arg(long, value_delimiter = ',', default_value = "fp32,int8")]
    precisions: Vec<String>,
    /// Timed runs per measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Layers timed stage by stage (after a warm-up pass over the 12 sample layers).
    #[arg(long, default_value_t = 20)]
    layers: usize,
    /// Python with onnxruntime for the reference runs; default: ~/.cache/bedsight/venv's, else python3.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Skip the Python onnxruntime reference.
    #[arg(long)]
    no_python: bool,
    /// Skip the stage-by-stage layers.
    #[arg(long)]
    no_stages: bool,
    /// Skip the ensemble against one member.
    #[arg(long)]
    no_ensemble: bool,
    /// Where the JSON goes.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
}

/// The options of `bench`, checked.
pub fn options(args: BenchArgs) -> Result<BenchOptions> {
    let mut backends = Vec::new();
    for word in &args.backends {
        match appliance::config::parse_backend(word).context("--backends")? {
            models::BackendChoice::Auto => anyhow::bail!("--backends: name them (ort, tract), not auto"),
            choice => backends.push(choice),
        }
    }
    for precision in &args.precisions {
        if precision != "fp32" && precision != "int8" {
            anyhow::bail!("--precisions: {precision:?} is neither fp32 nor int8");
        }
    }
    let python = if args.no_python {
        None
    } else {
        Some(args.python.unwrap_or_else(|| {
            let venv = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/bedsight/venv/bin/python"));
            venv.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("python3"))
        }))
    };
    Ok(BenchOptions {
        models: args.model,
        sizes: args.sizes,
        backends,
        precisions: args.precisions,
        runs: args.runs,
        warmup: args.warmup,
        layers: args.layers,
        python,
        skip_stages: args.no_stages,
        skip_ensemble: args.no_ensemble,
        json_out: args.json,
    })
}

/// What to measure; every list may be narrowed from the command line for a quick run.
pub struct BenchOptions {
    /// Model images (.bsimg) or folders (manifest.toml, model.onnx, optional model.int8.onnx and
    /// one-member/); empty: the embedded default model and `out/bench-graphs/*` when present.
    pub models: Vec<PathBuf>,
    /// Only models whose input width is one of these.
    pub sizes: Vec<u32>,
    pub backends: Vec<BackendChoice>,
    /// "fp32", "int8".
    pub precisions: Vec<String>,
    pub runs: usize,
    pub warmup: usize,
    /// Layers timed stage by stage (after one warm-up pass over the sample build).
    pub layers: usize,
    /// The Python that has onnxruntime; `None`: no reference run.
    pub python: Option<PathBuf>,
    pub skip_stages: bool,
    pub skip_ensemble: bool,
    pub json_out: PathBuf,
}

/// Median and 95th percentile of a set of timings, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median_ms: f64,
    pub p95_ms: f64,
    pub runs: usize,
}

impl Spread {
    /// Nearest-rank percentiles of `times_ms`.
    pub fn of(times_ms: &[f64]) -> Spread {
        let mut sorted = times_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Spread {
            median_ms: rank(0.5),
            p95_ms: rank(0.95),
            runs: sorted.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct InferenceRow {
    /// "ort", "tract" or "python-onnxruntime".
    runner: String,
    /// The execution provider (ort, Python) or "tract".
    provider: String,
    precision: String,
    #[serde(flatten)]
    spread: Spread,
}

#[derive(Debug, Serialize)]
struct PythonRatio {
    precision: String,
    rust_ort_median_ms: f64,
    python_median_ms: f64,
    /// Rust over Python; the bar is 1.1.
    ratio: f64,
    within_1_1x: bool,
}

#[derive(Debug, Serialize)]
struct StageRow {
    stage: &'static str,
    #[serde(flatten)]
    spread: Spread,
    /// Median of the stage over the sum of the stage medians.
    share: f64,
}

#[derive(Debug, Serialize)]
struct StageReport {
    runner: String,
    /// The graph the box runs on this backend and why ("fp32 graph (precision auto: ...)").
    graph: String,
    stages: Vec<StageRow>,
    layer_median_ms: f64,
    /// Every stage but inference together, as a share of the layer (the target at 1024x1024 is
    /// under 10%).
    around_model_share: f64,
    /// Writing one layer's images (raw, bed, mask, uncertainty, overlay): the recorder thread's
    /// work, at nice 10 beside the layer path, so not one of `stages`.
    image_recorder: Spread,
    /// VmRSS of the bench after the warm-up pass, the pipeline and its model loaded.
    resident_mib_after_warmup: f64,
}

#[derive(Debug, Serialize)]
struct EnsembleReport {
    runner: String,
    members: usize,
    ensemble_median_ms: f64,
    one_member_median_ms: f64,
    /// Ensemble over one member; seed 000 claims under 2 for 5 members.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct ModelReport {
    name: String,
    origin: String,
    width: u32,
    height: u32,
    members: usize,
    /// From the manifest's training table (the export counts them), when there.
    gflops_ensemble: Option<f64>,
    inference: Vec<InferenceRow>,
    python_reference: Vec<PythonRatio>,
    stages: Option<StageReport>,
    ensemble: Option<EnsembleReport>,
    resident_mib_after_warmup: f64,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    command: String,
    cpu: String,
    cores: usize,
    onnxruntime_library: Option<String>,
    runs: usize,
    warmup: usize,
    models: Vec<ModelReport>,
}

/// A model under test: its manifest and graphs.
struct BenchModel {
    origin: String,
    manifest: Manifest,
    fp32: Vec<u8>,
    int8: Option<Vec<u8>>,
    /// The same network with one head, for the ensemble comparison.
    one_member: Option<(Manifest, Vec<u8>)>,
}

impl BenchModel {
    fn load(path: Option<&Path>) -> Result<BenchModel> {
        let Some(path) = path else {
            let image =
                ModelImage::from_bytes(appliance::model::EMBEDDED_IMAGE, appliance::model::EMBEDDED_IMAGE_NAME)?;
            return Ok(Self::from_image(
                appliance::model::EMBEDDED_IMAGE_NAME.to_string(),
                &image,
            ));
        };
        if path.is_dir() {
            let read_manifest = |folder: &Path| -> Result<Manifest> {
                let file = folder.join("manifest.toml");
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("bench model {}: cannot read manifest.toml", folder.display()))?;
                Ok(Manifest::parse(&text, &file.display().to_string())?)
            };
            let manifest = read_manifest(path)?;
            let fp32 = std::fs::read(path.join("model.onnx"))
                .with_context(|| format!("bench model {}: cannot read model.onnx", path.display()))?;
            let int8 = std::fs::read(path.join("model.int8.onnx")).ok();
            let one = path.join("one-member");
            let one_member = if one.is_dir() {
                let graph = std::fs::read(one.join("model.onnx"))
                    .with_context(|| format!("bench model {}: cannot read model.onnx", one.display()))?;
                Some((read_manifest(&one)?, graph))
            } else {
                None
            };
            Ok(BenchModel {
                origin: path.display().to_string(),
                manifest,
                fp32,
                int8,
                one_member,
            })
        } else {
            let image = ModelImage::open(path)?;
            Ok(Self::from_image(path.display().to_string(), &image))
        }
    }

    fn from_image(origin: String, image: &ModelImage) -> BenchModel {
        let fp32 = image.fp32_graph().to_vec();
        let int8 = image.int8_graph().map(<[u8]>::to_vec);
        BenchModel {
            origin,
            manifest: image.manifest.clone(),
            fp32,
            int8,
            one_member: None,
        }
    }

    fn graph(&self, precision: &str) -> Option<&[u8]> {
        match precision {
            "fp32" => Some(&self.fp32),
            _ => self.int8.as_deref(),
        }
    }
}

/// The models `bench` measures when none are named.
fn default_models() -> Vec<Option<PathBuf>> {
    let mut models = vec![None];
    let built = Path::new("out/bench-graphs");
    if let Ok(entries) = std::fs::read_dir(built) {
        let mut folders: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").is_file())
            .collect();
        folders.sort();
        models.extend(folders.into_iter().map(Some));
    }
    models
}

pub fn bench(options: &BenchOptions) -> Result<()> {
    let sources: Vec<Option<PathBuf>> = if options.models.is_empty() {
        default_models()
    } else {
        options.models.iter().cloned().map(Some).collect()
    };
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut report = BenchReport {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        onnxruntime_library: models::find_onnxruntime().map(|p| p.display().to_string()),
        runs: options.runs,
        warmup: options.warmup,
        models: Vec::new(),
    };
    println!(
        "bedsight bench: {} ({} cores), {} runs after {} warm-up",
        report.cpu, report.cores, options.runs, options.warmup
    );
    for source in &sources {
        let model = BenchModel::load(source.as_deref())?;
        if !options.sizes.is_empty() && !options.sizes.contains(&model.manifest.input.width) {
            continue;
        }
        let model_report = bench_model(&model, options)?;
        print_model(&model_report);
        report.models.push(model_report);
    }
    if report.models.is_empty() {
        bail!("no model matched --sizes {:?}", options.sizes);
    }
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&options.json_out, json + "\n")
        .with_context(|| format!("cannot write {}", options.json_out.display()))?;
    println!("\nwritten: {}", options.json_out.display());
    Ok(())
}

fn bench_model(model: &BenchModel, options: &BenchOptions) -> Result<ModelReport> {
    let manifest = &model.manifest;
    let spec = spec_of(manifest);
    println!(
        "\n== {} {} ({}x{}, {} members) from {}",
        manifest.name, manifest.version, spec.input.width, spec.input.height, spec.members, model.origin
    );
    let frames = sample_frames(spec.input.width, spec.input.height)?;
    let input = input_tensor(&frames[1], &spec)?;

    let mut inference = Vec::new();
    let mut python_reference = Vec::new();
    let scratch = tempfile::tempdir()?;
    let input_file = scratch.path().join("input.f32");
    std::fs::write(
        &input_file,
        input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )?;
    for precision in &options.precisions {
        let Some(graph) = model.graph(precision) else {
            println!("  (no {precision} graph)");
            continue;
        };
        let graph_file = scratch.path().join(format!("model.{precision}.onnx"));
        std::fs::write(&graph_file, graph)?;
        for &choice in &options.backends {
            let mut backend = match models::load_backend(choice, graph, &spec, None) {
                Ok(backend) => backend,
                Err(error) => {
                    println!("  {choice:?} {precision}: not available here: {error}");
                    continue;
                }
            };
            let info = backend.info().clone();
            let python = options.python.as_deref().filter(|_| info.name == "ort");
            let (rust, reference) = match python {
                // ONNX Runtime and its Python reference take turns, a few runs each, so that
                // both meet the same load on a shared machine.
                Some(python) => {
                    let mut reference =
                        PythonReference::start(python, &graph_file, &input_file, &spec, &info.execution_provider)?;
                    let (rust, python_times) = interleaved(backend.as_mut(), &mut reference, &input, options)?;
                    (rust, Some(python_times))
                }
                None => (time_inference(backend.as_mut(), &input, options)?, None),
            };
            print_row(&info.name, &info.execution_provider, precision, &rust);
            inference.push(InferenceRow {
                runner: info.name.clone(),
                provider: info.execution_provider.clone(),
                precision: precision.clone(),
                spread: rust,
            });
            if let Some(reference) = reference {
                print_row("python", &info.execution_provider, precision, &reference);
                let ratio = rust.median_ms / reference.median_ms;
                python_reference.push(PythonRatio {
                    precision: precision.clone(),
                    rust_ort_median_ms: rust.median_ms,
                    python_median_ms: reference.median_ms,
                    ratio,
                    within_1_1x: ratio <= 1.1,
                });
                inference.push(InferenceRow {
                    runner: "python-onnxruntime".into(),
                    provider: info.execution_provider,
                    precision: precision.clone(),
                    spread: reference,
                });
            }
        }
    }

    let first_backend = *options.backends.first().context("no backend chosen")?;
    let ensemble = match (&model.one_member, options.skip_ensemble) {
        (Some((one_manifest, one_graph)), false) => Some(ensemble_ratio(
            model,
            one_manifest,
            one_graph,
            first_backend,
            &input,
            options,
        )?),
        _ => None,
    };

    let stages = if options.skip_stages {
        None
    } else {
        Some(stage_times(model, &frames, first_backend, options, scratch.path())?)
    };
    // Without the stages, the bench's own footprint after the inference runs.
    let resident_mib_after_warmup = stages
        .as_ref()
        .map_or_else(resident_mib, |s| s.resident_mib_after_warmup);
    Ok(ModelReport {
        name: manifest.name.clone(),
        origin: model.origin.clone(),
        width: spec.input.width,
        height: spec.input.height,
        members: spec.members,
        gflops_ensemble: manifest.training.get("gflops_ensemble").copied(),
        inference,
        python_reference,
        stages,
        ensemble,
        resident_mib_after_warmup,
    })
}

/// `runs` timed runs of `infer` after `warmup` untimed ones.
fn time_inference(backend: &mut dyn models::Backend, input: &[f32], options: &BenchOptions) -> Result<Spread> {
    timed_runs(backend, input, options.warmup)?;
    Ok(Spread::of(&timed_runs(backend, input, options.runs)?))
}

/// Milliseconds of each of `runs` runs of `infer`.
fn timed_runs(backend: &mut dyn models::Backend, input: &[f32], runs: usize) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        backend.infer(input)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// Runs taken in turn by the Rust backend and the Python reference.
const TURN_RUNS: usize = 5;

/// `backend` and `reference` warmed up, then timed in turns of [`TURN_RUNS`] runs each until
/// both have `runs`.
fn interleaved(
    backend: &mut dyn models::Backend,
    reference: &mut PythonReference,
    input: &[f32],
    options: &BenchOptions,
) -> Result<(Spread, Spread)> {
    timed_runs(backend, input, options.warmup)?;
    reference.run(options.warmup)?;
    let (mut rust, mut python) = (Vec::new(), Vec::new());
    while rust.len() < options.runs {
        let turn = TURN_RUNS.min(options.runs - rust.len());
        rust.extend(timed_runs(backend, input, turn)?);
        python.extend(reference.run(turn)?);
    }
    Ok((Spread::of(&rust), Spread::of(&python)))
}

/// The reference: the same graph file and input tensor through Python's onnxruntime, with the
/// execution provider and session settings the Rust side got, timed the same way. It reads a number of runs per
/// line on stdin and answers each with a line of JSON.
const PYTHON_REFERENCE: &str = r#"
import json, os, sys, time
import numpy as np
import onnxruntime as ort
graph, input_file, shape, provider = sys.argv[1:5]
shape = [int(v) for v in shape.split(",")]
providers = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider", "TensorRT": "TensorrtExecutionProvider"}
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
# The session settings of the Rust backend: one thread per core, workers that do not spin, no
# memory pattern.
options.intra_op_num_threads = os.cpu_count()
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
options.enable_mem_pattern = False
session = ort.InferenceSession(graph, options, providers=[providers.get(provider, "CPUExecutionProvider")])
x = np.fromfile(input_file, dtype="<f4").reshape(shape)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        started = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps({"times_ms": times}), flush=True)
"#;

/// A Python process running [`PYTHON_REFERENCE`] on one graph.
struct PythonReference {
    python: PathBuf,
    child: std::process::Child,
    commands: std::process::ChildStdin,
    replies: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonReference {
    fn start(python: &Path, graph: &Path, input: &Path, spec: &ModelSpec, provider: &str) -> Result<PythonReference> {
        let shape = format!("1,{},{},{}", spec.input.channels, spec.input.height, spec.input.width);
        let mut child = Command::new(python)
            .args(["-c", PYTHON_REFERENCE])
            .arg(graph)
            .arg(input)
            .args([shape.as_str(), provider])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} for the Python onnxruntime reference (--python, or --no-python)",
                    python.display()
                )
            })?;
        let commands = child.stdin.take().context("python's stdin")?;
        let replies = std::io::BufReader::new(child.stdout.take().context("python's stdout")?);
        Ok(PythonReference {
            python: python.to_path_buf(),
            child,
            commands,
            replies,
        })
    }

    /// Milliseconds of each of `runs` runs.
    fn run(&mut self, runs: usize) -> Result<Vec<f64>> {
        use std::io::{BufRead, Read};
        #[derive(serde::Deserialize)]
        struct Reply {
            times_ms: Vec<f64>,
        }
        let mut line = String::new();
        let answered =
            writeln!(self.commands, "{runs}").is_ok() && self.replies.read_line(&mut line).is_ok_and(|n| n > 0);
        if !answered {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            bail!(
                "{} (Python onnxruntime reference) stopped: {}",
                self.python.display(),
                stderr.trim()
            );
        }
        let reply: Reply = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: unexpected reply from the reference script: {line}",
                self.python.display()
            )
        })?;
        Ok(reply.times_ms)
    }
}

impl Drop for PythonReference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_row(runner: &str, provider: &str, precision: &str, spread: &Spread) {
    println!(
        "  {runner:<8} {provider:<9} {precision:<5} median {:>9.2} ms  p95 {:>9.2} ms",
        spread.median_ms, spread.p95_ms
    );
}

fn ensemble_ratio(
    model: &BenchModel,
    one_manifest: &Manifest,
    one_graph: &[u8],
    choice: BackendChoice,
    input: &[f32],
    options: &BenchOptions,
) -> Result<EnsembleReport> {
    let spec = spec_of(&model.manifest);
    let one_spec = spec_of(one_manifest);
    let mut ensemble = models::load_backend(choice, &model.fp32, &spec, None)?;
    let mut one = models::load_backend(choice, one_graph, &one_spec, None)?;
    let runner = ensemble.info().name.clone();
    let ensemble_ms = time_inference(ensemble.as_mut(), input, options)?.median_ms;
    let one_ms = time_inference(one.as_mut(), input, options)?.median_ms;
    let ratio = ensemble_ms / one_ms;
    println!("  ensemble ({runner} fp32): {} members {ensemble_ms:.2} ms vs one member {one_ms:.2} ms: {ratio:.2}x (seed 000: 5 under 2x)", spec.members);
    Ok(EnsembleReport {
        runner,
        members: spec.members,
        ensemble_median_ms: ensemble_ms,
        one_member_median_ms: one_ms,
        ratio,
    })
}

/// The embedded configuration as an integrator leaves it on a box, and the camera frames it
/// sees: each bed in a chamber of grey 20 one eighth of the bed wide on every side, the bed's
/// corners set there, and the first frame written to `scratch` as the commissioning reference.
fn commissioned(beds: &[GrayImage], scratch: &Path) -> Result<(Config, Vec<GrayImage>)> {
    let (w, h) = beds[0].dimensions();
    let margin = w.max(h) / 8;
    let frames: Vec<GrayImage> = beds
        .iter()
        .map(|bed| {
            let mut frame = GrayImage::from_pixel(w + 2 * margin, h + 2 * margin, image::Luma([20]));
            image::imageops::replace(&mut frame, bed, margin as i64, margin as i64);
            frame
        })
        .collect();
    let reference = scratch.join("frame-reference.png");
    frames[0].save(&reference)?;
    let mut config = Config::embedded();
    let (x0, y0) = (margin as f32, margin as f32);
    let (x1, y1) = ((margin + w - 1) as f32, (margin + h - 1) as f32);
    config.bed.corners_px = Some([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]);
    config.frame_check.reference = Some(reference);
    Ok((config, frames))
}

/// Every stage of a layer, the way `bedsight run` does it: a replay camera reading PNG files,
/// the pipeline, and a journal record appended (and fsynced) per layer.
fn stage_times(
    model: &BenchModel,
    frames: &[GrayImage],
    choice: BackendChoice,
    options: &BenchOptions,
    scratch: &Path,
) -> Result<StageReport> {
    // A commissioned box: the camera sees the bed inside the darker chamber, and the bed's
    // corners and the commissioning frame are set, so every frame check runs (docs/frame-checks.md).
    let (config, frames) = commissioned(frames, scratch)?;
    let replay_folder = scratch.join("replay");
    std::fs::create_dir_all(&replay_folder)?;
    for (index, frame) in frames.iter().enumerate() {
        frame.save(replay_folder.join(format!("layer-{index:04}.png")))?;
    }
    let mut camera = ReplayCamera::from_folder(&replay_folder)?.repeating(true);
    // The graph the box would run on this backend (`[model] precision = "auto"`).
    let loaded = LoadedModel::from_graphs(
        model.origin.clone(),
        &model.manifest,
        model.int8.as_deref(),
        &model.fp32,
        choice,
        Precision::Auto,
        None,
    )?;
    let runner = loaded.backend_label();
    let graph_name = loaded.precision_note.clone();
    let mut pipeline = Pipeline::new(config, loaded, "embedded bedsight.toml, commissioned")?;
    let (mut journal, _) = Journal::open(&scratch.join("journal.bsj"))?;

    let mut snapshot = LayerSnapshot::empty();
    // Room for every layer's images: the limit's clean-up is timed, it deletes nothing.
    let mut images = ImageStore::open(&scratch.join("layers"), u64::MAX)?;

    // capture: the replay camera decoding a PNG; snapshot: the copy handed to the image
    // recorder; record: the journal record appended and fsynced.
    const STAGES: [&str; 11] = [
        "capture",
        "check",
        "rectify",
        "preprocess",
        "infer",
        "fuse",
        "refine",
        "measure",
        "decide",
        "snapshot",
        "record",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let mut image_writes = Vec::new();
    let mut resident_mib_after_warmup = 0.0;
    let layers = options.layers.max(1);
    for layer in 0..frames.len() + layers {
        let started = Instant::now();
        let frame = camera.capture()?;
        let capture_ms = started.elapsed().as_secs_f64() * 1e3;
        let outcome = pipeline.run_layer(&frame.image);
        // What the analysis thread hands the image recorder: a copy of the layer's pixels.
        let started = Instant::now();
        let judged = JudgedLayer {
            bed: &pipeline.bed_image,
            fused: &pipeline.fused,
            defects: &outcome.defects,
            classes: &pipeline.model.spec.classes,
            mm_per_px: pipeline.bed_mm_per_px,
        };
        snapshot.fill(layer as u64, &frame.image, &judged);
        let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let record = LayerRecord {
            layer: layer as u32,
            trigger: "bench".into(),
            verdict: outcome.verdict.as_str().to_string(),
            defects: outcome
                .defects
                .iter()
                .map(|d| DefectRecord {
                    class: pipeline.model.class_names[d.class as usize].clone(),
                    area_mm2: d.area_mm2,
                    bbox: d.bbox,
                    bbox_mm: Footprint::from_bbox_px(d.bbox, pipeline.bed_mm_per_px_xy()).to_xywh(),
                    centroid: d.centroid,
                    mean_uncertainty: d.mean_uncertainty,
                })
                .collect(),
            uncertainty_score: outcome.decision.as_ref().map_or(0.0, |d| d.uncertainty_score),
            model: pipeline.model.name.clone(),
            model_version: pipeline.model.version.clone(),
            backend: runner.clone(),
            total_ms: outcome.timing.total_ms,
            infer_ms: outcome.timing.infer_ms,
            ..LayerRecord::default()
        };
        journal.append(&record)?;
        let record_ms = started.elapsed().as_secs_f64() * 1e3;
        // The image recorder's own work, on its thread at nice 10 in `bedsight run`: not part
        // of the layer, timed apart.
        let started = Instant::now();
        let verdict = LayerVerdict {
            seq: layer as u64,
            index: layer as u64,
            layer: layer as u32,
            verdict: record.verdict.clone(),
        };
        images.write(&snapshot, &verdict)?;
        images.enforce_limit();
        let images_ms = started.elapsed().as_secs_f64() * 1e3;
        if layer + 1 == frames.len() {
            // After the warm-up pass, with the pipeline, its buffers and the model alive.
            resident_mib_after_warmup = resident_mib();
        }
        if layer < frames.len() {
            continue; // the warm-up pass over the sample build
        }
        let t = &outcome.timing;
        let laps = [
            capture_ms,
            t.check_ms,
            t.rectify_ms,
            t.preprocess_ms,
            t.infer_ms,
            t.fuse_ms,
            t.refine_ms,
            t.measure_ms,
            t.decide_ms,
            snapshot_ms,
            record_ms,
        ];
        for (slot, value) in times.iter_mut().zip(laps) {
            slot.push(value);
        }
        image_writes.push(images_ms);
    }
    let spreads: Vec<Spread> = times.iter().map(|t| Spread::of(t)).collect();
    let layer_ms: f64 = spreads.iter().map(|s| s.median_ms).sum();
    let stages: Vec<StageRow> = STAGES
        .iter()
        .zip(&spreads)
        .map(|(&stage, &spread)| StageRow {
            stage,
            spread,
            share: spread.median_ms / layer_ms,
        })
        .collect();
    let infer_share = stages.iter().find(|s| s.stage == "infer").map_or(0.0, |s| s.share);
    Ok(StageReport {
        runner,
        graph: graph_name,
        stages,
        layer_median_ms: layer_ms,
        around_model_share: 1.0 - infer_share,
        image_recorder: Spread::of(&image_writes),
        resident_mib_after_warmup,
    })
}

/// The sample build's layers at `width` x `height` (as a camera cropped to the bed would give).
fn sample_frames(width: u32, height: u32) -> Result<Vec<GrayImage>> {
    crate::demo::sample_layers()
        .iter()
        .map(|(name, bytes)| {
            let image = image::load_from_memory(bytes)
                .with_context(|| format!("sample layer {name}"))?
                .to_luma8();
            Ok(if image.dimensions() == (width, height) {
                image
            } else {
                image::imageops::resize(&image, width, height, image::imageops::FilterType::Triangle)
            })
        })
        .collect()
}

/// A real layer, pre-processed: the tensor every runner gets.
fn input_tensor(frame: &GrayImage, spec: &ModelSpec) -> Result<Vec<f32>> {
    let mut tensor = vec![0.0f32; spec.input.len()];
    if spec.input.channels == 1 {
        models::preprocess_gray(frame, &spec.input, &mut tensor)?;
    } else {
        models::preprocess(&DynamicImage::ImageLuma8(frame.clone()), &spec.input, &mut tensor)?;
    }
    Ok(tensor)
}

/// VmRSS of this process, MiB (0 where /proc is missing).
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |name| name.trim().to_string())
}

fn print_model(report: &ModelReport) {
    let mut out = std::io::stdout().lock();
    if !report.python_reference.is_empty() {
        for r in &report.python_reference {
            let _ = writeln!(
                out,
                "  Rust ort / Python onnxruntime ({}): {:.2} / {:.2} ms = {:.3}x ({})",
                r.precision,
                r.rust_ort_median_ms,
                r.python_median_ms,
                r.ratio,
                if r.within_1_1x { "within 1.1x" } else { "OVER 1.1x" }
            );
        }
    }
    if let Some(stages) = &report.stages {
        let _ = writeln!(
            out,
            "  stages of a layer ({}, {}), median over {} layers:",
            stages.runner, stages.graph, stages.stages[0].spread.runs
        );
        let _ = writeln!(
            out,
            "    {:<11} {:>10} {:>10} {:>7}",
            "stage", "median ms", "p95 ms", "share"
        );
        for row in &stages.stages {
            let _ = writeln!(
                out,
                "    {:<11} {:>10.3} {:>10.3} {:>6.1}%",
                row.stage,
                row.spread.median_ms,
                row.spread.p95_ms,
                row.share * 100.0
            );
        }
        let _ = writeln!(
            out,
            "    {:<11} {:>10.3}   around the model: {:.1}% of the layer",
            "layer",
            stages.layer_median_ms,
            stages.around_model_share * 100.0
        );
        let _ = writeln!(
            out,
            "    image recorder (own thread, nice 10): median {:.3} ms, p95 {:.3} ms per layer",
            stages.image_recorder.median_ms, stages.image_recorder.p95_ms
        );
    }
    let _ = writeln!(
        out,
        "  resident memory after warm-up (pipeline and model loaded): {:.0} MiB",
        report.resident_mib_after_warmup
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let times: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let spread = Spread::of(&times);
        assert_eq!((spread.median_ms, spread.p95_ms, spread.runs), (10.0, 19.0, 20));
        let one = Spread::of(&[3.5]);
        assert_eq!((one.median_ms, one.p95_ms), (3.5, 3.5));
    }
}
