//! `bedsight analyze`: one verdict per image file, for a person or (with `--json`) a program.

use std::path::{Path, PathBuf};

use anyhow::Result;
use hal::{Camera, ReplayCamera, Verdict};

use appliance::judge::pipeline::Pipeline;
use appliance::record::layer_files::write_layer_files;
use appliance::record::layer_report::{layer_json, layer_text};

/// Analyses every image; returns how many could not be judged (unreadable or FAULT).
pub fn analyze(pipeline: &mut Pipeline, images: &[PathBuf], json: bool, out_dir: Option<&Path>) -> Result<usize> {
    let mut failed = 0;
    let mut camera = ReplayCamera::from_files(images);
    for path in images {
        let shown = path.display().to_string();
        let frame = match camera.capture() {
            Ok(frame) => frame,
            Err(error) => {
                failed += 1;
                eprintln!("error: {error}");
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "image": shown, "verdict": Verdict::Fault.as_str(), "fault": error.to_string() })
                    );
                }
                continue;
            }
        };
        let outcome = pipeline.run_layer(&frame.image);
        if let Some(unjudged) = outcome.unjudged.as_ref().filter(|u| u.verdict == Verdict::Fault) {
            failed += 1;
            eprintln!("error: image {shown}: {}", unjudged.text);
        }
        if json {
            println!("{}", layer_json(&shown, &outcome, pipeline));
        } else {
            println!("{}", layer_text(&shown, &outcome, pipeline));
        }
        if let (Some(dir), None) = (out_dir, &outcome.unjudged) {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "layer".into());
            write_layer_files(
                dir,
                &stem,
                &pipeline.bed_image,
                &pipeline.fused,
                &pipeline.model.spec.classes,
                &outcome.defects,
            )?;
        }
    }
    Ok(failed)
}
