//! `bedsight image ...`: make, check and read model images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use images::{Manifest, ModelImage, PackInput, SelfTestOutcome, Slots};
use models::BackendChoice;

use appliance::config::{self, Config};
use appliance::model::{self, LoadedModel};

pub struct PackArgs<'a> {
    pub onnx: &'a Path,
    pub int8: Option<&'a Path>,
    pub manifest: &'a Path,
    pub selftest_input: Option<&'a Path>,
    pub selftest_mask: Option<&'a Path>,
    pub training_weights: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub out: &'a Path,
}

/// Packs a model image, then opens it again and loads every graph in it, so that an image
/// whose manifest disagrees with its graphs is never written.
pub fn pack(args: &PackArgs) -> Result<()> {
    let text = std::fs::read_to_string(args.manifest)
        .with_context(|| format!("manifest {}: cannot read it", args.manifest.display()))?;
    let manifest = Manifest::parse(&text, &args.manifest.display().to_string())?;
    let signing_key = args.key.map(images::load_signing_key).transpose()?;
    let selftest = match (args.selftest_input, args.selftest_mask) {
        (Some(input), Some(mask)) => Some((input, mask)),
        (None, None) => None,
        _ => anyhow::bail!("--selftest-input and --selftest-mask go together"),
    };
    let input = PackInput {
        manifest,
        fp32_graph: args.onnx,
        int8_graph: args.int8,
        selftest,
        training_weights: args.training_weights,
        signing_key: signing_key.as_ref(),
    };
    let staging = args.out.with_extension("bsimg.staging");
    images::pack(&input, &staging)?;
    if let Err(error) = check_graphs(&staging) {
        std::fs::remove_file(&staging).ok();
        return Err(error.context(format!("not packing {}", args.out.display())));
    }
    std::fs::rename(&staging, args.out)
        .with_context(|| format!("cannot move the packed image to {}", args.out.display()))?;
    println!("packed {}", args.out.display());
    Ok(())
}

/// Loads every graph of an image (the INT8 one when it has one, and the fp32 one) with tract
/// (always present, exact shapes), which checks their input and output shapes against the
/// manifest.
fn check_graphs(path: &Path) -> Result<()> {
    let image = ModelImage::open(path)?;
    for (name, graph) in graphs_of(&image) {
        LoadedModel::from_graph(
            path.display().to_string(),
            &image.manifest,
            name,
            graph,
            BackendChoice::Tract,
            None,
        )
        .with_context(|| format!("its {name} graph"))?;
    }
    Ok(())
}

/// An image's graphs by name: `int8` (when it has one) and `fp32`.
fn graphs_of(image: &ModelImage) -> Vec<(&'static str, &[u8])> {
    let int8 = image.int8_graph().map(|graph| ("int8", graph));
    int8.into_iter().chain([("fp32", image.fp32_graph())]).collect()
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
        None if image.signature.is_some() => println!(
            "{}: signed (signature not checked: no --trusted-keys given)",
            path.display()
        ),
        None => println!("{}: not signed", path.display()),
    }
    check_graphs(path)?;
    println!(
        "{}: ok: {} files match their sha256, graphs agree with the manifest",
        path.display(),
        image.manifest.files.len()
    );
    Ok(())
}

