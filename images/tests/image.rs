//! The model image as a user meets it: pack, open, verify, sign; and every way an image can be
//! broken, each giving the right kind of error with a message that names the file and entry.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use images::{
    keygen, load_signing_key, load_trusted_keys, pack, ImageError, Manifest, ModelImage, PackInput, SigningKey,
    ENTRY_TRAINING_WEIGHTS,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const MANIFEST: &str = r##"
format_version = "1.0"
name = "bedsight-synthetic"
version = "2026.11.25"
architecture = "isdnet-sr"
description = "test fixture"

[input]
width = 256
height = 256
channels = 1
mean = [0.5]
std = [0.25]

[ensemble]
members = 3
temperatures = [1.12, 0.97, 1.05]

[[classes]]
name = "background"
colour = "#000000"
defect = false

[[classes]]
name = "super-elevation"
colour = "#ff0000"
defect = true

[[classes]]
name = "lattice"
colour = "#00FF80"
defect = false

[training]
miou = 0.81
ece_after = 0.02
"##;

/// Fake graph bytes: the crate never parses graphs, it only hashes and stores them.
fn fake_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn fake_png(seed: u8) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(fake_bytes(seed, 300));
    png
}

struct Fixture {
    dir: TempDir,
    fp32: PathBuf,
    int8: PathBuf,
    selftest_input: PathBuf,
    selftest_expected: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            path
        };
        Fixture {
            fp32: write("model.onnx", fake_bytes(1, 1500)),
            int8: write("model.int8.onnx", fake_bytes(2, 700)),
            selftest_input: write("input.png", fake_png(3)),
            selftest_expected: write("expected_mask.png", fake_png(4)),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn input<'a>(&'a self, signing_key: Option<&'a SigningKey>) -> PackInput<'a> {
        PackInput {
            manifest: manifest(),
            fp32_graph: &self.fp32,
            int8_graph: Some(&self.int8),
            selftest: Some((&self.selftest_input, &self.selftest_expected)),
            training_weights: None,
            signing_key,
        }
    }

    /// Packs the full image (both graphs, self-test), signed when a key is given.
    fn pack(&self, name: &str, signing_key: Option<&SigningKey>) -> PathBuf {
        let out = self.path(name);
        pack(&self.input(signing_key), &out).unwrap();
        out
    }
}

fn manifest() -> Manifest {
    Manifest::parse(MANIFEST, "fixture manifest").unwrap()
}

/// (name, tar type byte, content) of every raw entry.
fn tar_entries(archive: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
    let mut archive = tar::Archive::new(archive);
    archive
        .entries()
        .unwrap()
        .raw(true)
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let kind = entry.header().entry_type().as_byte();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            (name, kind, bytes)
        })
        .collect()
}

/// A tar archive as `pack` writes one, but with any names (the tar crate refuses `..` through
/// its safe API) and entry types.
fn tar_bytes(entries: &[(String, u8, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, bytes) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_entry_type(tar::EntryType::new(*kind));
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Rewrites the archive at `path` through `edit` on its entries.
fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<(String, u8, Vec<u8>)>)) {
    let mut entries = tar_entries(&fs::read(path).unwrap());
    edit(&mut entries);
    fs::write(path, tar_bytes(&entries)).unwrap();
}

fn replace_manifest(path: &Path, edit: impl FnOnce(String) -> String) {
    rewrite(path, |entries| {
        let text = String::from_utf8(entries[0].2.clone()).unwrap();
        entries[0].2 = edit(text).into_bytes();
    });
}

/// Flips the lowest bit of the byte at `offset`.
fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 1;
    fs::write(path, bytes).unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("needle in archive")
}

fn open_err(path: &Path) -> ImageError {
    ModelImage::open(path).expect_err("the image must be refused")
}

