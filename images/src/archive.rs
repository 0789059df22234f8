//! The `.bsimg` archive: [`pack`] writes one, [`ModelImage::open`] reads and verifies one.
//!
//! The archive is a POSIX (ustar) tar archive of regular files only, `manifest.toml` first. A
//! reader therefore knows, before it reads any other entry, which entries may follow and what
//! their sha256 must be; nothing is ever extracted to disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::io_error;
use crate::manifest::parse_sha256;
use crate::{GraphsTable, ImageError, Manifest, TrustedKey, FORMAT_MINOR, FORMAT_VERSION};

/// The manifest entry; always the first entry of the archive.
pub const ENTRY_MANIFEST: &str = "manifest.toml";
/// The fp32 graph.
pub const ENTRY_FP32_GRAPH: &str = "model.onnx";
/// The optional INT8 (QDQ) graph; when present it is the default graph.
pub const ENTRY_INT8_GRAPH: &str = "model.int8.onnx";
/// The optional self-test input, a layer image.
pub const ENTRY_SELFTEST_INPUT: &str = "selftest/input.png";
/// The optional self-test expectation: the mask the fp32 graph gives on the input.
pub const ENTRY_SELFTEST_EXPECTED: &str = "selftest/expected_mask.png";
/// The optional training weights: the members' PyTorch state (`bedsight-train calibrate`'s
/// `ensemble.pt`), so that `bedsight-train finetune` can start from the image itself. The box
/// never reads it; its sha256 is checked like every entry's.
pub const ENTRY_TRAINING_WEIGHTS: &str = "training/ensemble.pt";
/// The optional signature: 64 raw bytes, ed25519 over the exact bytes of `manifest.toml`.
pub const ENTRY_SIGNATURE: &str = "manifest.sig";

/// The largest model image, in bytes, counting every entry's content.
pub const MAX_IMAGE_BYTES: u64 = 2 << 30;
/// The largest `manifest.toml`, in bytes: a `[domain]` table of the largest feature size (512)
/// holds 512 x 512 numbers, about 5 MB of TOML.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// Bytes of an ed25519 signature.
const SIGNATURE_BYTES: u64 = 64;
/// What may follow the end-of-archive marker: zero padding up to a tar record (GNU tar pads to
/// 10 KiB). Anything more is refused.
const MAX_TRAILER_BYTES: u64 = 64 << 10;
/// A tar block.
const BLOCK_BYTES: u64 = 512;
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The entries a manifest's `[files]` table may list.
const LISTABLE_ENTRIES: [&str; 5] = [
    ENTRY_FP32_GRAPH,
    ENTRY_INT8_GRAPH,
    ENTRY_SELFTEST_INPUT,
    ENTRY_SELFTEST_EXPECTED,
    ENTRY_TRAINING_WEIGHTS,
];

pub(crate) fn is_listable_entry(name: &str) -> bool {
    LISTABLE_ENTRIES.contains(&name)
}

/// What [`pack`] needs: the manifest the training tool wrote and the files to put next to it.
#[derive(Debug, Clone)]
pub struct PackInput<'a> {
    /// The manifest without `[graphs]` and `[files]`: [`pack`] fills (and overwrites) those two.
    pub manifest: Manifest,
    /// The fp32 graph, stored as `model.onnx`.
    pub fp32_graph: &'a Path,
    /// The INT8 graph, stored as `model.int8.onnx`; when given it becomes the default graph.
    pub int8_graph: Option<&'a Path>,
    /// The self-test: (input layer image, expected mask), both PNG, stored under `selftest/`.
    pub selftest: Option<(&'a Path, &'a Path)>,
    /// The members' PyTorch weights, stored as `training/ensemble.pt` for fine-tuning off the box.
    pub training_weights: Option<&'a Path>,
    /// When given, the manifest is signed with it and the signature stored as `manifest.sig`.
    pub signing_key: Option<&'a SigningKey>,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone)]