/// Prints the manifest as a person reads it; with trusted keys, who signed it.
pub fn info(path: &Path, trusted_keys: Option<&Path>) -> Result<()> {
    let image = ModelImage::open(path)?;
    let m = &image.manifest;
    println!("model image   {}", path.display());
    println!("name          {} {}", m.name, m.version);
    println!("architecture  {}", m.architecture);
    if !m.description.is_empty() {
        println!("description   {}", m.description);
    }
    println!("format        {}", m.format_version);
    println!(
        "input         {}x{} px, {} channel(s), mean {:?}, std {:?}",
        m.input.width, m.input.height, m.input.channels, m.input.mean, m.input.std
    );
    println!(
        "ensemble      {} members, temperatures {:?}",
        m.ensemble.members, m.ensemble.temperatures
    );
    println!("classes");
    for (index, class) in m.classes.iter().enumerate() {
        println!(
            "  {index}  {:<18} {}  {}",
            class.name,
            class.colour,
            if class.defect { "defect" } else { "not a defect" }
        );
    }
    match &m.layer_head {
        Some(head) => println!(
            "layer head    {} (multi-label), temperature {}",
            head.classes.join(", "),
            head.temperature
        ),
        None => println!("layer head    none"),
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
    println!("manifest      sha256 {}", image.manifest_sha256());
    let signature = match (&image.signature, trusted_keys) {
        (None, _) => "none (unsigned: a box installs it only with allow_unsigned = true)".to_string(),
        (Some(_), None) => "present, not checked (give --trusted-keys DIR to see who signed it)".to_string(),
        (Some(_), Some(dir)) => {
            let keys = images::load_trusted_keys(dir)?;
            match image.check_signature(&keys) {
                Ok(signer) => format!("signed by {} (a trusted key in {})", signer.owner, dir.display()),
                Err(error) => format!("DOES NOT VERIFY: {error}"),
            }
        }
    };
    println!("signature     {signature}");
    Ok(())
}

pub fn keygen(stem: &Path) -> Result<()> {
    let (secret, public) = images::keygen(stem)?;
    println!("private key {} (keep it off the boxes)", secret.display());
    println!(
        "public key  {} (copy it into each box's trusted keys folder)",
        public.display()
    );
    Ok(())
}

/// Set to `kill-before-switch` to abort `image install` after the image is unpacked into the
/// idle slot and before `active` is switched, as a power cut or `kill -9` would. Only in builds
/// with the `fault-inject` feature (./test.sh's), never in a box's build.
#[cfg(feature = "fault-inject")]
pub const FAULT_INJECT_ENV: &str = "BEDSIGHT_FAULT_INJECT";

pub struct InstallArgs<'a> {
    pub image: &'a Path,
    pub state_dir: &'a Path,
    pub trusted_keys: Option<&'a Path>,
    pub config: Option<&'a Path>,
    pub backend: Option<&'a str>,
    pub precision: Option<&'a str>,
}

/// `bedsight image install`: verify (hashes, signature against the trusted keys), unpack into
/// the idle slot, load the graph with the box's backend, self-test, then switch `active`.
pub fn install(args: &InstallArgs) -> Result<()> {
    let (config, config_origin) = match args.config {
        Some(path) => (Config::load(path)?, format!("configuration {}", path.display())),
        None => (Config::embedded(), "the configuration (--config FILE)".to_string()),
    };
    let choice = match args.backend {
        Some(word) => config::parse_backend(word).context("--backend")?,
        None => config.backend_choice(),
    };
    let precision = match args.precision {
        Some(word) => config::parse_precision(word).context("--precision")?,
        None => config.model.precision(),
    };
    let mut slots = Slots::open(args.state_dir)?;
    report_recovery(&slots);

    println!("install: verifying {} (every file's sha256)", args.image.display());
    let image = ModelImage::open(args.image).map_err(|error| refused(args.image, error.into()))?;
    let signed_by = match &image.signature {
        Some(_) => {
            let dir = trusted_keys_dir(args.trusted_keys, &config, args.state_dir);
            let keys = images::load_trusted_keys(&dir).map_err(|error| refused(args.image, error.into()))?;
            let signer = image.check_signature(&keys).map_err(|error| refused(args.image, error.into()))?;
            println!("install: signed by {} (trusted key {}/{}.pub)", signer.owner, dir.display(), signer.owner);
            Some(signer.owner.clone())
        }
        None if config.images.allow_unsigned => {
            println!("install: {} is not signed; installing it because {config_origin} sets allow_unsigned = true", args.image.display());
            None
        }
        None => {
            return Err(refused(
                args.image,
                anyhow::anyhow!(
                    "model image {} is not signed (it has no manifest.sig), and this box installs signed images only: sign it \
                     (bedsight image pack --key KEY), or, on a development box, set allow_unsigned = true in the [images] table of {config_origin}",
                    args.image.display()
                ),
            ))
        }
    };

    let idle = slots.idle()?;
    let cache_dir = model::engine_cache_dir(args.state_dir);
    println!(
        "install: unpacking {} {} into slot {idle} ({})",
        image.manifest.name,
        image.manifest.version,
        slots.slot_dir(idle).display()
    );
    let installed = slots.install(&image, signed_by.as_deref(), |staged, staged_image| {
        #[cfg(feature = "fault-inject")]
        if std::env::var(FAULT_INJECT_ENV).as_deref() == Ok("kill-before-switch") {
            eprintln!("install: {FAULT_INJECT_ENV}=kill-before-switch: aborting between unpack and switch");
            std::process::abort();
        }
        println!("install: loading {} with the box's backend", staged.display());
        let mut model = LoadedModel::from_image(
            staged.display().to_string(),
            staged_image,
            choice,
            precision,
            Some(&cache_dir),
        )
        .map_err(|error| format!("the graph does not load: {error:#}"))?;
        // TensorRT has built its engine into the cache by now, so the first layer after
        // activation does not wait for it.
        println!("install: loaded on {}, {}", model.backend_label(), model.precision_note);
        let outcome = model
            .selftest(staged_image, &config)
            .map_err(|error| format!("{error:#}"))?;
        print_selftest(&outcome);
        // The box may run the image's other graph too (another precision, or TensorRT not
        // taking a session): it loads and passes the same self-test, or nothing is installed.
        for (name, graph) in graphs_of(staged_image) {
            if name == model.graph_name {
                continue;
            }
            let file = if name == "fp32" {
                &staged_image.manifest.graphs.fp32
            } else {
                &staged_image.manifest.graphs.default
            };
            let mut other = LoadedModel::from_graph(
                staged.display().to_string(),
                &staged_image.manifest,
                name,
                graph,
                choice,
                Some(&cache_dir),
            )
            .map_err(|error| format!("the {name} graph ({file}) does not load: {error:#}"))?;
            let second = other
                .selftest(staged_image, &config)
                .map_err(|error| format!("the {name} graph: {error:#}"))?;
            print_selftest(&second);
            if let Some(problem) = second.failure() {
                return Err(format!("self-test failed on the {name} graph: {problem}"));
            }
        }
        Ok(outcome)
    });
    let installed = installed.map_err(|error| refused(args.image, error.into()))?;
    let status = &installed.status;
    match installed.previous {
        Some(previous) => println!(
            "install: active slot is now {}: {} {} (slot {previous} kept: `bedsight image rollback` goes back to it)",
            installed.slot, status.name, status.version
        ),
        None => println!(
            "install: active slot is now {}: {} {}",
            installed.slot, status.name, status.version
        ),
    }
    Ok(())
}