/// The message names the image file and everything in `words`.
fn assert_message(error: &ImageError, path: &Path, words: &[&str]) {
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name {}: {message}",
        path.display()
    );
    for word in words {
        assert!(message.contains(word), "message lacks {word:?}: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_gives_identical_bytes_and_manifest() {
    let fixture = Fixture::new();
    let out = fixture.path("model.bsimg");
    let packed = pack(&fixture.input(None), &out).unwrap();
    let image = ModelImage::open(&out).unwrap();

    assert_eq!(image.manifest, packed.manifest);
    assert_eq!(image.manifest_bytes, packed.manifest.to_toml().into_bytes());
    assert_eq!(image.manifest_sha256(), packed.manifest_sha256);
    assert_eq!(packed.archive_bytes, fs::metadata(&out).unwrap().len());
    assert_eq!(image.fp32_graph(), fs::read(&fixture.fp32).unwrap());
    assert_eq!(image.default_graph(), fs::read(&fixture.int8).unwrap());
    assert_eq!(image.int8_graph(), Some(image.default_graph()));
    let (input, expected) = image.selftest().unwrap();
    assert_eq!(input, fs::read(&fixture.selftest_input).unwrap());
    assert_eq!(expected, fs::read(&fixture.selftest_expected).unwrap());
    assert!(image.signature.is_none());

    // The same from memory, as the appliance reads its built-in image.
    let from_memory = ModelImage::from_bytes(&fs::read(&out).unwrap(), "built-in.bsimg").unwrap();
    assert_eq!(from_memory.files, image.files);
    assert_eq!(from_memory.manifest_bytes, image.manifest_bytes);
    assert_eq!(from_memory.path, Path::new("built-in.bsimg"));

    // [graphs] and [files] are filled in; the rest is the training tool's manifest.
    let mut without_layout = image.manifest.clone();
    assert_eq!(without_layout.graphs.default, "model.int8.onnx");
    assert_eq!(without_layout.graphs.fp32, "model.onnx");
    assert_eq!(
        without_layout.files["model.onnx"],
        hex::encode(Sha256::digest(fs::read(&fixture.fp32).unwrap()))
    );
    assert_eq!(without_layout.files.len(), 4);
    without_layout.graphs = Default::default();
    without_layout.files.clear();
    assert_eq!(without_layout, manifest());
    assert_eq!(image.manifest.classes[2].rgb(), [0x00, 0xff, 0x80]);

    // Entries in the documented order, plain regular files.
    let names: Vec<_> = tar_entries(&fs::read(&out).unwrap())
        .into_iter()
        .map(|(name, kind, _)| {
            assert_eq!(kind, b'0');
            name
        })
        .collect();
    assert_eq!(
        names,
        [
            "manifest.toml",
            "model.onnx",
            "model.int8.onnx",
            "selftest/input.png",
            "selftest/expected_mask.png"
        ]
    );
}

#[test]
fn packing_is_reproducible_and_leaves_no_temporary_files() {
    let fixture = Fixture::new();
    let key = SigningKey::from_bytes(&[7; 32]);
    let first = fixture.pack("first.bsimg", Some(&key));
    let second = fixture.pack("second.bsimg", Some(&key));
    assert_eq!(fs::read(first).unwrap(), fs::read(second).unwrap());
    let leftovers: Vec<_> = fs::read_dir(fixture.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn fp32_only_image_runs_the_fp32_graph() {
    let fixture = Fixture::new();
    let out = fixture.path("fp32.bsimg");
    let input = PackInput {
        int8_graph: None,
        selftest: None,
        training_weights: None,
        ..fixture.input(None)
    };
    pack(&input, &out).unwrap();
    let image = ModelImage::open(&out).unwrap();
    assert_eq!(image.manifest.graphs.default, "model.onnx");
    assert_eq!(image.default_graph(), fs::read(&fixture.fp32).unwrap());
    assert_eq!(image.fp32_graph(), image.default_graph());
    assert_eq!(image.int8_graph(), None);
    assert!(image.selftest().is_none());
    assert_eq!(image.files.len(), 1);
}

#[test]
fn a_failed_pack_leaves_the_old_image_in_place() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    let before = fs::read(&out).unwrap();

    let missing = fixture.path("no-such.onnx");
    let input = PackInput {
        int8_graph: Some(&missing),
        ..fixture.input(None)
    };
    let error = pack(&input, &out).unwrap_err();
    assert!(matches!(error, ImageError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("no-such.onnx"), "{error}");

    let mut bad_manifest = fixture.input(None);
    bad_manifest.manifest.ensemble.members = 2;
    let error = pack(&bad_manifest, &out).unwrap_err();
    assert!(matches!(error, ImageError::Manifest { .. }), "{error:?}");
    assert!(error.to_string().contains("model.bsimg"), "{error}");

    let mut newer_minor = fixture.input(None);
    newer_minor.manifest.format_version = "1.9".into();
    let error = pack(&newer_minor, &out).unwrap_err();
    assert!(matches!(error, ImageError::Pack { .. }), "{error:?}");
    assert!(error.to_string().contains("\"1.9\""), "{error}");

    let not_png = fixture.fp32.clone();
    let input = PackInput {
        selftest: Some((&not_png, &fixture.selftest_expected)),
        training_weights: None,
        ..fixture.input(None)
    };
    let error = pack(&input, &out).unwrap_err();
    assert!(matches!(error, ImageError::Pack { .. }), "{error:?}");
    assert!(error.to_string().contains("not a PNG"), "{error}");

    assert_eq!(fs::read(&out).unwrap(), before);
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[test]
fn signed_round_trip_names_the_signer() {
    let fixture = Fixture::new();
    let keys = fixture.path("keys");
    fs::create_dir(&keys).unwrap();
    let (alice_key, _) = keygen(&keys.join("alice")).unwrap();
    keygen(&keys.join("bob")).unwrap();
    let alice = load_signing_key(&alice_key).unwrap();

    let out = fixture.path("signed.bsimg");
    let packed = pack(&fixture.input(Some(&alice)), &out).unwrap();
    assert_eq!(packed.signed_by, Some(alice.verifying_key()));

    let image = ModelImage::open(&out).unwrap();
    let trusted = load_trusted_keys(&keys).unwrap();
    assert_eq!(trusted.len(), 2);
    let signer = image.check_signature(&trusted).unwrap();
    assert_eq!(signer.owner, "alice");
    assert_eq!(signer.key, alice.verifying_key());

    let entries = tar_entries(&fs::read(&out).unwrap());
    let (last_name, _, signature) = entries.last().unwrap();
    assert_eq!(last_name, "manifest.sig");
    assert_eq!(signature.len(), 64);
}

#[test]
fn signature_by_an_untrusted_key_is_refused() {
    let fixture = Fixture::new();
    let keys = fixture.path("keys");
    fs::create_dir(&keys).unwrap();
    keygen(&keys.join("bob")).unwrap();
    let mallory = SigningKey::from_bytes(&[9; 32]);
    let out = fixture.pack("mallory.bsimg", Some(&mallory));

    let image = ModelImage::open(&out).unwrap();
    let error = image.check_signature(&load_trusted_keys(&keys).unwrap()).unwrap_err();
    assert!(
        matches!(&error, ImageError::UntrustedSignature { tried, .. } if tried == &["bob"]),
        "{error:?}"
    );
    assert_message(&error, &out, &["manifest.sig", "bob", "trusted"]);
}

#[test]
fn unsigned_image_is_refused_by_check_signature() {
    let fixture = Fixture::new();
    let out = fixture.pack("unsigned.bsimg", None);
    let image = ModelImage::open(&out).unwrap();
    let trusted = vec![images::TrustedKey {
        owner: "alice".into(),
        key: SigningKey::from_bytes(&[1; 32]).verifying_key(),
    }];
    let error = image.check_signature(&trusted).unwrap_err();
    assert!(matches!(error, ImageError::Unsigned { .. }), "{error:?}");
    assert_message(&error, &out, &["not signed", "manifest.sig"]);

    let signed = fixture.pack("signed.bsimg", Some(&SigningKey::from_bytes(&[1; 32])));
    let error = ModelImage::open(&signed).unwrap().check_signature(&[]).unwrap_err();
    assert!(matches!(error, ImageError::NoTrustedKeys { .. }), "{error:?}");
    assert_message(&error, &signed, &["trusted keys"]);
}

#[test]
fn signature_of_wrong_length_is_refused() {
    let fixture = Fixture::new();
    let out = fixture.pack("short-sig.bsimg", Some(&SigningKey::from_bytes(&[1; 32])));
    rewrite(&out, |entries| entries.last_mut().unwrap().2.truncate(63));
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Archive { .. }), "{error:?}");
    assert_message(&error, &out, &["manifest.sig", "63 bytes"]);
}

// ---------------------------------------------------------------------------------------------
// Tampering

#[test]
fn flipped_byte_in_a_graph_is_a_hash_mismatch() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    let fp32 = fs::read(&fixture.fp32).unwrap();
    let offset = find(&fs::read(&out).unwrap(), &fp32[..64]) + 700;
    flip_byte(&out, offset);

    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::HashMismatch { entry, .. } if entry == "model.onnx"),
        "{error:?}"
    );
    assert_message(&error, &out, &["model.onnx", "sha256", "re-pack"]);
}

