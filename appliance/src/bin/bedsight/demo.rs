//! `bedsight demo`: the whole loop on the embedded defaults: the sample build replayed as a
//! camera, the default model, a simulated PLC that logs what it hears. `--build real` replays a
//! few real powder-bed photographs instead (assets/sample-build-real, in label folders).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use hal::{Camera, Outputs, ReplayCamera, SimulatedPlc, Verdict, VerdictMessage};
use include_dir::{include_dir, Dir};

use appliance::judge::decide::RecoatBudget;
use appliance::judge::pipeline::Pipeline;
use appliance::record::journal::{Journal, LayerRecord};
use appliance::record::layer_files::write_layer_files;
use appliance::record::layer_report::{defect_records, defect_summary, domain_record, layer_class_record, layer_json};

/// The sample build made by the training tool's generator (`quantize/scripts/build-default-model.sh`).
static SAMPLE_BUILD: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../assets/sample-build");
/// Real layers from the PBLM photographs, one folder per label (`quantize/scripts/make-real-sample-build.py`).
static SAMPLE_BUILD_REAL: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../assets/sample-build-real");

/// The real sample build's layer images (`Label/file.png`), in name order.
pub fn real_sample_layers() -> Vec<(&'static str, &'static [u8])> {
    let mut layers: Vec<(&str, &[u8])> = SAMPLE_BUILD_REAL
        .dirs()
        .flat_map(|dir| dir.files())
        .filter(|file| file.path().extension().is_some_and(|ext| ext == "png"))
        .map(|file| (file.path().to_str().expect("asset names are UTF-8"), file.contents()))
        .collect();
    layers.sort_by_key(|(name, _)| *name);
    layers
}

/// The sample build's layer images, in name order.
pub fn sample_layers() -> Vec<(&'static str, &'static [u8])> {
    let mut layers: Vec<(&str, &[u8])> = SAMPLE_BUILD
        .files()
        .filter(|file| file.path().extension().is_some_and(|ext| ext == "png"))
        .map(|file| (file.path().to_str().expect("asset names are UTF-8"), file.contents()))
        .collect();
    layers.sort_by_key(|(name, _)| *name);
    layers
}

