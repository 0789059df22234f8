//! How one layer's outcome is shown: a JSON object for machines, a few lines for people.

use hal::Verdict;
use serde_json::{json, Value};

use crate::judge::defect_map::Footprint;
use crate::judge::pipeline::{LayerOutcome, Pipeline};
use crate::record::journal::{DefectRecord, DomainRecord};

/// The `--json` object of one analysed image.
pub fn layer_json(image: &str, outcome: &LayerOutcome, pipeline: &Pipeline) -> Value {
    let model = &pipeline.model;
    let defects: Vec<Value> = outcome
        .defects
        .iter()
        .map(|d| {
            json!({
                "class": model.class_names[d.class as usize],
                "area_px": d.area_px,
                "area_mm2": round(d.area_mm2, 3),
                "bbox": d.bbox,
                "centroid": [round(d.centroid[0], 2), round(d.centroid[1], 2)],
                "equivalent_diameter_mm": round(d.equivalent_diameter_mm, 3),
                "ellipse": {
                    "theta_deg": round(d.ellipse.theta_deg, 2),
                    "semi_major_px": round(d.ellipse.semi_major_px, 2),
                    "semi_minor_px": round(d.ellipse.semi_minor_px, 2),
                },
                "mean_uncertainty": round(d.mean_uncertainty as f64, 5),
                "max_uncertainty": round(d.max_uncertainty as f64, 5),
            })
        })
        .collect();
    let judged = outcome.decision.is_some();
    let uncertainty = if judged {
        let map = &pipeline.fused.uncertainty;
        let mean = map.iter().map(|&u| u as f64).sum::<f64>() / map.len().max(1) as f64;
        let max = map.iter().copied().fold(0.0f32, f32::max) as f64;
        let decision = outcome.decision.as_ref().expect("judged");
        json!({
            "mean": round(mean, 6),
            "max": round(max, 6),
            "score": round(decision.uncertainty_score, 6),
            "defect_share": round(decision.defect_uncertain_share, 6),
        })
    } else {
        Value::Null
    };
    json!({
        "image": image,
        "verdict": outcome.verdict.as_str(),
        "fault": outcome.unjudged.as_ref().filter(|u| u.verdict == Verdict::Fault).map(|u| &u.text),
        "frame_check": outcome.unjudged.as_ref().map(|u| {
            let reason = u.reason();
            json!({ "check": u.check.name(), "rule": reason.rule(), "code": reason.code(), "reason": u.text })
        }),
        "reasons": match &outcome.unjudged {
            Some(unjudged) => vec![unjudged.text.clone()],
            None => outcome.decision.as_ref().map(|d| d.reasons.clone()).unwrap_or_default(),
        },
        "backend": model.backend_label(),
        "model": { "name": model.name, "version": model.version, "architecture": model.architecture, "graph": model.graph_name },
        "mm_per_px": round(pipeline.bed_mm_per_px, 6),
        "defects": defects,
        "defects_dropped": outcome.defects_dropped,
        "uncertainty": uncertainty,
        "refine": outcome.refine.as_ref().map(|r| json!({ "regions": r.regions, "pixels_changed": r.pixels_changed })),
        "layer_class": layer_class_json(outcome, pipeline),
        // the domain check: null for a model image without one, or a layer it did not judge
        "domain": outcome.domain.map(|d| json!({
            "score": if d.score.is_finite() { Value::from(round(d.score, 4)) } else { Value::Null },
            "threshold": round(d.threshold, 4),
            "familiar": d.familiar,
        })),
        "timing_ms": outcome.timing,
    })
}

/// The classification head's call: `{"class", "confidence", "defective", "threshold",
/// "probabilities": {class: p}}`, or null for a model without a layer head or a FAULT.
fn layer_class_json(outcome: &LayerOutcome, pipeline: &Pipeline) -> Value {
    let (Some(call), Some(head)) = (&outcome.layer_call, &pipeline.model.spec.layer_head) else {
        return Value::Null;
    };
    let probabilities: serde_json::Map<String, Value> = head
        .classes
        .iter()
        .zip(&pipeline.layer_probabilities)
        .map(|(name, &p)| (name.clone(), json!(round(p as f64, 4))))
        .collect();
    json!({
        "class": call.label(head),
        "confidence": round(call.confidence() as f64, 4),
        "defective": call.defective,
        "threshold": round(pipeline.config.layer_classifier.review_threshold as f64, 4),
        "probabilities": probabilities,
    })
}