#[test]
fn flipped_byte_in_the_manifest_hash_table_is_a_hash_mismatch() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    let int8_hash = hex::encode(Sha256::digest(fs::read(&fixture.int8).unwrap()));
    // A hex digit in the [files] table, changed in place (tar checksums cover headers only).
    let offset = find(&fs::read(&out).unwrap(), int8_hash.as_bytes()) + 10;
    let mut bytes = fs::read(&out).unwrap();
    bytes[offset] = if bytes[offset] == b'0' { b'1' } else { b'0' };
    fs::write(&out, bytes).unwrap();

    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::HashMismatch { entry, .. } if entry == "model.int8.onnx"),
        "{error:?}"
    );
    assert_message(&error, &out, &["model.int8.onnx", "manifest says"]);
}

#[test]
fn edited_manifest_fails_the_signature() {
    let fixture = Fixture::new();
    let alice = SigningKey::from_bytes(&[3; 32]);
    let out = fixture.pack("model.bsimg", Some(&alice));
    let trusted = vec![images::TrustedKey {
        owner: "alice".into(),
        key: alice.verifying_key(),
    }];
    assert_eq!(
        ModelImage::open(&out).unwrap().check_signature(&trusted).unwrap().owner,
        "alice"
    );

    // Still a valid manifest, hashes intact: only the signature can tell.
    let offset = find(&fs::read(&out).unwrap(), b"temperatures = [1.12") + "temperatures = [1.1".len();
    flip_byte(&out, offset); // 1.12 -> 1.13
    let image = ModelImage::open(&out).unwrap();
    assert_eq!(image.manifest.ensemble.temperatures[0], 1.13);
    let error = image.check_signature(&trusted).unwrap_err();
    assert!(matches!(error, ImageError::UntrustedSignature { .. }), "{error:?}");
    assert_message(&error, &out, &["manifest.sig", "changed after signing"]);

    // A flip that breaks the TOML is refused at open.
    let offset = find(&fs::read(&out).unwrap(), b"[ensemble]");
    flip_byte(&out, offset); // '[' -> 'Z'
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Manifest { .. }), "{error:?}");
    assert_message(&error, &out, &["manifest.toml", "TOML"]);
}

#[test]
fn missing_file_is_refused() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    rewrite(&out, |entries| {
        entries.retain(|(name, ..)| name != "selftest/expected_mask.png")
    });
    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::MissingFile { entry, .. } if entry == "selftest/expected_mask.png"),
        "{error:?}"
    );
    assert_message(&error, &out, &["selftest/expected_mask.png"]);
}

