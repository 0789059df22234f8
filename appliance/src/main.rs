//! `bedsight`: the appliance's command line. It wires `hal`, `models` and `images` together and
//! owns configuration, the layer loop and what is shown to people; it holds no maths.

mod analyze;
mod config;
mod decide;
mod demo;
mod image_cmd;
mod model;
mod output;
mod pipeline;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::Config;
use model::LoadedModel;
use pipeline::Pipeline;

#[derive(Parser)]
#[command(name = "bedsight", version, about = "Powder-bed inspection for metal LPBF printers: one verdict per layer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse layer images: verdict, backend and defects for each.
    Analyze {
        /// Model image (.bsimg); default: the configuration's, else the embedded one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Configuration file (TOML); default: the embedded one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// auto, ort or tract; overrides the configuration.
        #[arg(long)]
        backend: Option<String>,
        /// Run the image's fp32 graph instead of its default (INT8) one.
        #[arg(long)]
        fp32: bool,
        /// One JSON object per image, one per line.
        #[arg(long)]
        json: bool,
        /// Write <stem>.mask.png, <stem>.uncertainty.tiff and <stem>.overlay.png here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Run the whole loop on the embedded sample build, model and configuration.
    Demo {
        /// Where overlays, masks and the summary go.
        #[arg(long, default_value = "bedsight-demo-out")]
        out: PathBuf,
        /// auto, ort or tract.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Make, check and read model images.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Pack graphs and a manifest into a model image.
    Pack {
        /// The fp32 graph.
        #[arg(long)]
        onnx: PathBuf,
        /// The INT8 graph; when given it becomes the default graph.
        #[arg(long)]
        int8: Option<PathBuf>,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long, requires = "selftest_mask")]
        selftest_input: Option<PathBuf>,
        #[arg(long, requires = "selftest_input")]
        selftest_mask: Option<PathBuf>,
        /// ed25519 private key to sign the manifest with (see `image keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Check a model image: every file's sha256, the signature, the graphs against the manifest.
    Verify {
        image: PathBuf,
        /// Folder of trusted public keys (*.pub); the image must be signed by one of them.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
    },
    /// Print a model image's manifest.
    Info { image: PathBuf },
    /// Make an ed25519 key pair: STEM.key (private) and STEM.pub (public).
    Keygen { stem: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Analyze { model, config, backend, fp32, json, out, images } => {
            let mut pipeline = build_pipeline(config.as_deref(), model.as_deref(), backend.as_deref(), fp32)?;
            let failed = analyze::analyze(&mut pipeline, &images, json, out.as_deref())?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Demo { out, backend } => {
            let mut pipeline = build_pipeline(None, None, backend.as_deref(), false)?;
            demo::demo(&mut pipeline, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(command) => {
            match command {
                ImageCommand::Pack { onnx, int8, manifest, selftest_input, selftest_mask, key, out } => image_cmd::pack(&image_cmd::PackArgs {
                    onnx: &onnx,
                    int8: int8.as_deref(),
                    manifest: &manifest,
                    selftest_input: selftest_input.as_deref(),
                    selftest_mask: selftest_mask.as_deref(),
                    key: key.as_deref(),
                    out: &out,
                })?,
                ImageCommand::Verify { image, trusted_keys } => image_cmd::verify(&image, trusted_keys.as_deref())?,
                ImageCommand::Info { image } => image_cmd::info(&image)?,
                ImageCommand::Keygen { stem } => image_cmd::keygen(&stem)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Configuration (file or embedded), then the model (command line, configuration, embedded).
fn build_pipeline(config_path: Option<&Path>, model_path: Option<&Path>, backend: Option<&str>, fp32: bool) -> Result<Pipeline> {
    let (config, origin) = match config_path {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::embedded(), "embedded bedsight.toml".to_string()),
    };
    let choice = match backend {
        Some(word) => config::parse_backend(word).context("--backend")?,
        None => config.backend_choice(),
    };
    let model_path = model_path.map(Path::to_path_buf).or_else(|| config.model.image.clone());
    let model = LoadedModel::load(model_path.as_deref(), choice, fp32 || config.model.prefer_fp32, None)?;
    Pipeline::new(config, model, &origin)
}
