//! Running the graph: the [`Backend`] trait, choosing and loading a backend, finding ONNX Runtime.
//!
//! Two backends run the same graph: ONNX Runtime through `ort` (TensorRT, CUDA, CPU execution
//! providers, in that order; the library is loaded at run time, so a box without it still starts)
//! and `tract`, the pure-Rust fallback. Both check the graph against the [`ModelSpec`] when they
//! load it and return the raw logits; fusion happens afterwards, the same for both.

pub mod ort;
pub mod tract;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::spec::ModelSpec;

/// The input name the model contract requires.
pub const INPUT_NAME: &str = "image";
/// The output name the model contract requires.
pub const OUTPUT_NAME: &str = "logits";
/// The optional second output: the layer-level classification head's logits `[1, L]`, read
/// when the spec has a [`LayerHeadSpec`](crate::LayerHeadSpec) and ignored otherwise.
pub const LAYER_OUTPUT_NAME: &str = "layer_logits";
/// The optional third output: the features the domain check compares `[1, D]`, read when the
/// spec has [`ModelSpec::features`] and ignored otherwise.
pub const FEATURES_OUTPUT_NAME: &str = "features";

/// Which backend to run a graph on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BackendChoice {
    /// ONNX Runtime when [`find_onnxruntime`] finds a library that loads, else tract.
    Auto,
    /// ONNX Runtime or an error.
    Ort,
    /// tract.
    Tract,
}

/// What a loaded backend runs on, for the dashboard, the verdicts and the logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `"ort"` or `"tract"`.
    pub name: String,
    /// For ort, the execution provider that registered first: `"TensorRT"`, `"CUDA"` or `"CPU"`;
    /// for tract, `"tract"`.
    pub execution_provider: String,
    /// One line on how it came to be: the library's path, the providers that did not register and
    /// why, or why Auto fell back to tract.
    pub detail: String,
}

/// A loaded graph, ready to run one layer after another.
pub trait Backend: Send {
    /// What this backend runs on.
    fn info(&self) -> &BackendInfo;

    /// Runs the graph on `input` (`[1, C, H, W]`, [`InputSpec::len`](crate::InputSpec::len)
    /// values, as [`preprocess`](crate::preprocess()) makes it) and returns the raw logits
    /// `[1, M, K, H, W]` ([`ModelSpec::logits_len`] values) where the backend wrote them (ONNX
    /// Runtime's bound output, tract's output tensor): fusion reads them there, no copy is made
    /// (at 1024x1024 with 5 members they are 126 MB). Valid until the next call.
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], ModelError>;

    /// The raw layer-level logits `[1, L]` ([`ModelSpec::layer_logits_len`] values) of the last
    /// [`Backend::infer`]; empty when the spec has no layer head.
    fn layer_logits(&self) -> &[f32];

    /// The domain check's features `[1, D]` ([`ModelSpec::features_len`] values) of the last
    /// [`Backend::infer`]; empty when the spec has none.
    fn features(&self) -> &[f32];
}

/// Loads `graph` (ONNX bytes) on the chosen backend and checks it against `spec`: one input
/// `image` of shape `[1, C, H, W]`, one output `logits` of shape `[1, M, K, H, W]`, and, when the
/// spec has a layer head, an output `layer_logits` of shape `[1, L]`. A mismatch is an error
/// naming what disagrees ("graph returns 3 members, manifest says 5").
///
/// `engine_cache_dir` is where TensorRT keeps its built engines between starts (ort only; when
/// `None`, a `bedsight-trt-cache` folder in the system's temporary directory).
///
/// With [`BackendChoice::Auto`], a missing or unloadable ONNX Runtime library falls back to tract
/// (and [`BackendInfo::detail`] says why); a graph that ONNX Runtime refuses is an error, not a
/// fallback, since tract would run a graph that disagrees with the manifest no better.
pub fn load_backend(
    choice: BackendChoice,
    graph: &[u8],
    spec: &ModelSpec,
    engine_cache_dir: Option<&Path>,
) -> Result<Box<dyn Backend>, ModelError> {
    spec.validate()?;
    match choice {
        BackendChoice::Tract => Ok(Box::new(tract::TractBackend::load(
            graph,
            spec,
            "tract asked for".to_string(),
        )?)),
        BackendChoice::Ort => {
            let library = locate_onnxruntime().map_err(ModelError::RuntimeNotFound)?;
            Ok(Box::new(ort::OrtBackend::load(
                &library,
                graph,
                spec,
                engine_cache_dir,
            )?))
        }
        BackendChoice::Auto => {
            let why_not_ort = match locate_onnxruntime() {
                Ok(library) => match ort::OrtBackend::load(&library, graph, spec, engine_cache_dir) {
                    Ok(backend) => return Ok(Box::new(backend)),
                    Err(error @ (ModelError::RuntimeLoad { .. } | ModelError::RuntimeNotFound(_))) => error.to_string(),
                    Err(error) => return Err(error),
                },
                Err(reason) => format!("ONNX Runtime library not found: {reason}"),
            };
            Ok(Box::new(tract::TractBackend::load(graph, spec, why_not_ort)?))
        }
    }
}

