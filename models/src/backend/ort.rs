//! ONNX Runtime through the `ort` crate, with the library loaded at run time (`load-dynamic`).
//!
//! Execution providers are asked for in order TensorRT, CUDA, CPU; each registration either
//! succeeds or returns why not, and [`BackendInfo::execution_provider`] names the first that
//! registered (and then built the session). Input and output tensors are allocated once and bound
//! with an `IoBinding`, so a layer copies its input in, fusion reads the logits where ONNX Runtime
//! wrote them (the bound output), and no tensor is allocated.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, ValueType};

use super::{
    check_features_output_shape, check_input_len, check_input_shape, check_layer_output_shape, check_output_shape,
    Backend, BackendInfo, DeclaredDim, FEATURES_OUTPUT_NAME, INPUT_NAME, LAYER_OUTPUT_NAME, OUTPUT_NAME,
};
use crate::error::ModelError;
use crate::spec::ModelSpec;

const BACKEND: &str = "ort";

/// The ONNX Runtime library loaded into this process and its environment. `ort` loads one library
/// per process and allows one environment per process, so both live here for good once loaded.
struct Runtime {
    environment: Environment,
    library: PathBuf,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Loads the ONNX Runtime library at `library` (once per process) and returns the environment and
/// the library actually in use (the first one loaded, if another was loaded before).
///
/// A file that is not ONNX Runtime, or a version older than the `ort` API level this crate is
/// built with, is an error. `ort` may panic on a library it cannot use; that is caught and turned
/// into an error too.
pub fn load_runtime(library: &Path) -> Result<(Environment, PathBuf), ModelError> {
    let mut runtime = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(loaded) = runtime.as_ref() {
        return Ok((loaded.environment.clone(), loaded.library.clone()));
    }
    let load_error = |reason: String| ModelError::RuntimeLoad {
        path: library.to_path_buf(),
        reason,
    };
    let attempt = catch_unwind(AssertUnwindSafe(|| -> Result<Environment, String> {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("bedsight")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    }));
    let environment = match attempt {
        Ok(Ok(environment)) => environment,
        Ok(Err(reason)) => return Err(load_error(reason)),
        Err(panic) => return Err(load_error(format!("loading it panicked: {}", panic_message(&panic)))),
    };
    *runtime = Some(Runtime {
        environment: environment.clone(),
        library: library.to_path_buf(),
    });
    Ok((environment, library.to_path_buf()))
}

/// Whether the ONNX Runtime library at `library` loads and lists TensorRT among its execution
/// providers.
pub fn tensorrt_built_in(library: &Path) -> bool {
    load_runtime(library).is_ok() && <ep::TensorRT as ExecutionProvider>::is_available().unwrap_or(false)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// A graph running on ONNX Runtime.
pub struct OrtBackend {
    info: BackendInfo,
    session: Session,
    binding: IoBinding,
    /// `[1, C, H, W]`, allocated once; `infer` copies the input into it.
    input: Tensor<f32>,
    /// `[1, M, K, H, W]`, allocated once and bound as the output.
    output: Tensor<f32>,
    /// `[1, L]`, allocated once and bound as the second output when the spec has a layer head.
    layer_output: Option<Tensor<f32>>,
    /// The last run's layer logits, copied out of `layer_output` (empty without a head).
    layer_logits: Vec<f32>,
    /// `[1, D]`, allocated once and bound when the spec has features (the domain check).
    features_output: Option<Tensor<f32>>,
    /// The last run's features, copied out of `features_output` (empty without them).
    features: Vec<f32>,
    input_len: usize,
    logits_len: usize,
    /// Whether the graph declares any output dimension as symbolic.
    output_declared_open: bool,
}

// The session, binding and tensors are used from one thread at a time (`infer` takes `&mut self`);
// ONNX Runtime sessions and their I/O bindings are not tied to the thread that made them.
unsafe impl Send for OrtBackend {}

/// Which accelerators to ask for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Providers {
    TensorRtAndCuda,
    CpuOnly,
}

impl OrtBackend {
    /// Loads the library at `library` (see [`load_runtime`]), builds a session for `graph` with
    /// the best execution provider that registers, and checks the graph against `spec`.
    pub fn load(
        library: &Path,
        graph: &[u8],
        spec: &ModelSpec,
        engine_cache_dir: Option<&Path>,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        let (environment, library_in_use) = load_runtime(library)?;
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            Self::build(&environment, graph, spec, engine_cache_dir)
        }));
        let (session, provider, mut notes) = match attempt {
            Ok(result) => result?,
            Err(panic) => {
                return Err(ModelError::Graph {
                    backend: BACKEND,
                    reason: format!("onnxruntime panicked: {}", panic_message(&panic)),
                })
            }
        };
        let mut detail = format!("ONNX Runtime {}", library_in_use.display());
        if library_in_use != library {
            notes.insert(
                0,
                format!("already loaded in this process; {} not used", library.display()),
            );
        }
        if !notes.is_empty() {
            detail.push_str("; ");
            detail.push_str(&notes.join("; "));
        }
        let info = BackendInfo {
            name: BACKEND.into(),
            execution_provider: provider.into(),
            detail,
        };
        let mut backend = Self::bind(session, spec, info)?;
        // One trial run when the graph leaves output dimensions open (so that the concrete shape
        // is checked with a clear message) and on a GPU (TensorRT builds or loads its engine, CUDA
        // its kernels, now rather than on the first layer). A GPU that fails it leaves the CPU.
        if backend.output_declared_open || provider != "CPU" {
            match backend.probe(spec) {
                Ok(()) => {}
                Err(error @ ModelError::Contract(_)) => return Err(error),
                Err(error) if provider != "CPU" => {
                    let attempt = catch_unwind(AssertUnwindSafe(|| Self::cpu_session(&environment, graph, spec)));
                    let session = match attempt {
                        Ok(result) => result?,
                        Err(panic) => {
                            return Err(ModelError::Graph {
                                backend: BACKEND,
                                reason: format!("onnxruntime panicked: {}", panic_message(&panic)),
                            })
                        }
                    };
                    let mut info = backend.info.clone();
                    info.execution_provider = "CPU".into();
                    info.detail.push_str(&format!(
                        "; the trial run on {provider} failed ({}); running on CPU",
                        first_line(&error.to_string())
                    ));
                    backend = Self::bind(session, spec, info)?;
                    if backend.output_declared_open {
                        backend.probe(spec)?;
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(backend)
    }

    /// A session on the CPU execution provider alone, checked against the spec.
    fn cpu_session(environment: &Environment, graph: &[u8], spec: &ModelSpec) -> Result<Session, ModelError> {
        let (mut builder, _) = Self::builder(environment, graph, Providers::CpuOnly, None, &mut Vec::new())?;
        let session = builder.commit_from_memory(graph).map_err(|e| ModelError::Graph {
            backend: BACKEND,
            reason: e.to_string(),
        })?;
        check_session(&session, spec)?;
        Ok(session)
    }

    /// Builds the session: TensorRT and CUDA if they register, else CPU; if the session cannot be
    /// built on the accelerator that registered, once more on the CPU alone.
    fn build(
        environment: &Environment,
        graph: &[u8],
        spec: &ModelSpec,
        engine_cache_dir: Option<&Path>,
    ) -> Result<(Session, &'static str, Vec<String>), ModelError> {
        let graph_error = |e: ort::Error| ModelError::Graph {
            backend: BACKEND,
            reason: e.to_string(),
        };
        let mut notes = Vec::new();
        let (mut builder, provider) = Self::builder(
            environment,
            graph,
            Providers::TensorRtAndCuda,
            engine_cache_dir,
            &mut notes,
        )?;
        let (session, provider) = match builder.commit_from_memory(graph) {
            Ok(session) => (session, provider),
            Err(error) if provider != "CPU" => {
                let session = Self::cpu_session(environment, graph, spec)?;
                notes.push(format!(
                    "the session on {provider} failed ({}); running on CPU",
                    first_line(&error.to_string())
                ));
                (session, "CPU")
            }
            Err(error) => return Err(graph_error(error)),
        };
        check_session(&session, spec)?;
        Ok((session, provider, notes))
    }

    /// Session options with the execution providers that register, and the first of them.
    fn builder(
        environment: &Environment,
        graph: &[u8],
        providers: Providers,
        engine_cache_dir: Option<&Path>,
        notes: &mut Vec<String>,
    ) -> Result<(SessionBuilder, &'static str), ModelError> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut builder: SessionBuilder = Session::builder(environment)
            .and_then(|b| {
                b.with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(Into::into)
            })
            .and_then(|b| b.with_intra_threads(threads).map_err(Into::into))
            // A layer comes every several seconds and fusion needs the cores straight after
            // inference: ONNX Runtime's workers must not spin waiting for more work.
            .and_then(|b| b.with_intra_op_spinning(false).map_err(Into::into))
            // The memory pattern plans one block for every intermediate tensor on top of the
            // arena that already caches them: without it the 1024x1024 default model's process
            // held 632 MiB instead of 786, at the same inference time (docs/performance.md, before
            // the export's bands). The arena stays: without it inference took 1.5x as long.
            .and_then(|b| b.with_memory_pattern(false).map_err(Into::into))
            .map_err(|e: ort::Error| ModelError::Graph {
                backend: BACKEND,
                reason: format!("session options: {e}"),
            })?;

        let mut provider = "CPU";
        if providers == Providers::TensorRtAndCuda {
            let cache_dir = engine_cache_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| std::env::temp_dir().join("bedsight-trt-cache"));
            let mut unavailable = Vec::new();
            if let Err(e) = std::fs::create_dir_all(&cache_dir) {
                unavailable.push(format!("TensorRT engine cache {}: {e}", cache_dir.display()));
            }
            let cache = cache_dir.to_string_lossy().into_owned();
            // INT8 only helps (and only works without a calibration table) on a QDQ graph.
            let quantized = contains(graph, b"DequantizeLinear");
            let tensorrt = ep::TensorRT::default()
                .with_engine_cache(true)
                .with_engine_cache_path(cache.clone())
                .with_timing_cache(true)
                .with_timing_cache_path(cache)
                .with_fp16(true)
                .with_int8(quantized);
            match tensorrt.register(&mut builder) {
                Ok(()) => provider = "TensorRT",
                Err(e) => unavailable.push(format!("TensorRT not available: {}", first_line(&e.to_string()))),
            }
            match ep::CUDA::default().register(&mut builder) {
                Ok(()) => {
                    if provider == "CPU" {
                        provider = "CUDA";
                    }
                }
                Err(e) => unavailable.push(format!("CUDA not available: {}", first_line(&e.to_string()))),
            }
            if !unavailable.is_empty() {
                notes.push(unavailable.join("; "));
            }
        }
        Ok((builder, provider))
    }

    /// Allocates the input and output tensors once and binds the output.
    fn bind(session: Session, spec: &ModelSpec, info: BackendInfo) -> Result<Self, ModelError> {
        let graph_error = |what: &str, e: ort::Error| ModelError::Graph {
            backend: BACKEND,
            reason: format!("{what}: {e}"),
        };
        let input_spec = &spec.input;
        let (c, h, w) = (
            input_spec.channels as usize,
            input_spec.height as usize,
            input_spec.width as usize,
        );
        let input =
            Tensor::<f32>::new(session.allocator(), [1usize, c, h, w]).map_err(|e| graph_error("input tensor", e))?;
        let mut output = Tensor::<f32>::new(session.allocator(), [1usize, spec.members, spec.classes.len(), h, w])
            .map_err(|e| graph_error("output tensor", e))?;
        let mut binding = session.create_binding().map_err(|e| graph_error("I/O binding", e))?;
        binding
            .bind_output(OUTPUT_NAME, &mut output)
            .map_err(|e| graph_error("binding the output", e))?;
        let layer_len = spec.layer_logits_len();
        let layer_output = if layer_len > 0 {
            let mut layer_output = Tensor::<f32>::new(session.allocator(), [1usize, layer_len])
                .map_err(|e| graph_error("layer output tensor", e))?;
            binding
                .bind_output(LAYER_OUTPUT_NAME, &mut layer_output)
                .map_err(|e| graph_error("binding the layer output", e))?;
            Some(layer_output)
        } else {
            None
        };
        let features_len = spec.features_len();
        let features_output = if features_len > 0 {
            let mut features_output = Tensor::<f32>::new(session.allocator(), [1usize, features_len])
                .map_err(|e| graph_error("features output tensor", e))?;
            binding
                .bind_output(FEATURES_OUTPUT_NAME, &mut features_output)
                .map_err(|e| graph_error("binding the features output", e))?;
            Some(features_output)
        } else {
            None
        };
        let output_declared_open = session
            .outputs()
            .iter()
            .filter(|o| {
                o.name() == OUTPUT_NAME
                    || (layer_len > 0 && o.name() == LAYER_OUTPUT_NAME)
                    || (features_len > 0 && o.name() == FEATURES_OUTPUT_NAME)
            })
            .any(|o| {
                o.dtype()
                    .tensor_shape()
                    .is_none_or(|shape| shape.iter().any(|&d| d < 0))
            });
        Ok(OrtBackend {
            info,
            session,
            binding,
            input,
            output,
            layer_output,
            layer_logits: vec![0.0; layer_len],
            features_output,
            features: vec![0.0; features_len],
            input_len: spec.input.len(),
            logits_len: spec.logits_len(),
            output_declared_open,
        })
    }

    /// Runs the graph once on a zero input without the binding and checks the concrete shape of
    /// `logits` against the spec.
    fn probe(&mut self, spec: &ModelSpec) -> Result<(), ModelError> {
        let inference_error = |e: ort::Error| ModelError::Inference {
            backend: BACKEND,
            reason: format!("trial run at load: {e}"),
        };
        self.input.extract_tensor_mut().1.fill(0.0);
        let outputs = self
            .session
            .run(ort::inputs![INPUT_NAME => &self.input])
            .map_err(inference_error)?;
        let logits = outputs
            .get(OUTPUT_NAME)
            .ok_or_else(|| ModelError::Contract(format!("graph returned no `{OUTPUT_NAME}`")))?;
        let (shape, _) = logits.try_extract_tensor::<f32>().map_err(inference_error)?;
        let concrete: Vec<DeclaredDim> = shape.iter().map(|&d| Some(d.max(0) as usize)).collect();
        check_output_shape(&concrete, spec)?;
        if spec.layer_head.is_some() {
            let layer_logits = outputs
                .get(LAYER_OUTPUT_NAME)
                .ok_or_else(|| ModelError::Contract(format!("graph returned no `{LAYER_OUTPUT_NAME}`")))?;
            let (shape, _) = layer_logits.try_extract_tensor::<f32>().map_err(inference_error)?;
            let concrete: Vec<DeclaredDim> = shape.iter().map(|&d| Some(d.max(0) as usize)).collect();
            check_layer_output_shape(&concrete, spec)?;
        }
        if spec.features.is_some() {
            let features = outputs
                .get(FEATURES_OUTPUT_NAME)
                .ok_or_else(|| ModelError::Contract(format!("graph returned no `{FEATURES_OUTPUT_NAME}`")))?;
            let (shape, _) = features.try_extract_tensor::<f32>().map_err(inference_error)?;
            let concrete: Vec<DeclaredDim> = shape.iter().map(|&d| Some(d.max(0) as usize)).collect();
            check_features_output_shape(&concrete, spec)?;
        }
        Ok(())
    }
}

impl Backend for OrtBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn infer(&mut self, input: &[f32]) -> Result<&[f32], ModelError> {
        check_input_len(BACKEND, input, self.input_len)?;
        let inference_error = |reason: String| ModelError::Inference {
            backend: BACKEND,
            reason,
        };
        self.input.extract_tensor_mut().1.copy_from_slice(input);
        // Re-bound every run: with a GPU provider the data is copied to the device at bind time.
        self.binding
            .bind_input(INPUT_NAME, &self.input)
            .map_err(|e| inference_error(e.to_string()))?;
        let outputs = self
            .session
            .run_binding(&self.binding)
            .map_err(|e| inference_error(e.to_string()))?;
        drop(outputs);
        let (shape, values) = self.output.extract_tensor();
        if values.len() != self.logits_len {
            return Err(ModelError::Contract(format!(
                "graph returned logits of shape {shape:?}"
            )));
        }
        if let Some(layer_output) = &self.layer_output {
            let (shape, values) = layer_output.extract_tensor();
            if values.len() != self.layer_logits.len() {
                return Err(ModelError::Contract(format!(
                    "graph returned `{LAYER_OUTPUT_NAME}` of shape {shape:?}"
                )));
            }
            self.layer_logits.copy_from_slice(values);
        }
        if let Some(features_output) = &self.features_output {
            let (shape, values) = features_output.extract_tensor();
            if values.len() != self.features.len() {
                return Err(ModelError::Contract(format!(
                    "graph returned `{FEATURES_OUTPUT_NAME}` of shape {shape:?}"
                )));
            }
            self.features.copy_from_slice(values);
        }
        Ok(self.output.extract_tensor().1)
    }

    fn layer_logits(&self) -> &[f32] {
        &self.layer_logits
    }

    fn features(&self) -> &[f32] {
        &self.features
    }
}