pub struct PackedInfo {
    /// The model image written.
    pub path: PathBuf,
    /// The manifest as written, `[graphs]` and `[files]` filled in.
    pub manifest: Manifest,
    /// sha256 of `manifest.toml`, lowercase hex: identifies the image's whole content.
    pub manifest_sha256: String,
    /// Size of the archive, bytes.
    pub archive_bytes: u64,
    /// The public half of the key that signed it, if signed.
    pub signed_by: Option<VerifyingKey>,
}

/// Packs a model image: reads the graphs and the self-test, fills in the manifest's `[graphs]`
/// and `[files]`, signs the manifest if a key is given, and writes the archive to `out`.
///
/// The archive is written to a temporary file in `out`'s folder and renamed over `out` when
/// complete, so `out` is either the old file or the whole new image, never half of one. The
/// result is reproducible: the same inputs give the same bytes (ed25519 signatures are
/// deterministic; entries carry no time, owner or mode of the inputs).
pub fn pack(input: &PackInput, out: &Path) -> Result<PackedInfo, ImageError> {
    let pack_error = |problem: String| ImageError::Pack {
        out: out.to_path_buf(),
        problem,
    };

    let mut sources: Vec<(&str, &Path, &str)> = vec![(ENTRY_FP32_GRAPH, input.fp32_graph, "fp32 graph")];
    if let Some(int8) = input.int8_graph {
        sources.push((ENTRY_INT8_GRAPH, int8, "INT8 graph"));
    }
    if let Some((selftest_input, expected_mask)) = input.selftest {
        sources.push((ENTRY_SELFTEST_INPUT, selftest_input, "self-test input"));
        sources.push((ENTRY_SELFTEST_EXPECTED, expected_mask, "self-test expected mask"));
    }
    if let Some(weights) = input.training_weights {
        sources.push((ENTRY_TRAINING_WEIGHTS, weights, "training weights"));
    }

    let mut contents: Vec<(&str, Vec<u8>)> = Vec::with_capacity(sources.len());
    let mut total_bytes = 0u64;
    for (entry, source, what) in sources {
        let metadata = fs::metadata(source).map_err(io_error(source, &format!("read the {what}")))?;
        if !metadata.is_file() {
            return Err(pack_error(format!(
                "the {what} {} is not a regular file",
                source.display()
            )));
        }
        total_bytes += metadata.len();
        if total_bytes > MAX_IMAGE_BYTES {
            return Err(pack_error(format!(
                "the files add up to more than {MAX_IMAGE_BYTES} bytes, the most a model image \
                 may hold (at the {what} {})",
                source.display()
            )));
        }
        let bytes = fs::read(source).map_err(io_error(source, &format!("read the {what}")))?;
        if bytes.is_empty() {
            return Err(pack_error(format!("the {what} {} is empty", source.display())));
        }
        if entry.ends_with(".png") && !bytes.starts_with(PNG_SIGNATURE) {
            return Err(pack_error(format!("the {what} {} is not a PNG file", source.display())));
        }
        contents.push((entry, bytes));
    }

    let mut manifest = input.manifest.clone();
    manifest.graphs = GraphsTable {
        default: if input.int8_graph.is_some() {
            ENTRY_INT8_GRAPH
        } else {
            ENTRY_FP32_GRAPH
        }
        .to_string(),
        fp32: ENTRY_FP32_GRAPH.to_string(),
    };
    manifest.files = contents
        .iter()
        .map(|(entry, bytes)| (entry.to_string(), hex::encode(Sha256::digest(bytes))))
        .collect();
    let origin = format!("cannot pack {}: manifest", out.display());
    manifest.validate(&origin)?;
    if manifest.format().is_some_and(|(_, minor)| minor > FORMAT_MINOR) {
        return Err(pack_error(format!(
            "the manifest says format_version \"{}\" but this bedsight writes \
             \"{FORMAT_VERSION}\": write \"{FORMAT_VERSION}\", or pack with a newer bedsight",
            manifest.format_version
        )));
    }
    let manifest_text = manifest.to_toml();
    // What is written must read back as the same manifest.
    let reparsed = Manifest::parse(&manifest_text, &origin)?;
    if reparsed != manifest {
        return Err(pack_error(
            "the manifest does not read back as written (a bug in bedsight; please report it)".to_string(),
        ));
    }
    let manifest_bytes = manifest_text.into_bytes();
    let signature = input.signing_key.map(|key| key.sign(&manifest_bytes));

    let mut entries: Vec<(&str, &[u8])> = vec![(ENTRY_MANIFEST, &manifest_bytes)];
    entries.extend(contents.iter().map(|(entry, bytes)| (*entry, bytes.as_slice())));
    let signature_bytes = signature.map(|signature| signature.to_bytes());
    if let Some(signature_bytes) = &signature_bytes {
        entries.push((ENTRY_SIGNATURE, signature_bytes));
    }
    let archive_bytes = write_atomically(out, &entries)?;

    Ok(PackedInfo {
        path: out.to_path_buf(),
        manifest_sha256: hex::encode(Sha256::digest(&manifest_bytes)),
        manifest,
        archive_bytes,
        signed_by: input.signing_key.map(SigningKey::verifying_key),
    })
}