/// Whether the ONNX Runtime that `choice` would load has the TensorRT execution provider built
/// in. It may still not take a session (no GPU, no TensorRT libraries): the loaded backend's
/// [`BackendInfo::execution_provider`] says what did. False for tract and when no ONNX Runtime
/// library is found or loads.
pub fn tensorrt_built_in(choice: BackendChoice) -> bool {
    if choice == BackendChoice::Tract {
        return false;
    }
    match locate_onnxruntime() {
        Ok(library) => ort::tensorrt_built_in(&library),
        Err(_) => false,
    }
}

/// The ONNX Runtime shared library to load, if there is one:
/// 1. `ORT_DYLIB_PATH` when it is set (and then only it: a path set there that does not exist
///    gives `None`, never some other library);
/// 2. `libonnxruntime.so*` in the JetPack and system library folders: `/usr/lib/aarch64-linux-gnu`,
///    `/usr/local/lib`, `/usr/lib`, `/usr/lib/x86_64-linux-gnu`, `/opt/onnxruntime/lib`;
/// 3. the Python `onnxruntime` package's `onnxruntime/capi/libonnxruntime.so.*` in
///    `~/.cache/bedsight/venv`, `$VIRTUAL_ENV`, `$CONDA_PREFIX`, `~/.local`, `/usr/local/lib`,
///    `/usr/lib` (`python3*/site-packages` and `dist-packages`), `/usr/lib/python3/dist-packages`,
///    and every pyenv version under `$PYENV_ROOT` or `~/.pyenv`.
///
/// Finds files only; whether the library loads is found out by [`load_backend`].
pub fn find_onnxruntime() -> Option<PathBuf> {
    locate_onnxruntime().ok()
}

/// [`find_onnxruntime`], saying where it looked when it finds nothing.
pub(crate) fn locate_onnxruntime() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "ORT_DYLIB_PATH={} does not exist; point it at libonnxruntime.so or unset it",
                path.display()
            ))
        };
    }
    let folders = candidate_folders();
    for folder in &folders {
        if let Some(library) = library_in(folder) {
            return Ok(library);
        }
    }
    Err(format!(
        "ORT_DYLIB_PATH is not set and no libonnxruntime.so* is in {} folders searched (system library \
         folders and Python site-packages); install onnxruntime or set ORT_DYLIB_PATH",
        folders.len()
    ))
}

/// Folders that may hold `libonnxruntime.so*`, in the order they are searched.
fn candidate_folders() -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = [
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/opt/onnxruntime/lib",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();

    // Python environments: each prefix has lib/python3.X/{site,dist}-packages.
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    let mut prefixes: Vec<PathBuf> = Vec::new();
    if let Some(home) = &home {
        prefixes.push(home.join(".cache/bedsight/venv"));
    }
    for variable in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
            prefixes.push(PathBuf::from(prefix));
        }
    }
    if let Some(home) = &home {
        prefixes.push(home.join(".local"));
    }
    prefixes.push(PathBuf::from("/usr/local"));
    prefixes.push(PathBuf::from("/usr"));
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pyenv")));
    if let Some(root) = pyenv_root {
        prefixes.extend(sorted_entries(&root.join("versions"), |_| true).into_iter().rev());
    }

    let mut package_folders: Vec<PathBuf> = Vec::new();
    for prefix in &prefixes {
        for python in sorted_entries(&prefix.join("lib"), |name| name.starts_with("python3"))
            .into_iter()
            .rev()
        {
            for packages in ["site-packages", "dist-packages"] {
                package_folders.push(python.join(packages));
            }
        }
    }
    package_folders.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    folders.extend(package_folders.into_iter().map(|p| p.join("onnxruntime/capi")));
    folders
}