#[test]
fn extra_unlisted_file_is_refused() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    rewrite(&out, |entries| {
        entries.push(("notes.txt".into(), b'0', b"hello".to_vec()))
    });
    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::UnlistedFile { entry, .. } if entry == "notes.txt"),
        "{error:?}"
    );
    assert_message(&error, &out, &["notes.txt", "does not list"]);

    // A format entry the manifest does not list is just as unlisted.
    let out = fixture.path("fp32.bsimg");
    let input = PackInput {
        int8_graph: None,
        ..fixture.input(None)
    };
    pack(&input, &out).unwrap();
    rewrite(&out, |entries| {
        entries.insert(1, ("model.int8.onnx".into(), b'0', fake_bytes(5, 100)))
    });
    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::UnlistedFile { entry, .. } if entry == "model.int8.onnx"),
        "{error:?}"
    );
}

#[test]
fn duplicate_entry_is_refused() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    rewrite(&out, |entries| {
        let graph = entries[1].clone();
        entries.insert(2, graph);
    });
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Archive { .. }), "{error:?}");
    assert_message(&error, &out, &["model.onnx", "twice"]);

    let out = fixture.pack("two-manifests.bsimg", None);
    rewrite(&out, |entries| {
        let manifest = entries[0].clone();
        entries.push(manifest);
    });
    let error = open_err(&out);
    assert_message(&error, &out, &["manifest.toml", "twice"]);
}

#[test]
fn path_traversal_and_links_are_refused() {
    let fixture = Fixture::new();
    for (name, kind) in [
        ("../model.onnx", b'0'),
        ("/etc/passwd", b'0'),
        ("./model.onnx", b'0'),
        ("selftest/../model.onnx", b'0'),
    ] {
        let out = fixture.pack("model.bsimg", None);
        rewrite(&out, |entries| entries.push((name.into(), kind, b"x".to_vec())));
        let error = open_err(&out);
        assert!(
            matches!(&error, ImageError::UnlistedFile { entry, .. } if entry == name),
            "{name}: {error:?}"
        );
        assert_message(&error, &out, &[name]);
    }

    // A symlink or a directory named like a listed file.
    for kind in [b'2', b'1', b'5'] {
        let out = fixture.pack("model.bsimg", None);
        rewrite(&out, |entries| {
            entries.retain(|(name, ..)| name != "model.onnx");
            entries.push(("model.onnx".into(), kind, Vec::new()));
        });
        let error = open_err(&out);
        assert!(matches!(error, ImageError::Archive { .. }), "{error:?}");
        assert_message(&error, &out, &["model.onnx", "not a regular file"]);
    }
}

#[test]
fn manifest_must_come_first() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    rewrite(&out, |entries| entries.swap(0, 1));
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Archive { .. }), "{error:?}");
    assert_message(&error, &out, &["first entry", "model.onnx", "manifest.toml"]);
}

#[test]
fn truncated_archive_is_always_an_error() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", Some(&SigningKey::from_bytes(&[5; 32])));
    let archive = fs::read(&out).unwrap();
    assert!(ModelImage::from_reader(Cursor::new(&archive), &out).is_ok());

    // Every prefix: inside headers, inside data, on block boundaries, inside the end marker.
    for len in 0..archive.len() {
        let result = ModelImage::from_reader(Cursor::new(&archive[..len]), &out);
        let error = result.expect_err(&format!("a prefix of {len} bytes was accepted"));
        assert!(
            error.to_string().contains("model.bsimg"),
            "prefix of {len} bytes: {error}"
        );
    }

    // And through open(), at a few offsets, with what a user sees.
    for len in [
        0,
        100,
        512,
        1024,
        archive.len() / 2,
        archive.len() - 1024,
        archive.len() - 1,
    ] {
        fs::write(&out, &archive[..len]).unwrap();
        let error = open_err(&out);
        assert!(
            matches!(error, ImageError::Archive { .. } | ImageError::Manifest { .. }),
            "prefix of {len} bytes: {error:?}"
        );
        assert_message(&error, &out, &[]);
    }
    fs::write(&out, &archive[..archive.len() - 1024]).unwrap();
    assert_message(&open_err(&out), &out, &["truncated"]);
    fs::write(&out, &archive[..archive.len() / 2]).unwrap();
    assert_message(&open_err(&out), &out, &["truncated"]);
}

#[test]
fn data_after_the_archive_is_refused() {
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    let mut archive = fs::read(&out).unwrap();
    // Zero padding to a 10 KiB record, as GNU tar writes it, is fine.
    let padded = archive.len().next_multiple_of(10240);
    archive.resize(padded, 0);
    fs::write(&out, &archive).unwrap();
    ModelImage::open(&out).unwrap();

    archive.extend_from_slice(b"appended");
    fs::write(&out, &archive).unwrap();
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Archive { .. }), "{error:?}");
    assert_message(&error, &out, &["after the end-of-archive"]);
}