/// Writes the tar archive to a temporary file next to `out`, syncs it and renames it over
/// `out`; returns the archive's size. The temporary file is removed on failure.
fn write_atomically(out: &Path, entries: &[(&str, &[u8])]) -> Result<u64, ImageError> {
    let file_name = out.file_name().ok_or_else(|| ImageError::Pack {
        out: out.to_path_buf(),
        problem: "the output path names no file".to_string(),
    })?;
    let folder = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = folder.join(temp_name);

    let write = || -> io::Result<u64> {
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        let mut builder = tar::Builder::new(BufWriter::new(file));
        for (name, bytes) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_path(name)?;
            header.set_size(bytes.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_cksum();
            builder.append(&header, *bytes)?;
        }
        let file = builder
            .into_inner()?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        let archive_bytes = file.metadata()?.len();
        drop(file);
        fs::rename(&temp, out)?;
        Ok(archive_bytes)
    };
    let archive_bytes = write().map_err(|error| {
        let _ = fs::remove_file(&temp);
        ImageError::Io {
            path: out.to_path_buf(),
            doing: format!("write the model image (through {})", temp.display()),
            error,
        }
    })?;
    // Make the rename itself durable.
    File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(folder, "sync the folder of the model image"))?;
    Ok(archive_bytes)
}

/// A model image read into memory and verified: every file's sha256 matches the manifest, no
/// file is missing or extra. The signature is checked separately, by
/// [`ModelImage::check_signature`].
#[derive(Debug, Clone)]
pub struct ModelImage {
    /// Where it was read from; every error message names it.
    pub path: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The exact bytes of `manifest.toml`, which the signature covers.
    pub manifest_bytes: Vec<u8>,
    /// Entry name → content, for every entry the manifest's `[files]` lists.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The signature from `manifest.sig`, if the image has one (not yet checked).
    pub signature: Option<Signature>,
}

impl ModelImage {
    /// Opens and verifies a model image file. See [`ModelImage::from_reader`] for what is
    /// checked.
    pub fn open(path: &Path) -> Result<ModelImage, ImageError> {
        let file = File::open(path).map_err(io_error(path, "open the model image"))?;
        let metadata = file.metadata().map_err(io_error(path, "read the model image"))?;
        if !metadata.is_file() {
            return Err(archive_error(path, "is not a regular file".to_string()));
        }
        // Entry contents plus headers and padding: a little more than the content limit.
        if metadata.len() > MAX_IMAGE_BYTES + MAX_MANIFEST_BYTES + (1 << 20) {
            return Err(archive_error(
                path,
                format!(
                    "is {} bytes, more than a model image may have ({MAX_IMAGE_BYTES} bytes of \
                     files)",
                    metadata.len()
                ),
            ));
        }
        Self::from_reader(file, path)
    }

