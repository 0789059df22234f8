//! `bedsight commission`: does the model fit this printer's camera? Judges a folder of frames from
//! a new printer through the box's own pipeline (the configuration's corners, flat field and frame
//! checks) and compares each layer's domain score with the model's validation layers': the share
//! of familiar layers, a histogram of both (`domain.svg`), and what to do next.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use appliance::judge::pipeline::Pipeline;

/// Below this share of familiar layers the model does not fit the camera.
const FITS_MIN_FAMILIAR: f64 = 0.95;
const SVG_WIDTH: f64 = 640.0;
const SVG_HEIGHT: f64 = 320.0;
const BINS: usize = 30;

pub fn commission(
    config: Option<&Path>,
    model: Option<&Path>,
    backend: Option<&str>,
    folder: &Path,
    out: &Path,
) -> Result<bool> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("frames folder {}: cannot read it", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["png", "jpg", "jpeg", "tif", "tiff", "bmp"].contains(&e.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!(
            "frames folder {}: no images (png, jpg, tiff, bmp) in it",
            folder.display()
        );
    }
    let mut pipeline = Pipeline::load(config, model, backend, None)?;
    let Some(domain) = pipeline.model.domain.clone() else {
        bail!(
            "model {} {} ({}) has no domain check (no [domain] table: model format 1.2 added it); \
             commissioning needs a model exported by a bedsight-train that fits one",
            pipeline.model.name,
            pipeline.model.version,
            pipeline.model.origin
        );
    };
    std::fs::create_dir_all(out).with_context(|| format!("output folder {}: cannot create it", out.display()))?;

    let mut scores = Vec::new();
    let mut kept = Vec::new();
    let mut layers = Vec::new();
    for path in &frames {
        let frame = image::open(path).with_context(|| format!("frame {}: not a readable image", path.display()))?;
        let outcome = pipeline.run_layer(&frame);
        match outcome.domain {
            Some(finding) => {
                scores.push(finding.score);
                layers.push(json!({ "frame": path.display().to_string(), "score": finding.score, "familiar": finding.familiar }));
            }
            None => {
                let why = outcome.unjudged.map(|u| u.text).unwrap_or_else(|| "not judged".into());
                println!("{}: not judged ({why})", path.display());
                kept.push(json!({ "frame": path.display().to_string(), "reason": why }));
            }
        }
    }
    if scores.is_empty() {
        bail!(
            "frames folder {}: the frame checks kept every frame from the model; fix what they say (corners, lighting, [frame_check]) first",
            folder.display()
        );
    }
    let familiar = scores.iter().filter(|s| **s <= domain.threshold).count();
    let share = familiar as f64 / scores.len() as f64;
    let fits = share >= FITS_MIN_FAMILIAR;
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];

    let svg_path = out.join("domain.svg");
    std::fs::write(
        &svg_path,
        histogram_svg(&scores, &domain.validation_scores, domain.threshold),
    )
    .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let summary = json!({
        "model": { "name": pipeline.model.name, "version": pipeline.model.version },
        "threshold": domain.threshold,
        "threshold_quantile": domain.threshold_quantile,
        "judged": scores.len(),
        "familiar": familiar,
        "familiar_share": share,
        "median_score": median,
        "fits": fits,
        "layers": layers,
        "not_judged": kept,
    });
    let json_path = out.join("domain.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    println!(
        "domain check: {familiar} of {} judged layers familiar ({:.0}%), median score {median:.2} against the threshold {:.2} \
         (the {:.0}% quantile of the model's {} validation layers){}",
        scores.len(),
        share * 100.0,
        domain.threshold,
        domain.threshold_quantile * 100.0,
        domain.validation_layers,
        if kept.is_empty() { String::new() } else { format!("; {} frames not judged", kept.len()) }
    );
    println!("wrote {} and {}", svg_path.display(), json_path.display());
    if fits {
        println!(
            "the model fits this camera: at least {:.0}% of its layers look like the model's training data",
            FITS_MIN_FAMILIAR * 100.0
        );
    } else {
        println!(
            "the model does NOT fit this camera: under {:.0}% of its layers look like the model's training data, so the box \
             will answer REVIEW on the others. Next: collect layers from this printer (`bedsight run` keeps their images), \
             label some of them and fine-tune the model on them (quantize/README.md), then commission again",
            FITS_MIN_FAMILIAR * 100.0
        );
    }
    Ok(fits)
}

/// Two histograms on one axis: the folder's scores and the model's validation layers' (each as a
/// share of its own count), with the threshold as a line.
fn histogram_svg(scores: &[f64], validation: &[f32], threshold: f64) -> String {
    let validation: Vec<f64> = validation.iter().map(|&v| f64::from(v)).collect();
    let top = scores
        .iter()
        .chain(&validation)
        .copied()
        .filter(|v| v.is_finite())
        .fold(threshold * 1.5, f64::max);
    let bin = |v: f64| ((v / top * BINS as f64) as usize).min(BINS - 1);
    let shares = |values: &[f64]| {
        let mut counts = [0usize; BINS];
        values
            .iter()
            .filter(|v| v.is_finite())
            .for_each(|&v| counts[bin(v)] += 1);
        counts.map(|c| c as f64 / values.len().max(1) as f64)
    };
    let (ours, theirs) = (shares(scores), shares(&validation));
    let peak = ours.iter().chain(&theirs).copied().fold(0.01, f64::max);
    let (left, bottom, plot_w, plot_h) = (50.0, SVG_HEIGHT - 40.0, SVG_WIDTH - 70.0, SVG_HEIGHT - 110.0);
    let x = |v: f64| left + v / top * plot_w;
    let bar_w = plot_w / BINS as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for (shares, colour, offset) in [(&theirs, "#8e8e93", 0.0), (&ours, "#007aff", bar_w / 2.0)] {
        for (i, share) in shares.iter().enumerate() {
            let h = share / peak * plot_h;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{colour}"/>"#,
                left + i as f64 * bar_w + offset,
                bottom - h,
                bar_w / 2.0
            );
        }
    }
    let _ = write!(
        svg,
        r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#ff3b30" stroke-width="2"/><text x="{0:.1}" y="{2:.1}" fill="#ff3b30">threshold {threshold:.2}</text>"##,
        x(threshold),
        bottom - plot_h,
        bottom - plot_h - 6.0
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#000"/>"##,
        left + plot_w
    );
    for tick in 0..=4 {
        let v = top * tick as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.1}</text>"#,
            x(v),
            bottom + 16.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{left}" y="16">domain score (share of layers per bin)</text><rect x="{0:.1}" y="26" width="10" height="10" fill="#007aff"/><text x="{1:.1}" y="36">this camera ({2})</text><rect x="{0:.1}" y="42" width="10" height="10" fill="#8e8e93"/><text x="{1:.1}" y="52">the model's validation layers ({3})</text></svg>"##,
        left,
        left + 14.0,
        scores.len(),
        validation.len()
    );
    svg
}