fn print_selftest(outcome: &SelfTestOutcome) {
    let classes: Vec<String> = outcome
        .class_iou
        .iter()
        .map(|(class, iou)| format!("{class} {iou:.3}"))
        .collect();
    println!(
        "install: self-test on {}, {} graph: {:.2}% of {} pixels agree with the expected mask (at least {:.0}% required); defect IoU {} (at least {:.2} each); same verdict",
        outcome.backend,
        outcome.graph,
        outcome.agreement * 100.0,
        outcome.pixels,
        images::SELFTEST_MIN_AGREEMENT * 100.0,
        if classes.is_empty() { "none compared".to_string() } else { classes.join(", ") },
        images::SELFTEST_MIN_CLASS_IOU
    );
}

/// Adds "nothing was installed" to a refusal, so no one wonders what state the box is in.
fn refused(path: &Path, error: anyhow::Error) -> anyhow::Error {
    error.context(format!(
        "refused {}: nothing was installed, the active model is unchanged",
        path.display()
    ))
}

fn trusted_keys_dir(given: Option<&Path>, config: &Config, state_dir: &Path) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| config.images.trusted_keys.clone())
        .unwrap_or_else(|| state_dir.join("trusted-keys"))
}

fn report_recovery(slots: &Slots) {
    for line in &slots.recovered {
        println!("slots: {line}");
    }
}

/// `bedsight image rollback`: switch `active` back to the previous slot.
pub fn rollback(state_dir: &Path) -> Result<()> {
    let mut slots = Slots::open(state_dir)?;
    report_recovery(&slots);
    let (now, was) = slots.rollback()?;
    let describe = |slot| match slots.status(slot) {
        Ok(Some(status)) => format!("{} {}", status.name, status.version),
        _ => "?".to_string(),
    };
    println!(
        "rolled back: active slot is now {now} ({}); slot {was} ({}) kept as previous",
        describe(now),
        describe(was)
    );
    Ok(())
}

/// `bedsight image list`: both slots, one line each.
pub fn list(state_dir: &Path) -> Result<()> {
    let slots = Slots::open(state_dir)?;
    report_recovery(&slots);
    println!("state folder {}", state_dir.display());
    for view in slots.list()? {
        let role = if view.active {
            "active"
        } else if view.previous {
            "previous"
        } else {
            "idle"
        };
        match &view.status {
            None => println!("slot {}  {role:<8}  empty", view.slot),
            Some(status) => {
                println!(
                "slot {}  {role:<8}  {} {}  self-test {} {:.2}% ({}, {} graph)  {}  installed {}  manifest-sha256 {}",
                view.slot,
                status.name,
                status.version,
                if status.selftest_passed() { "passed" } else { "FAILED" },
                status.selftest_agreement * 100.0,
                status.backend,
                status.graph,
                status.signed_by.as_ref().map_or("unsigned".to_string(), |owner| format!("signed by {owner}")),
                status.installed_at,
                status.manifest_sha256
            )
            }
        }
    }
    Ok(())
}