/// The entries of `folder` whose file name passes `keep`, sorted by name (nothing if unreadable).
fn sorted_entries(folder: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// `libonnxruntime.so` in `folder`, else `libonnxruntime.so.1`, else the highest
/// `libonnxruntime.so.<version>` (the providers' libraries are not it).
fn library_in(folder: &Path) -> Option<PathBuf> {
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    for path in sorted_entries(folder, |name| name.starts_with("libonnxruntime.so")) {
        let name = path.file_name()?.to_str()?.to_string();
        if !path.is_file() {
            continue;
        }
        if name == "libonnxruntime.so" {
            return Some(path);
        }
        if let Some(version) = name.strip_prefix("libonnxruntime.so.") {
            let numbers: Option<Vec<u64>> = version.split('.').map(|n| n.parse().ok()).collect();
            if let Some(numbers) = numbers {
                versioned.push((numbers, path));
            }
        }
    }
    versioned.sort();
    versioned.pop().map(|(_, path)| path)
}

/// A dimension as a graph declares it: known, or symbolic/unknown.
pub(crate) type DeclaredDim = Option<usize>;

/// Checks a declared input shape against `[1, C, H, W]`; unknown dimensions pass.
pub(crate) fn check_input_shape(declared: &[DeclaredDim], spec: &ModelSpec) -> Result<(), ModelError> {
    let input = &spec.input;
    if declared.len() != 4 {
        return Err(ModelError::Contract(format!(
            "graph input `{INPUT_NAME}` has {} dimensions {}, the contract is [1, C, H, W]",
            declared.len(),
            show(declared)
        )));
    }
    let expectations = [
        ("batch", 1usize, "the contract says"),
        ("channels", input.channels as usize, "manifest says"),
        ("height", input.height as usize, "manifest says"),
        ("width", input.width as usize, "manifest says"),
    ];
    for (dim, (what, expected, source)) in declared.iter().zip(expectations) {
        if let Some(actual) = dim {
            if *actual != expected {
                return Err(ModelError::Contract(format!(
                    "graph takes input {what} {actual}, {source} {expected} (graph input `{INPUT_NAME}` is {})",
                    show(declared)
                )));
            }
        }
    }
    Ok(())
}

/// Checks an output shape against `[1, M, K, H, W]`; unknown dimensions pass (the backends
/// check the concrete shape too).
pub(crate) fn check_output_shape(declared: &[DeclaredDim], spec: &ModelSpec) -> Result<(), ModelError> {
    if declared.len() != 5 {
        return Err(ModelError::Contract(format!(
            "graph output `{OUTPUT_NAME}` has {} dimensions {}, the contract is [1, M, K, H, W]",
            declared.len(),
            show(declared)
        )));
    }
    let input = &spec.input;
    let expectations = [
        ("a batch of", 1usize, "the contract says 1", ""),
        ("", spec.members, "manifest says", " members"),
        ("", spec.classes.len(), "manifest lists", " classes"),
        (
            "logits of height",
            input.height as usize,
            "manifest input height is",
            "",
        ),
        ("logits of width", input.width as usize, "manifest input width is", ""),
    ];
    for (dim, (prefix, expected, source, unit)) in declared.iter().zip(expectations) {
        if let Some(actual) = dim {
            if *actual != expected {
                let returns = if prefix.is_empty() {
                    format!("{actual}{unit}")
                } else {
                    format!("{prefix} {actual}")
                };
                let says = if source.ends_with(" 1") {
                    source.to_string()
                } else {
                    format!("{source} {expected}")
                };
                return Err(ModelError::Contract(format!(
                    "graph returns {returns}, {says} (graph output `{OUTPUT_NAME}` is {})",
                    show(declared)
                )));
            }
        }
    }
    Ok(())
}

/// Checks the declared shape of `layer_logits` against `[1, L]`; unknown dimensions pass.
pub(crate) fn check_layer_output_shape(declared: &[DeclaredDim], spec: &ModelSpec) -> Result<(), ModelError> {
    let classes = spec.layer_logits_len();
    check_row_output_shape(declared, LAYER_OUTPUT_NAME, "L", classes, |actual| {
        format!("graph returns {actual} layer classes, manifest lists {classes}")
    })
}

/// Checks the declared shape of `features` against `[1, D]`; unknown dimensions pass.
pub(crate) fn check_features_output_shape(declared: &[DeclaredDim], spec: &ModelSpec) -> Result<(), ModelError> {
    let size = spec.features_len();
    check_row_output_shape(declared, FEATURES_OUTPUT_NAME, "D", size, |actual| {
        format!("graph returns {actual} features, the manifest's [domain] table has feature_size {size}")
    })
}

/// A `[1, N]` output named `name` against the `N` the spec expects; `disagree` words a wrong N.
fn check_row_output_shape(
    declared: &[DeclaredDim],
    name: &str,
    letter: &str,
    expected: usize,
    disagree: impl Fn(usize) -> String,
) -> Result<(), ModelError> {
    let wrong = |what: String| {
        Err(ModelError::Contract(format!(
            "graph output `{name}` is {}: {what}",
            show(declared)
        )))
    };
    if declared.len() != 2 {
        return wrong(format!("the contract is [1, {letter}]"));
    }
    if declared[0].is_some_and(|batch| batch != 1) {
        return wrong("the contract says a batch of 1".into());
    }
    match declared[1] {
        Some(actual) if actual != expected => wrong(disagree(actual)),
        _ => Ok(()),
    }
}

/// `[1, 3, ?, 256]`.
fn show(dims: &[DeclaredDim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Checks the buffers handed to [`Backend::infer`].
pub(crate) fn check_input_len(backend: &str, input: &[f32], input_len: usize) -> Result<(), ModelError> {
    if input.len() != input_len {
        return Err(ModelError::Input(format!(
            "{backend}: input holds {} values, the graph takes {input_len}",
            input.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::test_spec;

    #[test]
    fn shape_checks_name_what_disagrees() {
        let spec = test_spec(64, 32, 5, 6);
        assert!(check_input_shape(&[Some(1), Some(1), Some(32), Some(64)], &spec).is_ok());
        assert!(check_input_shape(&[None, Some(1), None, None], &spec).is_ok());
        let message = check_input_shape(&[Some(1), Some(3), Some(32), Some(64)], &spec)
            .unwrap_err()
            .to_string();
        assert!(message.contains("channels 3, manifest says 1"), "{message}");

        assert!(check_output_shape(&[Some(1), Some(5), Some(6), Some(32), Some(64)], &spec).is_ok());
        let message = check_output_shape(&[Some(1), Some(3), Some(6), Some(32), Some(64)], &spec)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("graph returns 3 members, manifest says 5"),
            "{message}"
        );
        let message = check_output_shape(&[Some(1), Some(5), Some(4), None, None], &spec)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("graph returns 4 classes, manifest lists 6"),
            "{message}"
        );
        let message = check_output_shape(&[Some(1), Some(5), Some(6), Some(16), Some(64)], &spec)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("graph returns logits of height 16, manifest input height is 32"),
            "{message}"
        );
        let message = check_output_shape(&[Some(1), Some(6), Some(32), Some(64)], &spec)
            .unwrap_err()
            .to_string();
        assert!(message.contains("4 dimensions"), "{message}");

        let mut spec = test_spec(64, 32, 5, 6);
        spec.layer_head = Some(crate::LayerHeadSpec {
            classes: vec!["a".into(), "b".into(), "c".into()],
            temperature: 1.0,
        });
        assert!(check_layer_output_shape(&[Some(1), Some(3)], &spec).is_ok());
        assert!(check_layer_output_shape(&[None, None], &spec).is_ok());
        let message = check_layer_output_shape(&[Some(1), Some(4)], &spec)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("graph returns 4 layer classes, manifest lists 3"),
            "{message}"
        );
        assert!(check_layer_output_shape(&[Some(1), Some(3), Some(1)], &spec).is_err());
    }

    #[test]
    fn library_in_prefers_the_plain_name_then_the_highest_version() {
        let folder = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(folder.path().join(name), b"").unwrap();
        assert_eq!(library_in(folder.path()), None);
        touch("libonnxruntime_providers_shared.so");
        touch("libonnxruntime.so.1.9.0");
        touch("libonnxruntime.so.1.17.1");
        assert_eq!(
            library_in(folder.path()),
            Some(folder.path().join("libonnxruntime.so.1.17.1"))
        );
        touch("libonnxruntime.so");
        assert_eq!(library_in(folder.path()), Some(folder.path().join("libonnxruntime.so")));
    }
}