#[test]
fn files_that_are_not_model_images_are_refused() {
    let fixture = Fixture::new();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("empty.bsimg", Vec::new(), "empty"),
        ("gzip.bsimg", vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0], "gzip"),
        ("text.bsimg", b"hello world\n".repeat(100), "damaged"),
        ("graph.bsimg", fake_bytes(1, 4096), "damaged"),
    ];
    for (name, bytes, word) in cases {
        let path = fixture.path(name);
        fs::write(&path, bytes).unwrap();
        let error = open_err(&path);
        assert!(matches!(error, ImageError::Archive { .. }), "{name}: {error:?}");
        assert_message(&error, &path, &[word]);
    }

    let missing = fixture.path("missing.bsimg");
    let error = open_err(&missing);
    assert!(matches!(error, ImageError::Io { .. }), "{error:?}");
    assert_message(&error, &missing, &[]);

    // A manifest as the training tool writes it, never packed.
    let out = fixture.pack("model.bsimg", None);
    replace_manifest(&out, |_| MANIFEST.to_string());
    let error = open_err(&out);
    assert!(matches!(error, ImageError::Manifest { .. }), "{error:?}");
    assert_message(&error, &out, &["[files]", "pack"]);
}

// ---------------------------------------------------------------------------------------------
// The manifest

#[test]
fn unknown_major_format_version_is_refused() {
    let error = Manifest::parse(&MANIFEST.replace("\"1.0\"", "\"2.0\""), "m.toml").unwrap_err();
    assert!(
        matches!(&error, ImageError::UnsupportedFormat { found, supported: 1, .. } if found == "2.0"),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("m.toml: format_version \"2.0\""),
        "{error}"
    );

    // Refused as a version even when that version has keys 1.x does not know.
    let future = MANIFEST.replace("\"1.0\"", "\"2.1\"") + "\n[fusion]\nin_graph = true\n";
    let error = Manifest::parse(&future, "m.toml").unwrap_err();
    assert!(matches!(error, ImageError::UnsupportedFormat { .. }), "{error:?}");

    // A newer minor version of the same major is read.
    Manifest::parse(&MANIFEST.replace("\"1.0\"", "\"1.7\""), "m.toml").unwrap();

    // And inside an image.
    let fixture = Fixture::new();
    let out = fixture.pack("model.bsimg", None);
    replace_manifest(&out, |text| text.replace("\"1.0\"", "\"3.0\""));
    let error = open_err(&out);
    assert!(matches!(error, ImageError::UnsupportedFormat { .. }), "{error:?}");
    assert_message(&error, &out, &["manifest.toml", "3.0", "update bedsight"]);
}

