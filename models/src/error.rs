//! The one error type of the crate.

use std::path::PathBuf;

/// What went wrong while loading or running a model, or with the data handed to it.
///
/// Every message names the thing that failed and what disagrees, so the appliance can show it
/// as it is (prefixed with the model image it was loading).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The [`ModelSpec`](crate::ModelSpec) itself is inconsistent (e.g. 3 members, 2 temperatures).
    #[error("model spec: {0}")]
    Spec(String),
    /// No ONNX Runtime library was found where one was asked for.
    #[error("ONNX Runtime library not found: {0}")]
    RuntimeNotFound(String),
    /// An ONNX Runtime library was found but could not be loaded (wrong file, too old, ...).
    #[error("ONNX Runtime library {}: {reason}", path.display())]
    RuntimeLoad { path: PathBuf, reason: String },
    /// The graph could not be parsed, optimised or turned into a session.
    #[error("{backend}: graph cannot be loaded: {reason}")]
    Graph { backend: &'static str, reason: String },
    /// The graph loads but its inputs or outputs disagree with the manifest.
    #[error("graph does not match the manifest: {0}")]
    Contract(String),
    /// Running the graph failed.
    #[error("{backend}: inference failed: {reason}")]
    Inference { backend: &'static str, reason: String },
    /// A buffer or image handed to this crate has the wrong size or is unusable.
    #[error("{0}")]
    Input(String),
}