/// Runs the demo; returns the verdict of every layer.
pub fn demo(pipeline: &mut Pipeline, out_dir: &Path, real: bool) -> Result<Vec<Verdict>> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("demo output folder {}: cannot create it", out_dir.display()))?;
    let layers = if real { real_sample_layers() } else { sample_layers() };
    let mut camera = ReplayCamera::from_memory(
        if real {
            "the embedded real sample build"
        } else {
            "the embedded sample build"
        },
        &layers,
    );
    let mut plc = SimulatedPlc::default();
    let mut budget = RecoatBudget::default();
    // The journal `bedsight run` would keep, so that `bedsight report` and `journal export`
    // read the demo as a build (a new one each run).
    let journal_path = out_dir.join("journal.bsj");
    if journal_path.exists() {
        std::fs::remove_file(&journal_path).with_context(|| format!("cannot replace {}", journal_path.display()))?;
    }
    let (mut journal, _) = Journal::open(&journal_path)?;
    let mut records = Vec::new();
    let mut verdicts = Vec::new();
    println!(
        "bedsight demo: model {} {} on {}, {}, {}, camera: {}, PLC: {}",
        pipeline.model.name,
        pipeline.model.version,
        pipeline.model.backend_label(),
        pipeline.model.precision_note,
        pipeline.model.domain_note(),
        camera.describe(),
        plc.describe()
    );
    for (index, (name, _)) in layers.iter().enumerate() {
        let layer = index as u32 + 1;
        print!("[{layer:>3}/{}] ", layers.len());
        std::io::stdout().flush().ok();
        let outcome = match camera.capture() {
            Ok(frame) => pipeline.run_layer(&frame.image),
            Err(error) => {
                println!("layer {layer:>4}  FAULT   {error}  {name}");
                plc.publish(&VerdictMessage::fault(layer))?;
                journal.append(&LayerRecord {
                    layer,
                    time_ms: now_ms(),
                    trigger: "demo".into(),
                    verdict: Verdict::Fault.as_str().into(),
                    reason: format!("camera: {error}"),
                    rule: "fault".into(),
                    reason_code: 0x0800,
                    ..LayerRecord::default()
                })?;
                verdicts.push(Verdict::Fault);
                continue;
            }
        };
        let verdict = budget.apply(layer, outcome.verdict, pipeline.config.recoat.max_retries);
        let uncertainty_score = outcome.decision.as_ref().map(|d| d.uncertainty_score).unwrap_or(0.0);
        let mut detail = match &outcome.unjudged {
            Some(unjudged) => unjudged.text.clone(),
            None => defect_summary(&outcome, &pipeline.model.class_names),
        };
        if let (Some(call), Some(head)) = (&outcome.layer_call, &pipeline.model.spec.layer_head) {
            detail.push_str(&format!(
                "; layer {} {:.0}%",
                call.label(head),
                call.confidence() * 100.0
            ));
        }
        println!(
            "layer {layer:>4}  {:<7} {detail:<60} u {uncertainty_score:.3}  {:>6.0} ms  {name}",
            verdict.as_str(),
            outcome.timing.total_ms
        );
        let reason = match &outcome.unjudged {
            Some(unjudged) => Some(unjudged.reason()),
            None => outcome.decision.as_ref().and_then(|d| d.reason.clone()),
        }
        .filter(|_| verdict != Verdict::Pass);
        plc.publish(&VerdictMessage {
            layer,
            verdict,
            defect_count: outcome.totals.count,
            total_defect_area_mm2: outcome.totals.total_area_mm2,
            largest_defect_area_mm2: outcome.totals.largest_area_mm2,
            class_areas_mm2: outcome.totals.class_areas_mm2,
            uncertainty_score,
            reason_code: reason.as_ref().map_or(0, |r| r.code()),
        })?;
        let (layer_class, layer_class_confidence) = layer_class_record(&outcome, pipeline);
        journal.append(&LayerRecord {
            layer_class,
            layer_class_confidence,
            domain: domain_record(&outcome),
            layer,
            time_ms: now_ms(),
            trigger: "demo".into(),
            verdict: verdict.as_str().into(),
            defects: defect_records(&outcome, pipeline),
            uncertainty_score,
            model: pipeline.model.name.clone(),
            model_version: pipeline.model.version.clone(),
            backend: pipeline.model.backend_label(),
            total_ms: outcome.timing.total_ms,
            infer_ms: outcome.timing.infer_ms,
            rule: reason.as_ref().map(|r| r.rule()).unwrap_or_default(),
            reason_code: reason.as_ref().map_or(0, |r| r.code()),
            reason: reason.map(|r| r.text).unwrap_or_default(),
            ..LayerRecord::default()
        })?;
        if outcome.unjudged.is_none() {
            let stem = format!("layer-{layer:04}");
            write_layer_files(
                out_dir,
                &stem,
                &pipeline.bed_image,
                &pipeline.fused,
                &pipeline.model.spec.classes,
                &outcome.defects,
            )?;
        }
        let mut record = layer_json(name, &outcome, pipeline);
        record["layer"] = layer.into();
        record["verdict"] = verdict.as_str().into();
        records.push(record);
        verdicts.push(verdict);
    }

    let summary_path = out_dir.join("summary.json");
    let counts: serde_json::Map<String, serde_json::Value> = Verdict::ALL
        .iter()
        .map(|v| {
            (
                v.as_str().to_string(),
                verdicts.iter().filter(|x| *x == v).count().into(),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "model": { "name": pipeline.model.name, "version": pipeline.model.version },
        "backend": pipeline.model.backend_label(),
        "verdict_counts": counts,
        "plc_heard": plc.heard,
        "layers": records,
    });
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    let plc_log = out_dir.join("plc.log");
    std::fs::write(&plc_log, plc.heard.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", plc_log.display()))?;
    let tally: Vec<String> = Verdict::ALL
        .iter()
        .filter_map(|v| {
            let n = verdicts.iter().filter(|x| *x == v).count();
            (n > 0).then(|| format!("{n} {v}"))
        })
        .collect();
    drop(journal);
    let report = out_dir.join("build-report.html");
    appliance::web::report::write(&journal_path, None, &report, &pipeline.config)?;
    println!("{} layers: {}", verdicts.len(), tally.join(", "));
    println!(
        "overlays, masks, uncertainty maps, summary.json, plc.log, the journal (journal.bsj) and the build report (build-report.html) are in {}",
        out_dir.display()
    );
    Ok(verdicts)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_millis() as u64)
        .unwrap_or(0)
}