/// Parses `MANIFEST` with `from` replaced by `to`; the error must be a `Manifest` error whose
/// message holds every word.
fn assert_refused(from: &str, to: &str, words: &[&str]) {
    assert!(MANIFEST.contains(from), "fixture lacks {from:?}");
    let text = MANIFEST.replacen(from, to, 1);
    let error =
        Manifest::parse(&text, "train/out/manifest.toml").expect_err(&format!("{from:?} -> {to:?} was accepted"));
    assert!(matches!(error, ImageError::Manifest { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with("train/out/manifest.toml: "), "{message}");
    for word in words {
        assert!(message.contains(word), "{from:?} -> {to:?}: lacks {word:?}: {message}");
    }
}

#[test]
fn manifest_with_unknown_keys_is_refused() {
    assert_refused("description", "colour_depth = 8\ndescription", &["colour_depth"]);
    assert_refused("channels = 1", "channels = 1\ngamma = 2.2", &["gamma"]);
    assert_refused("defect = true", "defect = true\nseverity = 3", &["severity"]);
    assert_refused("[training]", "[fusion]\nin_graph = true\n[training]", &["fusion"]);
}

#[test]
fn temperatures_must_match_members() {
    assert_refused(
        "members = 3",
        "members = 2",
        &["temperatures", "3 values", "members is 2"],
    );
    assert_refused("[1.12, 0.97, 1.05]", "[1.12, 0.97]", &["temperatures", "2 values"]);
    assert_refused("[1.12, 0.97, 1.05]", "[1.12, 0.0, 1.05]", &["temperatures", "> 0"]);
    assert_refused("[1.12, 0.97, 1.05]", "[1.12, nan, 1.05]", &["temperatures", "finite"]);
    assert_refused("[1.12, 0.97, 1.05]", "[1.12, -1.0, inf]", &["temperatures"]);
    assert_refused("members = 3", "members = 0", &["members is 0"]);
}

#[test]
fn bad_colour_is_refused() {
    for bad in ["#ff00", "ff0000", "#ff00zz", "red", "#ff00000"] {
        assert_refused(
            "\"#ff0000\"",
            &format!("\"{bad}\""),
            &["super-elevation", bad, "#rrggbb"],
        );
    }
}

#[test]
fn std_must_be_positive() {
    assert_refused("std = [0.25]", "std = [0.0]", &["input.std", "> 0"]);
    assert_refused("std = [0.25]", "std = [-0.25]", &["input.std", "> 0"]);
    assert_refused("std = [0.25]", "std = [0.25, 0.25]", &["input.std", "2 values"]);
}

#[test]
fn other_manifest_checks() {
    assert_refused("channels = 1", "channels = 2", &["channels is 2"]);
    assert_refused("mean = [0.5]", "mean = [0.5, 0.5, 0.5]", &["input.mean", "3 values"]);
    assert_refused("width = 256", "width = 4", &["input.width is 4"]);
    assert_refused("height = 256", "height = 9000", &["input.height is 9000"]);
    assert_refused("\"lattice\"", "\"background\"", &["\"background\" is used twice"]);
    assert_refused("defect = false", "defect = true", &["background", "cannot be a defect"]);
    assert_refused("name = \"bedsight-synthetic\"", "name = \"\"", &["name is empty"]);
    assert_refused("miou = 0.81", "miou = nan", &["training.miou"]);
    assert_refused("version = \"2026.11.25\"\n", "", &["version"]);
    assert_refused("\"1.0\"", "\"one\"", &["format_version", "major.minor"]);
    assert_refused("format_version = \"1.0\"", "", &["no format_version"]);
    assert_refused("members = 3", "members = 3 3", &["TOML"]);

    let no_classes = MANIFEST
        .split("[[classes]]")
        .next()
        .unwrap()
        .replace("[input]", "classes = []\n\n[input]");
    let error = Manifest::parse(&no_classes, "m.toml").unwrap_err();
    assert!(error.to_string().contains("0 [[classes]]"), "{error}");

    // Several problems are reported at once.
    let text = MANIFEST
        .replace("std = [0.25]", "std = [0.0]")
        .replace("members = 3", "members = 4");
    let message = Manifest::parse(&text, "m.toml").unwrap_err().to_string();
    assert!(
        message.contains("input.std") && message.contains("members is 4"),
        "{message}"
    );

    // Layout checks once [graphs]/[files] are filled in.
    let hash = "0".repeat(64);
    let layout = |graphs: &str, files: &str| format!("{MANIFEST}\n[graphs]\n{graphs}\n[files]\n{files}\n");
    Manifest::parse(
        &layout(
            "default = \"model.onnx\"\nfp32 = \"model.onnx\"",
            &format!("\"model.onnx\" = \"{hash}\""),
        ),
        "m.toml",
    )
    .unwrap();
    for (graphs, files, word) in [
        (
            "default = \"model.onnx\"\nfp32 = \"model.onnx\"",
            format!("\"../model.onnx\" = \"{hash}\"\n\"model.onnx\" = \"{hash}\""),
            "../model.onnx",
        ),
        (
            "default = \"model.onnx\"\nfp32 = \"model.onnx\"",
            "\"model.onnx\" = \"xyz\"".to_string(),
            "not a sha256",
        ),
        (
            "default = \"model.onnx\"\nfp32 = \"model.onnx\"",
            format!("\"model.onnx\" = \"{hash}\"\n\"model.int8.onnx\" = \"{hash}\""),
            "graphs.default",
        ),
        (
            "default = \"model.int8.onnx\"\nfp32 = \"model.onnx\"",
            format!("\"model.onnx\" = \"{hash}\""),
            "graphs.default",
        ),
        (
            "default = \"model.onnx\"\nfp32 = \"other.onnx\"",
            format!("\"model.onnx\" = \"{hash}\""),
            "graphs.fp32",
        ),
        (
            "default = \"model.onnx\"\nfp32 = \"model.onnx\"",
            format!("\"model.onnx\" = \"{hash}\"\n\"selftest/input.png\" = \"{hash}\""),
            "self-test needs both",
        ),
    ] {
        let error = Manifest::parse(&layout(graphs, &files), "m.toml").unwrap_err();
        assert!(error.to_string().contains(word), "{word}: {error}");
    }
}

#[test]
fn to_toml_round_trips_and_leaves_out_what_is_not_there() {
    let manifest = manifest();
    let text = manifest.to_toml();
    assert_eq!(Manifest::parse(&text, "m.toml").unwrap(), manifest);
    assert!(text.contains("temperatures = [1.12, 0.97, 1.05]"), "{text}");
    assert!(!text.contains("[graphs]") && !text.contains("[files]"), "{text}");
    assert!(text.starts_with("format_version = \"1.0\"\n"), "{text}");

    let mut bare = manifest.clone();
    bare.description.clear();
    bare.training.clear();
    let text = bare.to_toml();
    assert!(!text.contains("description") && !text.contains("[training]"), "{text}");
    assert_eq!(Manifest::parse(&text, "m.toml").unwrap(), bare);
}

// ---------------------------------------------------------------------------------------------
// Keys

#[test]
fn keygen_writes_pem_files_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("acme.lab");
    let (key_path, pub_path) = keygen(&stem).unwrap();
    assert_eq!(key_path, dir.path().join("acme.lab.key"));
    assert_eq!(pub_path, dir.path().join("acme.lab.pub"));

    let private = fs::read_to_string(&key_path).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{private}");
    let public = fs::read_to_string(&pub_path).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let signing = load_signing_key(&key_path).unwrap();
    let trusted = images::load_trusted_key(&pub_path).unwrap();
    assert_eq!(trusted.owner, "acme.lab");
    assert_eq!(trusted.key, signing.verifying_key());

    let error = keygen(&stem).unwrap_err();
    assert!(matches!(error, ImageError::Key { .. }), "{error:?}");
    assert!(
        error.to_string().contains("acme.lab.key") && error.to_string().contains("already exists"),
        "{error}"
    );
    assert_eq!(fs::read_to_string(&key_path).unwrap(), private);
}

#[test]
fn key_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (key_path, pub_path) = keygen(&dir.path().join("alice")).unwrap();

    // The halves mixed up.
    let error = load_signing_key(&pub_path).unwrap_err();
    assert!(matches!(error, ImageError::Key { .. }), "{error:?}");
    assert!(
        error.to_string().contains("alice.pub") && error.to_string().contains("public key"),
        "{error}"
    );

    let trusted_dir = dir.path().join("trusted");
    fs::create_dir(&trusted_dir).unwrap();
    fs::write(trusted_dir.join("README"), "not a key").unwrap();
    assert!(load_trusted_keys(&trusted_dir).unwrap().is_empty());
    fs::copy(&key_path, trusted_dir.join("oops.pub")).unwrap();
    let error = load_trusted_keys(&trusted_dir).unwrap_err();
    assert!(
        error.to_string().contains("oops.pub") && error.to_string().contains("private key"),
        "{error}"
    );
    fs::write(
        trusted_dir.join("oops.pub"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let error = load_trusted_keys(&trusted_dir).unwrap_err();
    assert!(matches!(error, ImageError::Key { .. }), "{error:?}");
    assert!(error.to_string().contains("oops.pub"), "{error}");

    let garbage = dir.path().join("garbage.key");
    fs::write(&garbage, "hello").unwrap();
    let error = load_signing_key(&garbage).unwrap_err();
    assert!(
        error.to_string().contains("garbage.key") && error.to_string().contains("keygen"),
        "{error}"
    );

    let error = load_trusted_keys(&dir.path().join("nowhere")).unwrap_err();
    assert!(matches!(error, ImageError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("nowhere"), "{error}");
}

/// The key files are the ones OpenSSL writes and reads (openssl is part of Debian's base system).
#[test]
fn key_files_interoperate_with_openssl() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let (key_path, pub_path) = keygen(&dir.path().join("ours")).unwrap();
    let derived = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_path)
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(derived.status.success(), "{}", String::from_utf8_lossy(&derived.stderr));
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        fs::read_to_string(&pub_path).unwrap()
    );

    let theirs = dir.path().join("theirs.key");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&theirs)
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = load_signing_key(&theirs).unwrap();
    assert_eq!(theirs.to_bytes().len(), 32);

    // An image signed with it verifies with `openssl pkeyutl -verify -rawin` and the public key.
    let fixture = Fixture::new();
    let ours = load_signing_key(&key_path).unwrap();
    let out = fixture.pack("model.bsimg", Some(&ours));
    let entries = tar_entries(&fs::read(&out).unwrap());
    fs::write(dir.path().join("manifest.toml"), &entries[0].2).unwrap();
    fs::write(dir.path().join("manifest.sig"), &entries.last().unwrap().2).unwrap();
    let verified = Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            "ours.pub",
            "-in",
            "manifest.toml",
            "-sigfile",
            "manifest.sig",
        ])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// The manifest is refused with a message holding every one of `words`.
