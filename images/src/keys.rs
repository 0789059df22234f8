//! Key files: the signer's private key (`<name>.key`) and the public keys a box trusts
//! (`<owner>.pub`). Both are the standard PEM forms OpenSSL reads and writes:
//! - `.key`: PKCS#8 `-----BEGIN PRIVATE KEY-----` (RFC 8410), as `openssl genpkey -algorithm
//!   ed25519` writes it; mode 0600.
//! - `.pub`: SubjectPublicKeyInfo `-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout`
//!   writes it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::error::io_error;
use crate::ImageError;

/// The largest key file read, in bytes (a PEM ed25519 key is about 120).
const MAX_KEY_FILE_BYTES: u64 = 16 << 10;

/// A public key the box accepts signatures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Who holds the private half: the `.pub` file's stem (`alice.pub` → "alice").
    pub owner: String,
    /// The public key.
    pub key: VerifyingKey,
}

/// Generates a new signing key pair and writes `<out_stem>.key` (the private key, mode 0600)
/// and `<out_stem>.pub` (the public key, to install among a box's trusted keys). Refuses to
/// overwrite either file. Returns (private key file, public key file).
pub fn keygen(out_stem: &Path) -> Result<(PathBuf, PathBuf), ImageError> {
    let key_path = with_suffix(out_stem, ".key");
    let pub_path = with_suffix(out_stem, ".pub");
    for path in [&key_path, &pub_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(key_error(
                path,
                "already exists; bedsight never overwrites a key: choose another name, or move \
                 the old key away first",
            ));
        }
    }

    let signing_key = SigningKey::generate(&mut rand_core::OsRng);
    // PKCS#8 v1 without the public key, exactly as `openssl genpkey -algorithm ed25519` writes.
    let private_pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: signing_key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| key_error(&key_path, &format!("cannot encode the new key ({e})")))?;
    let public_pem = signing_key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| key_error(&pub_path, &format!("cannot encode the new key ({e})")))?;

    write_new(&key_path, private_pem.as_bytes(), 0o600, "write the private key")?;
    if let Err(error) = write_new(&pub_path, public_pem.as_bytes(), 0o644, "write the public key") {
        let _ = fs::remove_file(&key_path);
        return Err(error);
    }
    Ok((key_path, pub_path))
}

/// Reads a private key written by [`keygen`] (or `openssl genpkey -algorithm ed25519`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ImageError> {
    let text = read_key_file(path, "read the private key")?;
    if text.contains("PUBLIC KEY-----") {
        return Err(key_error(
            path,
            "is a public key; signing needs the private key (the .key file from `bedsight image \
             keygen`)",
        ));
    }
    if text.contains("ENCRYPTED PRIVATE KEY-----") {
        return Err(key_error(
            path,
            "is encrypted; bedsight reads unencrypted keys (decrypt it with `openssl pkey`, and \
             keep the result readable by you only)",
        ));
    }
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        key_error(
            path,
            &format!(
                "is not an ed25519 private key in PKCS#8 PEM ({e}); make one with `bedsight \
                 image keygen`"
            ),
        )
    })
}

/// Reads one public key file; the owner is the file's stem.
pub fn load_trusted_key(path: &Path) -> Result<TrustedKey, ImageError> {
    let text = read_key_file(path, "read the public key")?;
    if text.contains("PRIVATE KEY-----") {
        return Err(key_error(
            path,
            "is a private key: only public keys (.pub) belong among the trusted keys; remove it \
             from the box and keep it secret",
        ));
    }
    let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        key_error(
            path,
            &format!(
                "is not an ed25519 public key in PEM ({e}); install the .pub file that \
                 `bedsight image keygen` wrote"
            ),
        )
    })?;
    if key.is_weak() {
        return Err(key_error(
            path,
            "is a weak ed25519 key (a small-order point) that anyone can forge signatures for; \
             remove it",
        ));
    }
    let owner = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(TrustedKey { owner, key })
}

/// Reads every `*.pub` file in `dir` (not in sub-folders), in file-name order. Any unreadable or
/// malformed `.pub` file is an error, not skipped; other files are ignored. An empty folder
/// gives an empty list.
pub fn load_trusted_keys(dir: &Path) -> Result<Vec<TrustedKey>, ImageError> {
    let doing = "read the folder of trusted keys";
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir, doing))? {
        let path = entry.map_err(io_error(dir, doing))?.path();
        if path.extension().is_some_and(|ext| ext == "pub") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|path| load_trusted_key(path)).collect()
}

fn read_key_file(path: &Path, doing: &str) -> Result<Zeroizing<String>, ImageError> {
    let metadata = fs::metadata(path).map_err(io_error(path, doing))?;
    if !metadata.is_file() {
        return Err(key_error(path, "is not a regular file"));
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(key_error(
            path,
            &format!(
                "is {} bytes, too large for a key file (an ed25519 PEM key is about 120 bytes)",
                metadata.len()
            ),
        ));
    }
    let bytes = Zeroizing::new(fs::read(path).map_err(io_error(path, doing))?);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_string())),
        Err(_) => Err(key_error(path, "is not a PEM text file")),
    }
}

/// Creates `path` (never overwriting), writes `bytes` and syncs; removes it again on failure.
fn write_new(path: &Path, bytes: &[u8], mode: u32, doing: &str) -> Result<(), ImageError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_error(path, doing))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io_error(path, doing)(source));
    }
    Ok(())
}

/// `keys/acme` + ".key" → `keys/acme.key` (appended, so `keys/acme.lab` keeps its dot).
fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut path = stem.as_os_str().to_os_string();
    path.push(suffix);
    PathBuf::from(path)
}

fn key_error(path: &Path, problem: &str) -> ImageError {
    ImageError::Key {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}
