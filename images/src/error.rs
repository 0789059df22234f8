//! The one error type of the crate. Every message names the file (and the entry inside a model
//! image) and says what is wrong and what to do about it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while packing, opening, verifying or signing a model image.
///
/// Match on the variant to decide what to do; show the `Display` text to people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Reading or writing a file failed (missing, unreadable, disk full, ...).
    #[error("{}: cannot {doing}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "read the fp32 graph".
        doing: String,
        /// Said in the message, and not a `source`: a chain printed whole (anyhow's `{:#}`)
        /// would say it twice.
        error: io::Error,
    },

    /// The manifest is not valid TOML, has unknown or missing keys, or fails validation.
    #[error("{origin}: {problem}")]
    Manifest {
        /// Where the manifest came from, e.g. "model image models/a.bsimg: manifest.toml".
        origin: String,
        /// Every problem found, separated by "; ".
        problem: String,
    },

    /// The manifest's `format_version` has a major version this build does not know.
    #[error(
        "{origin}: format_version \"{found}\" is not supported: this bedsight reads format \
         {supported}.x (update bedsight, or pack the model with a tool that writes format \
         {supported}.x)"
    )]
    UnsupportedFormat {
        /// Where the manifest came from.
        origin: String,
        /// The `format_version` string as written.
        found: String,
        /// The major version this build reads ([`crate::FORMAT_MAJOR`]).
        supported: u32,
    },

    /// The archive itself is malformed: not a tar archive, truncated, too large, entries out of
    /// order, duplicated, of the wrong type or with an unsafe name.
    #[error("model image {}: {problem}", path.display())]
    Archive {
        /// The model image.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },

    /// A file in the archive does not have the sha256 the manifest lists for it.
    #[error(
        "model image {}: {entry} sha256 is {}…, manifest says {}… (the file was changed after \
         packing; re-pack it)",
        path.display(), short_hash(actual), short_hash(expected)
    )]
    HashMismatch {
        /// The model image.
        path: PathBuf,
        /// The entry, e.g. "model.onnx".
        entry: String,
        /// The sha256 of the entry as found, lowercase hex.
        actual: String,
        /// The sha256 the manifest lists, as written there.
        expected: String,
    },

    /// The manifest lists a file that the archive does not hold.
    #[error(
        "model image {}: manifest lists {entry} but the archive does not hold it (the image is \
         incomplete; copy it again or re-pack it)",
        path.display()
    )]
    MissingFile {
        /// The model image.
        path: PathBuf,
        /// The entry the manifest lists.
        entry: String,
    },

    /// The archive holds a file that the manifest does not list.
    #[error(
        "model image {}: the archive holds {entry}, which the manifest does not list (it was \
         added after packing; re-pack the image)",
        path.display()
    )]
    UnlistedFile {
        /// The model image.
        path: PathBuf,
        /// The unlisted entry's name.
        entry: String,
    },

    /// The image has no `manifest.sig` but a signature is required.
    #[error(
        "model image {}: it is not signed (it has no manifest.sig); pack it again with a signing \
         key",
        path.display()
    )]
    Unsigned {
        /// The model image.
        path: PathBuf,
    },

    /// The signature verifies with none of the trusted keys.
    #[error(
        "model image {}: manifest.sig does not verify with any trusted key (tried: {}): it was \
         signed with a key this box does not trust, or manifest.toml was changed after signing; \
         sign it with a trusted key, or install the signer's .pub file among the trusted keys",
        path.display(), tried.join(", ")
    )]
    UntrustedSignature {
        /// The model image.
        path: PathBuf,
        /// The owners of the keys that were tried.
        tried: Vec<String>,
    },

    /// A signature was to be checked but no trusted key was given.
    #[error(
        "model image {}: there are no trusted keys to check its signature against; install the \
         signer's .pub file among the trusted keys",
        path.display()
    )]
    NoTrustedKeys {
        /// The model image.
        path: PathBuf,
    },

    /// A key file (or the folder of trusted keys) is malformed or in the way.
    #[error("key file {}: {problem}", path.display())]
    Key {
        /// The key file or folder.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },

    /// The slots on a box (`STATE/slots`, the `active` and `previous` pointers) are in a state
    /// the operation cannot proceed from, or an install was refused before activation.
    #[error("model slots {}: {problem}", path.display())]
    Slot {
        /// The state folder, slot or pointer file concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },

    /// The image's self-test failed: the golden input did not give the expected mask (or could
    /// not be run). The image was not activated.
    #[error(
        "model image {}: self-test failed: {problem}; the image was not activated (the active \
         model is unchanged)",
        path.display()
    )]
    SelfTest {
        /// The model image.
        path: PathBuf,
        /// What went wrong, e.g. "mask agreement 41.2% < 99.0%".
        problem: String,
    },

    /// The input to [`crate::pack`] is unusable (other than the manifest, which gives
    /// [`ImageError::Manifest`]).
    #[error("cannot pack {}: {problem}", out.display())]
    Pack {
        /// The model image that was to be written.
        out: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// The first 12 hex digits of a hash: enough to tell two apart in a message.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Shorthand for `map_err` on I/O results.
pub(crate) fn io_error(path: &std::path::Path, doing: &str) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    let doing = doing.to_string();
    move |error| ImageError::Io { path, doing, error }
}