fn refused(text: &str, words: &[&str]) {
    let message = Manifest::parse(text, "m.toml").unwrap_err().to_string();
    for word in words {
        assert!(message.contains(word), "lacks {word:?}: {message}");
    }
}

/// `[layer_head]` (format 1.1): read, written back as read, checked; an image without one (every
/// 1.0 image) still parses with `layer_head` absent.
#[test]
fn layer_head_is_optional_and_checked() {
    assert_eq!(manifest().layer_head, None);
    let with_head = MANIFEST.replace("\"1.0\"", "\"1.1\"").replace(
        "[training]",
        "[layer_head]\nclasses = [\"incompleteness\", \"streaking\"]\ntemperature = 1.25\n\n[training]",
    );
    let parsed = Manifest::parse(&with_head, "m.toml").unwrap();
    let head = parsed.layer_head.as_ref().unwrap();
    assert_eq!(head.classes, ["incompleteness", "streaking"]);
    assert_eq!(head.temperature, 1.25);
    assert_eq!(Manifest::parse(&parsed.to_toml(), "again.toml").unwrap(), parsed);

    refused(
        &with_head.replace("\"1.1\"", "\"1.0\""),
        &["[layer_head]", "1.1", "\"1.0\""],
    );
    refused(
        &with_head.replace("temperature = 1.25", "temperature = 0.0"),
        &["layer_head.temperature", "> 0"],
    );
    refused(
        &with_head.replace("\"incompleteness\", \"streaking\"", "\"streaking\", \"streaking\""),
        &["layer_head.classes[1]", "used twice"],
    );
    refused(
        &with_head.replace("\"incompleteness\", \"streaking\"", ""),
        &["layer_head.classes has 0 names"],
    );
    refused(
        &with_head.replace("temperature = 1.25", "temperature = 1.25\nthreshold = 0.5"),
        &["threshold"],
    );
}

/// The test manifest at `format_version` with a `[domain]` table of two features, followed by
/// `after` (more domain tables) before `[training]`.
fn manifest_with_domain(format_version: &str, after: &str) -> String {
    MANIFEST.replace("\"1.0\"", &format!("\"{format_version}\"")).replace(
        "[training]",
        &format!(
            "[domain]\nfeature_size = 2\nmean = [0.5, -1.0]\ninverse_covariance = [2.0, 0.5, 0.5, 1.0]\n\
             threshold = 1.4\nthreshold_quantile = 0.99\nfit_layers = 300\nvalidation_layers = 40\n\n{after}[training]"
        ),
    )
}

