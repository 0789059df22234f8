//! `bedsight`: the appliance's command line. This file parses the arguments and hands each
//! command to its module (or straight to the library, where the command is one call); what
//! judges, records and runs a build lives in the library (`appliance`, ../../lib.rs).

mod analyze;
mod bench;
mod calibrate;
mod commission;
mod demo;
mod model_image;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use appliance::judge::pipeline::Pipeline;
use appliance::record::journal;
use appliance::service::{self, DEFAULT_STATE_DIR};
use bench::BenchArgs;

#[derive(Parser)]
#[command(
    name = "bedsight",
    version,
    about = "Powder-bed inspection for metal LPBF printers: one verdict per layer"
)]
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
        /// Which graph runs: auto, int8 or fp32; overrides the configuration's [model] precision.
        #[arg(long)]
        precision: Option<String>,
        /// One JSON object per image, one per line.
        #[arg(long)]
        json: bool,
        /// Write <stem>.mask.png, <stem>.uncertainty.tiff and <stem>.overlay.png here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Measure inference per backend and graph, the Python onnxruntime reference, every stage
    /// of a layer, the ensemble against one member, and resident memory (docs/performance.md).
    Bench(BenchArgs),
    /// Run the whole loop on the embedded sample build, model and configuration.
    Demo {
        /// Where overlays, masks and the summary go.
        #[arg(long, default_value = "bedsight-demo-out")]
        out: PathBuf,
        /// Which embedded sample build to replay: the synthetic one with planted defects, or a
        /// few real powder-bed photographs (assets/sample-build-real).
        #[arg(long, default_value = "synthetic", value_parser = ["synthetic", "real"])]
        build: String,
        /// auto, ort or tract.
        #[arg(long)]
        backend: Option<String>,
    },
    /// The appliance loop: wait for a layer trigger, capture, analyse, tell the PLC; until
    /// SIGINT/SIGTERM (the layer in progress is finished first).
    Run {
        /// Configuration file (TOML) with [camera], [trigger] and [plc].
        #[arg(long)]
        config: PathBuf,
        /// auto, ort or tract; overrides the configuration.
        #[arg(long)]
        backend: Option<String>,
        /// The box's state folder: without [model] image in the configuration, the loop runs
        /// the image active in its slots and picks up a newly installed one between layers.
        #[arg(long, env = "BEDSIGHT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Check the bed corners: print the homography and write the rectified bed for a person.
    Calibrate {
        /// Configuration file (TOML) with the [bed] table.
        #[arg(long)]
        config: PathBuf,
        /// A camera frame of the empty bed. With --flat-field it may be given several times (or
        /// followed by several frames): frames of recoated layers, whose per-pixel median is the
        /// lighting where no evenly spread bed can be photographed (at least 5; a defect that
        /// moves from layer to layer drops out). The checks use the first.
        #[arg(long, required = true, num_args = 1..)]
        frame: Vec<PathBuf>,
        /// Stem of the check images (default: next to the first frame).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write STEM.flat-field.tiff: the lighting of this frame of an evenly spread,
        /// empty bed (or of the frames' median), which `[bed] flat_field` divides out of every frame.
        #[arg(long)]
        flat_field: bool,
        /// Also write STEM.frame-reference.png: this frame as the commissioning reference that
        /// `[frame_check] reference` compares every frame with (sharpness, contrast, the bed's
        /// edges). Capture it with the lights, focus and mount as they will stay.
        #[arg(long)]
        frame_reference: bool,
    },
    /// Does the model fit a new printer's camera? Judges a folder of its frames through the box's
    /// pipeline and compares each layer's domain score with the model's validation layers': the
    /// share of familiar layers, OUT/domain.svg (a histogram of both), OUT/domain.json. Exit status
    /// 1 when under 95% of the layers are familiar.
    Commission {
        /// Configuration file (TOML): the printer's [bed] corners, flat field and frame checks.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model image (.bsimg); default: the configuration's, else the embedded one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// auto, ort or tract; overrides the configuration.
        #[arg(long)]
        backend: Option<String>,
        /// Where domain.svg and domain.json go.
        #[arg(long, default_value = "commission")]
        out: PathBuf,
        /// A folder of camera frames from the new printer, one per layer.
        frames: PathBuf,
    },
    /// Make, check and read model images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Read the per-layer journal that `bedsight run` writes.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Write the build report: one self-contained HTML file from the journal and the layer
    /// images (summary, per-layer table, charts, worst layers, defects stacked over all layers).
    Report {
        /// The configuration of `bedsight run` (finds the journal and the image folder).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The journal; default: the configuration's, else STATE_DIR/journal/layers.bsj.
        #[arg(long)]
        journal: Option<PathBuf>,
        /// The layer image folder; default: the configuration's, else STATE_DIR/images.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Where the HTML goes; default: build-report.html beside the journal.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "BEDSIGHT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Count the records, show the first and last layer, say whether a bad tail would be cut
    /// on the next open. Changes nothing.
    Check { file: PathBuf },
    /// Write every record to stdout: one CSV row or one JSON object per layer.
    Export {
        file: PathBuf,
        /// csv or jsonl.
        #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
        format: String,
    },
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
        /// The members' PyTorch weights (`ensemble.pt`), carried for `bedsight-train finetune`;
        /// the box never reads them.
        #[arg(long)]
        training_weights: Option<PathBuf>,
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
    /// Print a model image's manifest: model, classes, M, temperatures, input, metrics, signer.
    Info {
        image: PathBuf,
        /// Folder of trusted public keys (*.pub): say which one signed the image.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
    },
    /// Make an ed25519 key pair: STEM.key (private) and STEM.pub (public).
    Keygen { stem: PathBuf },
    /// Install a model image on this box: verify it against the trusted keys, unpack it into the
    /// idle slot, load its graph with the box's backend, self-test it, then activate it.
    Install {
        image: PathBuf,
        /// The box's state folder (slots, active pointer, trusted-keys/).
        #[arg(long, env = "BEDSIGHT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Folder of trusted public keys (*.pub); default: [images] trusted_keys of the
        /// configuration, else STATE_DIR/trusted-keys.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// Configuration file (TOML): [images] allow_unsigned and trusted_keys, [model] backend.
        #[arg(long, env = "BEDSIGHT_CONFIG")]
        config: Option<PathBuf>,
        /// auto, ort or tract (the backend the box runs); overrides the configuration.
        #[arg(long)]
        backend: Option<String>,
        /// Which graph the box runs (auto, int8 or fp32); overrides the configuration's [model]
        /// precision. Every graph the box may run is self-tested either way.
        #[arg(long)]
        precision: Option<String>,
    },
    /// Switch back to the model image that was active before the last install or rollback.
    Rollback {
        #[arg(long, env = "BEDSIGHT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Show both slots: which is active, what each holds, its self-test.
    List {
        #[arg(long, env = "BEDSIGHT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command whose output goes into a pipe that closes (`bedsight demo | head -1`) ends
    // quietly, as command-line tools do, instead of panicking on the failed write. Not `run`:
    // there a closed socket must be an error the loop handles, never a signal that kills it.
    let service = matches!(cli.command, Command::Run { .. });
    if service {
        appliance::service::log::init_service();
    } else {
        appliance::service::log::init_command();
    }
    if !service {
        // SAFETY: setting a signal's disposition to its default before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // The loop's last word under systemd is an error in the journal, as its other errors.
            let priority = if service && appliance::service::log::to_journal() {
                "<3>"
            } else {
                ""
            };
            eprintln!("{priority}error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Analyze {
            model,
            config,
            backend,
            precision,
            json,
            out,
            images,
        } => {
            let mut pipeline = Pipeline::load(
                config.as_deref(),
                model.as_deref(),
                backend.as_deref(),
                precision.as_deref(),
            )?;
            let failed = analyze::analyze(&mut pipeline, &images, json, out.as_deref())?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Run {
            config,
            backend,
            state_dir,
        } => {
            service::run(&config, backend.as_deref(), &state_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibrate {
            config,
            frame,
            out,
            flat_field,
            frame_reference,
        } => {
            if frame.len() > 1 && !flat_field {
                anyhow::bail!(
                    "{} frames given: several frames are the median of --flat-field; the corner check takes one",
                    frame.len()
                );
            }
            let stem = out.unwrap_or_else(|| frame[0].with_extension(""));
            calibrate::calibrate(&config, &frame[0], &stem)?;
            if flat_field {
                calibrate::write_flat_field(&frame, &stem)?;
            }
            if frame_reference {
                calibrate::write_frame_reference(&config, &frame[0], &stem)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Commission {
            config,
            model,
            backend,
            out,
            frames,
        } => {
            let fits = commission::commission(config.as_deref(), model.as_deref(), backend.as_deref(), &frames, &out)?;
            Ok(if fits { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Bench(args) => {
            bench::bench(&bench::options(args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, build, backend } => {
            let mut pipeline = Pipeline::load(None, None, backend.as_deref(), None)?;
            demo::demo(&mut pipeline, &out, build == "real")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(command) => {
            match command {
                ImageCommand::Pack {
                    onnx,
                    int8,
                    manifest,
                    selftest_input,
                    selftest_mask,
                    training_weights,
                    key,
                    out,
                } => model_image::pack(&model_image::PackArgs {
                    onnx: &onnx,
                    int8: int8.as_deref(),
                    manifest: &manifest,
                    selftest_input: selftest_input.as_deref(),
                    selftest_mask: selftest_mask.as_deref(),
                    training_weights: training_weights.as_deref(),
                    key: key.as_deref(),
                    out: &out,
                })?,
                ImageCommand::Verify { image, trusted_keys } => model_image::verify(&image, trusted_keys.as_deref())?,
                ImageCommand::Info { image, trusted_keys } => model_image::info(&image, trusted_keys.as_deref())?,
                ImageCommand::Keygen { stem } => model_image::keygen(&stem)?,
                ImageCommand::Install {
                    image,
                    state_dir,
                    trusted_keys,
                    config,
                    backend,
                    precision,
                } => model_image::install(&model_image::InstallArgs {
                    image: &image,
                    state_dir: &state_dir,
                    trusted_keys: trusted_keys.as_deref(),
                    config: config.as_deref(),
                    backend: backend.as_deref(),
                    precision: precision.as_deref(),
                })?,
                ImageCommand::Rollback { state_dir } => model_image::rollback(&state_dir)?,
                ImageCommand::List { state_dir } => model_image::list(&state_dir)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            config,
            journal,
            images,
            out,
            state_dir,
        } => {
            report::write(config.as_deref(), journal, images, out, &state_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Journal(command) => {
            match command {
                JournalCommand::Check { file } => journal::check(&file)?,
                JournalCommand::Export { file, format } => journal::export(&file, &format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
