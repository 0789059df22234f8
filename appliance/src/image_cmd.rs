//! `bedsight image ...`: make, check and read model images.

use std::path::Path;

use anyhow::{Context, Result};
use images::{Manifest, ModelImage, PackInput};
use models::BackendChoice;

use crate::model::LoadedModel;

pub struct PackArgs<'a> {
    pub onnx: &'a Path,
    pub int8: Option<&'a Path>,
    pub manifest: &'a Path,
    pub selftest_input: Option<&'a Path>,
    pub selftest_mask: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub out: &'a Path,
}

/// Packs a model image, then opens it again and loads every graph in it, so that an image
/// whose manifest disagrees with its graphs is never written.
pub fn pack(args: &PackArgs) -> Result<()> {
    let text = std::fs::read_to_string(args.manifest).with_context(|| format!("manifest {}: cannot read it", args.manifest.display()))?;
    let manifest = Manifest::parse(&text, &args.manifest.display().to_string())?;
    let signing_key = args.key.map(images::load_signing_key).transpose()?;
    let selftest = match (args.selftest_input, args.selftest_mask) {
        (Some(input), Some(mask)) => Some((input, mask)),
        (None, None) => None,
        _ => anyhow::bail!("--selftest-input and --selftest-mask go together"),
    };
    let input = PackInput { manifest, fp32_graph: args.onnx, int8_graph: args.int8, selftest, signing_key: signing_key.as_ref() };
    let staging = args.out.with_extension("bsimg.staging");
    images::pack(&input, &staging)?;
    if let Err(error) = check_graphs(&staging) {
        std::fs::remove_file(&staging).ok();
        return Err(error.context(format!("not packing {}", args.out.display())));
    }
    std::fs::rename(&staging, args.out).with_context(|| format!("cannot move the packed image to {}", args.out.display()))?;
    println!("packed {}", args.out.display());
    Ok(())
}

/// Loads the default and the fp32 graph of an image with tract (always present, exact shapes),
/// which checks their input and output shapes against the manifest.
fn check_graphs(path: &Path) -> Result<()> {
    for prefer_fp32 in [false, true] {
        LoadedModel::load(Some(path), BackendChoice::Tract, prefer_fp32, None)?;
    }
    Ok(())
}

/// Checks hashes (on open), the signature when trusted keys are given, and the graphs' shapes.
pub fn verify(path: &Path, trusted_keys: Option<&Path>) -> Result<()> {
    let image = ModelImage::open(path)?;
    match trusted_keys {
        Some(dir) => {
            let keys = images::load_trusted_keys(dir)?;
            let signer = image.check_signature(&keys)?;
            println!("{}: signed by {}", path.display(), signer.owner);
        }
        None if image.signature.is_some() => println!("{}: signed (signature not checked: no --trusted-keys given)", path.display()),
        None => println!("{}: not signed", path.display()),
    }
    check_graphs(path)?;
    println!("{}: ok: {} files match their sha256, graphs agree with the manifest", path.display(), image.manifest.files.len());
    Ok(())
}

/// Prints the manifest as a person reads it.
pub fn info(path: &Path) -> Result<()> {
    let image = ModelImage::open(path)?;
    let m = &image.manifest;
    println!("model image   {}", path.display());
    println!("name          {} {}", m.name, m.version);
    println!("architecture  {}", m.architecture);
    if !m.description.is_empty() {
        println!("description   {}", m.description);
    }
    println!("format        {}", m.format_version);
    println!("input         {}x{} px, {} channel(s), mean {:?}, std {:?}", m.input.width, m.input.height, m.input.channels, m.input.mean, m.input.std);
    println!("ensemble      {} members, temperatures {:?}", m.ensemble.members, m.ensemble.temperatures);
    println!("classes");
    for (index, class) in m.classes.iter().enumerate() {
        println!("  {index}  {:<18} {}  {}", class.name, class.colour, if class.defect { "defect" } else { "not a defect" });
    }
    println!("graphs        default {}, fp32 {}", m.graphs.default, m.graphs.fp32);
    for (file, hash) in &m.files {
        let size = image.files.get(file).map(|bytes| bytes.len()).unwrap_or(0);
        println!("  {file:<28} {size:>10} bytes  sha256 {hash}");
    }
    if !m.training.is_empty() {
        println!("training");
        for (metric, value) in &m.training {
            println!("  {metric:<18} {value:.4}");
        }
    }
    println!("signature     {}", if image.signature.is_some() { "present (check it with: bedsight image verify --trusted-keys DIR)" } else { "none" });
    Ok(())
}

pub fn keygen(stem: &Path) -> Result<()> {
    let (secret, public) = images::keygen(stem)?;
    println!("private key {} (keep it off the boxes)", secret.display());
    println!("public key  {} (copy it into each box's trusted keys folder)", public.display());
    Ok(())
}