/// Checks the session's declared input and output against the spec.
fn check_session(session: &Session, spec: &ModelSpec) -> Result<(), ModelError> {
    let names = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| format!("`{}`", o.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let input = session
        .inputs()
        .iter()
        .find(|i| i.name() == INPUT_NAME)
        .ok_or_else(|| {
            ModelError::Contract(format!(
                "graph has no input named `{INPUT_NAME}` (its inputs: {})",
                names(session.inputs())
            ))
        })?;
    if session.inputs().len() != 1 {
        return Err(ModelError::Contract(format!(
            "graph has {} inputs ({}), the contract is one input `{INPUT_NAME}`",
            session.inputs().len(),
            names(session.inputs())
        )));
    }
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == OUTPUT_NAME)
        .ok_or_else(|| {
            ModelError::Contract(format!(
                "graph has no output named `{OUTPUT_NAME}` (its outputs: {})",
                names(session.outputs())
            ))
        })?;
    check_input_shape(&float_tensor_dims(input.dtype(), "input", INPUT_NAME)?, spec)?;
    check_output_shape(&float_tensor_dims(output.dtype(), "output", OUTPUT_NAME)?, spec)?;
    if spec.layer_head.is_some() {
        let layer_output = session
            .outputs()
            .iter()
            .find(|o| o.name() == LAYER_OUTPUT_NAME)
            .ok_or_else(|| {
                ModelError::Contract(format!(
                    "the manifest has a layer head but the graph has no output named \
                     `{LAYER_OUTPUT_NAME}` (its outputs: {})",
                    names(session.outputs())
                ))
            })?;
        check_layer_output_shape(
            &float_tensor_dims(layer_output.dtype(), "output", LAYER_OUTPUT_NAME)?,
            spec,
        )?;
    }
    if spec.features.is_some() {
        let features_output = session
            .outputs()
            .iter()
            .find(|o| o.name() == FEATURES_OUTPUT_NAME)
            .ok_or_else(|| {
                ModelError::Contract(format!(
                    "the manifest has a [domain] table but the graph has no output named \
                     `{FEATURES_OUTPUT_NAME}` (its outputs: {})",
                    names(session.outputs())
                ))
            })?;
        check_features_output_shape(
            &float_tensor_dims(features_output.dtype(), "output", FEATURES_OUTPUT_NAME)?,
            spec,
        )?;
    }
    Ok(())
}

fn float_tensor_dims(dtype: &ValueType, what: &str, name: &str) -> Result<Vec<DeclaredDim>, ModelError> {
    match dtype {
        ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            shape,
            ..
        } => Ok(shape
            .iter()
            .map(|&d| if d >= 0 { Some(d as usize) } else { None })
            .collect()),
        other => Err(ModelError::Contract(format!(
            "graph {what} `{name}` is {other}, the contract is a float32 tensor"
        ))),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}