/// A person's summary of the defects: `streaking 2 (14.2 mm²), hopping 1 (3.1 mm²)`.
pub fn defect_summary(outcome: &LayerOutcome, class_names: &[String]) -> String {
    let mut per_class: Vec<(usize, u32, f64)> = Vec::new();
    for defect in &outcome.defects {
        let class = defect.class as usize;
        match per_class.iter_mut().find(|(c, _, _)| *c == class) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += defect.area_mm2;
            }
            None => per_class.push((class, 1, defect.area_mm2)),
        }
    }
    if per_class.is_empty() {
        return "no defects".into();
    }
    let dropped = if outcome.defects_dropped > 0 {
        format!(" (+{} smaller not listed)", outcome.defects_dropped)
    } else {
        String::new()
    };
    per_class.sort_by_key(|(class, _, _)| *class);
    per_class
        .iter()
        .map(|(class, count, area)| format!("{} {count} ({area:.1} mm²)", class_names[*class]))
        .collect::<Vec<_>>()
        .join(", ")
        + &dropped
}

/// The lines `analyze` prints for a person.
pub fn layer_text(image: &str, outcome: &LayerOutcome, pipeline: &Pipeline) -> String {
    let mut text = format!(
        "{image}: {} [{}] {:.0} ms",
        outcome.verdict,
        pipeline.model.backend_label(),
        outcome.timing.total_ms
    );
    if let Some(unjudged) = &outcome.unjudged {
        let what = if unjudged.verdict == Verdict::Fault {
            "fault"
        } else {
            "not judged"
        };
        text.push_str(&format!("\n  {what}: {} [{}]", unjudged.text, unjudged.reason().rule()));
        return text;
    }
    if let Some(decision) = &outcome.decision {
        text.push_str(&format!(", uncertainty score {:.3}", decision.uncertainty_score));
        if let (Some(call), Some(head)) = (&outcome.layer_call, &pipeline.model.spec.layer_head) {
            text.push_str(&format!(
                ", layer class {} ({:.0}%)",
                call.label(head),
                call.confidence() * 100.0
            ));
        }
        for reason in &decision.reasons {
            text.push_str(&format!("\n  rule: {reason}"));
        }
    }
    for d in &outcome.defects {
        text.push_str(&format!(
            "\n  {:<16} {:>9.2} mm²  {:>6} px  bbox {:?}  Ø {:.2} mm  ellipse {:.1}°/{:.1}/{:.1} px  u {:.4}",
            pipeline.model.class_names[d.class as usize],
            d.area_mm2,
            d.area_px,
            d.bbox,
            d.equivalent_diameter_mm,
            d.ellipse.theta_deg,
            d.ellipse.semi_major_px,
            d.ellipse.semi_minor_px,
            d.mean_uncertainty
        ));
    }
    if outcome.defects.is_empty() {
        text.push_str("\n  no defects");
    }
    text
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The layer-level head's call as the journal keeps it: (`clean` or the class, confidence);
/// empty and 0 for a model without a head or a layer it did not judge.
pub fn layer_class_record(outcome: &LayerOutcome, pipeline: &Pipeline) -> (String, f32) {
    match (&outcome.layer_call, &pipeline.model.spec.layer_head) {
        (Some(call), Some(head)) => (call.label(head).to_string(), call.confidence()),
        _ => (String::new(), 0.0),
    }
}

/// The domain check's finding as the journal keeps it.
pub fn domain_record(outcome: &LayerOutcome) -> Option<DomainRecord> {
    outcome.domain.map(|d| DomainRecord {
        score: d.score,
        threshold: d.threshold,
        familiar: d.familiar,
    })
}

/// The journal's records of a layer's defects (class names, footprints in bed millimetres).
pub fn defect_records(outcome: &LayerOutcome, pipeline: &Pipeline) -> Vec<DefectRecord> {
    let mm_per_px = pipeline.bed_mm_per_px_xy();
    outcome
        .defects
        .iter()
        .map(|d| DefectRecord {
            class: pipeline
                .model
                .class_names
                .get(d.class as usize)
                .cloned()
                .unwrap_or_else(|| format!("class {}", d.class)),
            area_mm2: d.area_mm2,
            bbox: d.bbox,
            bbox_mm: Footprint::from_bbox_px(d.bbox, mm_per_px).to_xywh(),
            centroid: d.centroid,
            mean_uncertainty: d.mean_uncertainty,
        })
        .collect()
}
