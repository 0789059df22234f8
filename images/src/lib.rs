//! The bedsight model image format (`.bsimg`): pack, open and verify, sign, and the key files.
//!
//! `images` knows the format and nothing else: it never parses or runs a graph (no ONNX Runtime,
//! no tract), and it knows nothing about cameras, the PLC, HTTP or the appliance's configuration
//! files. It turns files on disk into a checked [`ModelImage`] (every file's sha256 against the
//! manifest, the ed25519 signature against a set of [`TrustedKey`]s) and back. The format itself
//! is specified in `docs/model-image.md`; this crate is its one implementation.
//!
//! This is a boundary crate: its public types are plain data with public fields, documented and
//! kept stable. The A/B slots of a box (install into the idle slot, self-test, activate, roll back)
//! are in [`slots`]; the self-test that runs a graph is passed in by the caller.
//!
//! ```no_run
//! # fn main() -> Result<(), images::ImageError> {
//! use std::path::Path;
//! let trusted = images::load_trusted_keys(Path::new("/etc/bedsight/trusted-keys"))?;
//! let image = images::ModelImage::open(Path::new("models/default.bsimg"))?;
//! let signer = image.check_signature(&trusted)?;
//! println!("{} {} signed by {}", image.manifest.name, image.manifest.version, signer.owner);
//! let graph: &[u8] = image.default_graph();
//! # let _ = graph; Ok(()) }
//! ```

mod archive;
mod error;
mod keys;
mod manifest;
pub mod slots;

pub use archive::{
    pack, ModelImage, PackInput, PackedInfo, ENTRY_FP32_GRAPH, ENTRY_INT8_GRAPH, ENTRY_MANIFEST,
    ENTRY_SELFTEST_EXPECTED, ENTRY_SELFTEST_INPUT, ENTRY_SIGNATURE, ENTRY_TRAINING_WEIGHTS, MAX_IMAGE_BYTES,
    MAX_MANIFEST_BYTES,
};
pub use error::ImageError;
pub use keys::{keygen, load_signing_key, load_trusted_key, load_trusted_keys, TrustedKey};
pub use manifest::{
    ClassEntry, DomainGroup, DomainTable, EnsembleTable, GraphsTable, InputTable, LayerHeadTable, Manifest,
    FORMAT_MAJOR, FORMAT_MINOR, FORMAT_VERSION,
};
pub use slots::{
    active_generation, ActiveGeneration, InstallReport, SelfTestOutcome, Slot, SlotStatus, SlotView, Slots,
    SELFTEST_CLASS_MIN_PIXELS, SELFTEST_MIN_AGREEMENT, SELFTEST_MIN_CLASS_IOU,
};

/// The ed25519 types that appear in this API, re-exported so that users need not depend on
/// `ed25519-dalek` themselves.
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