    /// Verifies a model image held in memory (e.g. one compiled into the binary with
    /// `include_bytes!`); `name` stands for its path in errors. Checks as
    /// [`ModelImage::from_reader`] does.
    pub fn from_bytes(archive: &[u8], name: impl AsRef<Path>) -> Result<ModelImage, ImageError> {
        Self::from_reader(archive, name.as_ref())
    }

    /// Reads and verifies a model image from any reader (a file, an upload); `path` names it in
    /// errors. Refuses, with an error that names the entry:
    /// - anything that is not a complete ustar archive (damaged headers, truncation anywhere,
    ///   a missing end-of-archive marker, data after it), or that is gzip-compressed;
    /// - a first entry other than `manifest.toml`, an invalid manifest or one without `[files]`;
    /// - entries that are not regular files, names the manifest does not list (which includes
    ///   every unsafe path such as `../x` or `/x`), duplicate entries, missing entries;
    /// - a file whose sha256 differs from the manifest's, a `manifest.sig` that is not 64 bytes;
    /// - more than [`MAX_IMAGE_BYTES`] of content or a manifest over [`MAX_MANIFEST_BYTES`].
    pub fn from_reader(reader: impl Read, path: &Path) -> Result<ModelImage, ImageError> {
        let damaged = |error: io::Error| {
            archive_error(
                path,
                format!(
                    "the archive is damaged ({error}): it is truncated or not a model image; \
                     copy it again or re-pack it"
                ),
            )
        };
        let mut reader = BufReader::new(reader);
        let head = reader.fill_buf().map_err(io_error(path, "read the model image"))?;
        if head.is_empty() {
            return Err(archive_error(path, "is empty (0 bytes)".to_string()));
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            return Err(archive_error(
                path,
                "is gzip-compressed, but a model image is a plain tar archive: decompress it \
                 (gunzip) first"
                    .to_string(),
            ));
        }

        let mut archive = tar::Archive::new(reader);
        let mut manifest: Option<(Manifest, Vec<u8>)> = None;
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut signature: Option<Signature> = None;
        let mut content_bytes = 0u64;
        // Raw: GNU long names and pax headers are not part of the format and are refused as
        // entries of the wrong type, rather than interpreted.
        let entries = archive.entries().map_err(damaged)?.raw(true);
        for (index, entry) in entries.enumerate() {
            let mut entry = entry.map_err(damaged)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let entry_type = entry.header().entry_type();
            if !entry_type.is_file() {
                return Err(archive_error(
                    path,
                    format!(
                        "entry {name:?} is not a regular file (tar type {:?}); a model image \
                         holds regular files only: re-pack it",
                        char::from(entry_type.as_byte())
                    ),
                ));
            }
            let size = entry.size();
            content_bytes = content_bytes.saturating_add(size);
            if content_bytes > MAX_IMAGE_BYTES {
                return Err(archive_error(
                    path,
                    format!(
                        "holds more than {MAX_IMAGE_BYTES} bytes of files (at entry {name:?}), \
                         more than a model image may have"
                    ),
                ));
            }

            if index == 0 {
                if name != ENTRY_MANIFEST {
                    return Err(archive_error(
                        path,
                        format!(
                            "the first entry is {name:?}, not {ENTRY_MANIFEST}: this is not a \
                             bedsight model image, or it was not packed by `bedsight image pack`"
                        ),
                    ));
                }
                if size > MAX_MANIFEST_BYTES {
                    return Err(archive_error(
                        path,
                        format!(
                            "{ENTRY_MANIFEST} is {size} bytes, more than the \
                             {MAX_MANIFEST_BYTES} a manifest may have"
                        ),
                    ));
                }
                let bytes = read_entry(&mut entry, &name, path)?;
                let origin = format!("model image {}: {ENTRY_MANIFEST}", path.display());
                let text = std::str::from_utf8(&bytes).map_err(|_| ImageError::Manifest {
                    origin: origin.clone(),
                    problem: "is not UTF-8 text".to_string(),
                })?;
                let parsed = Manifest::parse(text, &origin)?;
                if parsed.files.is_empty() {
                    return Err(ImageError::Manifest {
                        origin,
                        problem: "has no [files] table: it was not packed by `bedsight image \
                                  pack`; pack it"
                            .to_string(),
                    });
                }
                manifest = Some((parsed, bytes));
                continue;
            }
            let (manifest, _) = manifest.as_ref().expect("the first entry is the manifest");

            if name == ENTRY_MANIFEST || (name == ENTRY_SIGNATURE && signature.is_some()) {
                return Err(duplicate(path, &name));
            }
            if name == ENTRY_SIGNATURE {
                if size != SIGNATURE_BYTES {
                    return Err(archive_error(
                        path,
                        format!(
                            "{ENTRY_SIGNATURE} is {size} bytes, an ed25519 signature is \
                             {SIGNATURE_BYTES}: sign the image again"
                        ),
                    ));
                }
                let bytes = read_entry(&mut entry, &name, path)?;
                let signature_bytes: [u8; 64] = bytes.try_into().expect("the size was checked above");
                signature = Some(Signature::from_bytes(&signature_bytes));
                continue;
            }

            let Some(listed_hash) = manifest.files.get(&name) else {
                return Err(ImageError::UnlistedFile {
                    path: path.to_path_buf(),
                    entry: name,
                });
            };
            if files.contains_key(&name) {
                return Err(duplicate(path, &name));
            }
            let bytes = read_entry(&mut entry, &name, path)?;
            let actual_hash: [u8; 32] = Sha256::digest(&bytes).into();
            if parse_sha256(listed_hash) != Some(actual_hash) {
                return Err(ImageError::HashMismatch {
                    path: path.to_path_buf(),
                    entry: name,
                    actual: hex::encode(actual_hash),
                    expected: listed_hash.clone(),
                });
            }
            files.insert(name, bytes);
        }

        // The tar reader stops at the first zero block (which it has consumed) or at the end of
        // the input. A complete archive has a second zero block after the first, then at most
        // zero padding.
        let mut trailer = Vec::new();
        archive
            .into_inner()
            .take(MAX_TRAILER_BYTES + 1)
            .read_to_end(&mut trailer)
            .map_err(io_error(path, "read the model image"))?;
        let Some((manifest, manifest_bytes)) = manifest else {
            return Err(archive_error(
                path,
                format!("holds no entries (no {ENTRY_MANIFEST}): it is not a model image"),
            ));
        };
        if (trailer.len() as u64) < BLOCK_BYTES {
            return Err(archive_error(
                path,
                "ends without the end-of-archive marker: it is truncated; copy it again or \
                 re-pack it"
                    .to_string(),
            ));
        }
        if trailer.len() as u64 > MAX_TRAILER_BYTES || trailer.iter().any(|&byte| byte != 0) {
            return Err(archive_error(
                path,
                "has data after the end-of-archive marker: it was changed after packing; re-pack \
                 it"
                .to_string(),
            ));
        }

        if let Some(missing) = manifest.files.keys().find(|name| !files.contains_key(*name)) {
            return Err(ImageError::MissingFile {
                path: path.to_path_buf(),
                entry: missing.clone(),
            });
        }
        Ok(ModelImage {
            path: path.to_path_buf(),
            manifest,
            manifest_bytes,
            files,
            signature,
        })
    }

