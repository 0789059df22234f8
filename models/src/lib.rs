//! `models` turns a rectified image of the powder bed into a measured result: it prepares the
//! graph's input (rectify, resize, normalise), runs the model's graph on a backend (ONNX Runtime
//! with TensorRT, CUDA or CPU, or tract), fuses the ensemble members' logits into a mask, an
//! uncertainty map and a confidence map (seed 000, Eq. 11-13, 20-21), refines the mask where the
//! model is unsure (seed 000, Algorithm 2) and measures each defect (area, equivalent diameter,
//! best-fit ellipse).
//!
//! It must not touch cameras, GPIO, the PLC, configuration files, HTTP or JSON, nor the model
//! image archive: the appliance unpacks the image with the `images` crate and hands this crate
//! the graph's bytes and a plain [`ModelSpec`]. Its public types are plain data with public
//! fields; the per-layer functions ([`fuse()`], [`Rectifier::rectify_into`], [`Backend::infer`])
//! work in buffers allocated once at start-up.
//!
//! One layer, in order:
//! ```text
//! FlatField::apply → Rectifier::rectify_into → preprocess_gray → Backend::infer → fuse → refine → measure
//! ```
//! and, when the model has a layer-level head, `Backend::layer_logits → layer_probabilities`.

pub mod backend;
pub mod classify;
pub mod components;
pub mod error;
pub mod flat_field;
pub mod fuse;
pub mod measure;
pub mod preprocess;
pub mod refine;
pub mod spec;

pub use backend::{find_onnxruntime, load_backend, tensorrt_built_in, Backend, BackendChoice, BackendInfo};
pub use classify::{layer_probabilities, most_probable};
pub use components::Labeller;
pub use error::ModelError;
pub use flat_field::{lighting_reference, median_frame, FlatField};
pub use fuse::{fuse, Fused};
pub use measure::{measure, measure_into, Defect, Ellipse, MeasureBuffers};
pub use preprocess::{preprocess, preprocess_gray, rectify, Rectifier};
pub use refine::{refine, refine_with, RefineBuffers, RefineReport};
pub use spec::{ClassInfo, InputSpec, LayerHeadSpec, ModelSpec, MAX_CLASSES, MAX_LAYER_CLASSES, MAX_MEMBERS};