/// `[domain]` (format 1.2): read, written back as read, checked by name; an image without one
/// still parses with `domain` absent.
#[test]
fn domain_table_is_optional_and_checked() {
    assert_eq!(manifest().domain, None);
    let with_domain = manifest_with_domain("1.2", "");
    let parsed = Manifest::parse(&with_domain, "m.toml").unwrap();
    let domain = parsed.domain.as_ref().unwrap();
    assert_eq!((domain.feature_size, domain.threshold), (2, 1.4));
    assert_eq!(domain.inverse_covariance, [2.0, 0.5, 0.5, 1.0]);
    assert_eq!(Manifest::parse(&parsed.to_toml(), "again.toml").unwrap(), parsed);

    refused(
        &with_domain.replace("\"1.2\"", "\"1.1\""),
        &["[domain]", "1.2", "\"1.1\""],
    );
    refused(
        &with_domain.replace("feature_size = 2", "feature_size = 3"),
        &["m.toml", "domain.mean has 2 values, feature_size is 3", "needs 9"],
    );
    refused(
        &with_domain.replace("threshold = 1.4", "threshold = nan"),
        &["domain.threshold", "finite"],
    );
    refused(
        &with_domain.replace("threshold = 1.4", "threshold = inf"),
        &["domain.threshold", "finite"],
    );
    refused(
        &with_domain.replace("threshold_quantile = 0.99", "threshold_quantile = 1.5"),
        &["domain.threshold_quantile 1.5"],
    );
    refused(
        &with_domain.replace("mean = [0.5, -1.0]", "mean = [0.5, nan]"),
        &["finite numbers"],
    );
}

/// `[[domain.groups]]` (format 1.4): each group's mean under the one covariance; read, written
/// back as read, and every bad group refused by name.
#[test]
fn domain_groups_are_read_and_checked() {
    let with_groups = manifest_with_domain(
        "1.4",
        "[[domain.groups]]\nname = \"synthetic\"\nlayers = 290\nmean = [0.4, -1.1]\n\n\
         [[domain.groups]]\nname = \"real No_Defect\"\nlayers = 10\nmean = [3.0, 2.0]\n\n",
    );
    let parsed = Manifest::parse(&with_groups, "m.toml").unwrap();
    let groups = &parsed.domain.as_ref().unwrap().groups;
    assert_eq!(
        groups
            .iter()
            .map(|g| (g.name.as_str(), g.layers, g.mean.clone()))
            .collect::<Vec<_>>(),
        [
            ("synthetic", 290, vec![0.4, -1.1]),
            ("real No_Defect", 10, vec![3.0, 2.0])
        ]
    );
    assert_eq!(Manifest::parse(&parsed.to_toml(), "again.toml").unwrap(), parsed);

    refused(
        &with_groups.replace("\"1.4\"", "\"1.3\""),
        &["m.toml", "[[domain.groups]]", "1.4", "\"1.3\""],
    );
    refused(
        &with_groups.replace("mean = [3.0, 2.0]", "mean = [3.0]"),
        &["domain.groups[1] (\"real No_Defect\") has 1 mean values, feature_size is 2"],
    );
    refused(
        &with_groups.replace("mean = [3.0, 2.0]", "mean = [3.0, inf]"),
        &["domain.groups[1]", "finite"],
    );
    refused(
        &with_groups.replace("\"real No_Defect\"", "\"synthetic\""),
        &["domain.groups[1]", "\"synthetic\" appears twice"],
    );
    refused(
        &with_groups.replace("\"real No_Defect\"", "\" \""),
        &["domain.groups[1] has an empty name"],
    );
}

#[test]
fn training_weights_travel_in_the_image_and_are_hash_checked() {
    let fixture = Fixture::new();
    let weights = fixture.path("ensemble.pt");
    let weights_bytes = fake_bytes(9, 900);
    fs::write(&weights, &weights_bytes).unwrap();
    let out = fixture.path("with-weights.bsimg");
    let mut input = PackInput {
        training_weights: Some(&weights),
        ..fixture.input(None)
    };
    // The fixture's manifest says format 1.0, before the entry existed.
    let error = pack(&input, &out).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("training/ensemble.pt, which format_version 1.3 added"),
        "{error}"
    );
    input.manifest.format_version = "1.3".to_string();
    let info = pack(&input, &out).unwrap();
    assert!(info.manifest.files.contains_key(ENTRY_TRAINING_WEIGHTS));

    let image = ModelImage::open(&out).unwrap();
    assert_eq!(image.training_weights(), Some(weights_bytes.as_slice()));
    // The image without them reads as before.
    let without = ModelImage::open(&fixture.pack("plain.bsimg", None)).unwrap();
    assert_eq!(without.training_weights(), None);

    // A changed byte in the weights is refused like one in a graph.
    rewrite(&out, |entries| {
        let entry = entries
            .iter_mut()
            .find(|(name, _, _)| name == ENTRY_TRAINING_WEIGHTS)
            .unwrap();
        entry.2[10] ^= 0xff;
    });
    let error = open_err(&out);
    assert!(
        matches!(&error, ImageError::HashMismatch { entry, .. } if entry == ENTRY_TRAINING_WEIGHTS),
        "{error:?}"
    );
}