    /// The graph the box runs (`[graphs] default`). Always present in an image from
    /// [`ModelImage::open`]; empty only for a `ModelImage` built by hand without it.
    pub fn default_graph(&self) -> &[u8] {
        self.file(&self.manifest.graphs.default).unwrap_or_default()
    }

    /// The fp32 reference graph (`[graphs] fp32`). Always present in an image from
    /// [`ModelImage::open`].
    pub fn fp32_graph(&self) -> &[u8] {
        self.file(&self.manifest.graphs.fp32).unwrap_or_default()
    }

    /// The INT8 graph, when the image has one (its default graph is then not the fp32 one).
    pub fn int8_graph(&self) -> Option<&[u8]> {
        (self.manifest.graphs.default != self.manifest.graphs.fp32).then(|| self.default_graph())
    }

    /// (input layer image, expected mask), both PNG, when the image has a self-test.
    pub fn selftest(&self) -> Option<(&[u8], &[u8])> {
        Some((self.file(ENTRY_SELFTEST_INPUT)?, self.file(ENTRY_SELFTEST_EXPECTED)?))
    }

    /// The members' PyTorch weights (`training/ensemble.pt`), when the image carries them.
    pub fn training_weights(&self) -> Option<&[u8]> {
        self.file(ENTRY_TRAINING_WEIGHTS)
    }

    /// The content of one entry listed in `[files]`.
    pub fn file(&self, entry: &str) -> Option<&[u8]> {
        self.files.get(entry).map(Vec::as_slice)
    }

    /// sha256 of `manifest.toml`, lowercase hex. The manifest lists every file's sha256, so this
    /// identifies the whole content of the image (the signature aside).
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.manifest_bytes))
    }

    /// Checks `manifest.sig` against the trusted keys and returns the one that verifies it
    /// (strict ed25519 verification over the exact manifest bytes). Since the manifest holds
    /// every file's sha256 and [`ModelImage::open`] checked those, a good signature covers the
    /// whole image.
    ///
    /// Errors: [`ImageError::Unsigned`] without a signature, [`ImageError::NoTrustedKeys`] with
    /// an empty `trusted`, [`ImageError::UntrustedSignature`] when no key verifies it (signed by
    /// someone else, or the manifest changed after signing).
    pub fn check_signature<'k>(&self, trusted: &'k [TrustedKey]) -> Result<&'k TrustedKey, ImageError> {
        let signature = self.signature.as_ref().ok_or_else(|| ImageError::Unsigned {
            path: self.path.clone(),
        })?;
        if trusted.is_empty() {
            return Err(ImageError::NoTrustedKeys {
                path: self.path.clone(),
            });
        }
        trusted
            .iter()
            .find(|key| key.key.verify_strict(&self.manifest_bytes, signature).is_ok())
            .ok_or_else(|| ImageError::UntrustedSignature {
                path: self.path.clone(),
                tried: trusted.iter().map(|key| key.owner.clone()).collect(),
            })
    }
}

/// Reads a whole entry, refusing one that ends early (a truncated archive).
fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let size = entry.size();
    // Grow as the data arrives rather than trusting the header's size for the allocation.
    let mut bytes = Vec::with_capacity(size.min(64 << 20) as usize);
    entry.read_to_end(&mut bytes).map_err(|error| {
        archive_error(
            path,
            format!(
                "cannot read entry {name:?} ({error}): the archive is damaged; copy it again or \
                 re-pack it"
            ),
        )
    })?;
    if bytes.len() as u64 != size {
        return Err(archive_error(
            path,
            format!(
                "entry {name:?} is cut short ({} of {size} bytes): the archive is truncated; \
                 copy it again or re-pack it",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn archive_error(path: &Path, problem: String) -> ImageError {
    ImageError::Archive {
        path: path.to_path_buf(),
        problem,
    }
}

fn duplicate(path: &Path, name: &str) -> ImageError {
    archive_error(
        path,
        format!("holds {name} twice: the archive was changed after packing; re-pack it"),
    )
}
