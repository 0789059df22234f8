//! `bedsight report`: one self-contained HTML file for a build, from the journal and the layer
//! image folder: summary, charts, the worst layers' overlays (embedded as base64), the top view
//! of defects stacked over all layers, and the per-layer table. `bedsight run` writes it beside
//! the journal when it stops; the command writes it on demand.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;

use crate::config::Config;
use crate::record::journal::{self, LayerRecord, UtcTime};
use crate::record::layer_images::{dir_name, BedInfo};
use crate::web::board::{read_annotations, Action, Annotation};
use crate::web::chart::{escape, stacked_svg, trend_svg};
use crate::web::layers::Layers;

/// How many of the worst layers show their overlay.
const WORST_SHOWN: usize = 6;

/// How bad a verdict is, for picking the worst layers.
fn severity(verdict: &str) -> u8 {
    match verdict {
        "PAUSE" => 4,
        "REVIEW" => 3,
        "RECOAT" => 2,
        "FAULT" => 1,
        _ => 0,
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` of milliseconds since the Unix epoch (civil-from-days,
/// H. Hinnant's algorithm).
fn utc(time_ms: u64) -> String {
    let t = UtcTime::from_ms(time_ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn data_url(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Writes the report of the journal at `journal_path` (and the images in `images`) to `out`.
/// `config` gives the bed's size and the track settings (docs/tracks.md).
pub fn write(journal_path: &Path, images: Option<&Path>, out: &Path, config: &Config) -> Result<()> {
    let contents = journal::read(journal_path)?;
    let annotations = read_annotations(&journal_path.with_file_name("annotations.jsonl"))?;
    let html = render(
        &contents.records,
        &annotations,
        images,
        &journal_path.display().to_string(),
        config,
    );
    if let Some(folder) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("report {}: cannot create its folder", out.display()))?;
    }
    let temp = out.with_extension("html.tmp");
    std::fs::write(&temp, html)
        .and_then(|_| std::fs::rename(&temp, out))
        .with_context(|| format!("report {}: cannot write it", out.display()))
}

/// The report's HTML.
pub fn render(
    records: &[LayerRecord],
    annotations: &[Annotation],
    images: Option<&Path>,
    source: &str,
    config: &Config,
) -> String {
    let bed = images.and_then(BedInfo::read);
    let layers = Layers::from_records(records);
    let image_dir = |index: usize| {
        images.map(|folder| folder.join(dir_name(index as u64, records[index].layer, &records[index].verdict)))
    };
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>bedsight build report</title><style>\
         body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse}} \
         th,td{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;font-size:14px}} \
         .PASS{{color:#2e7d32}} .RECOAT{{color:#ef6c00}} .REVIEW{{color:#6a1b9a}} .PAUSE{{color:#c62828}} .FAULT{{color:#b71c1c}} \
         figure{{display:inline-block;margin:8px}} figure img{{width:256px;image-rendering:pixelated}} svg{{max-width:760px;width:100%;height:auto}}\
         </style></head><body>\n<h1>bedsight build report</h1>\n"
    );

    // Summary.
    let mut verdicts: Vec<(&str, usize)> = ["PASS", "RECOAT", "REVIEW", "PAUSE", "FAULT"]
        .iter()
        .map(|v| (*v, 0))
        .collect();
    for record in records {
        if let Some(entry) = verdicts.iter_mut().find(|(v, _)| *v == record.verdict) {
            entry.1 += 1;
        }
    }
    let mut models: Vec<String> = Vec::new();
    for record in records.iter().filter(|r| !r.model.is_empty()) {
        let label = format!("{} {} on {}", record.model, record.model_version, record.backend);
        if !models.contains(&label) {
            models.push(label);
        }
    }
    let mut areas: Vec<(String, f64)> = Vec::new();
    for (class, area) in layers.iter().flat_map(|l| layers.class_areas(l)) {
        match areas.iter_mut().find(|(c, _)| *c == class) {
            Some(entry) => entry.1 += area,
            None => areas.push((class, area)),
        }
    }
    let _ = write!(html, "<h2>Summary</h2>\n<table class=\"summary\">");
    let _ = write!(html, "<tr><th>journal</th><td>{}</td></tr>", escape(source));
    let _ = write!(
        html,
        "<tr><th>records</th><td id=\"record-count\">{}</td></tr>",
        records.len()
    );
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        let _ = write!(
            html,
            "<tr><th>layers</th><td>{} to {}</td></tr>",
            first.layer, last.layer
        );
        let _ = write!(
            html,
            "<tr><th>time</th><td>{} to {}</td></tr>",
            utc(first.time_ms),
            utc(last.time_ms)
        );
    }
    for (verdict, count) in &verdicts {
        let _ = write!(html, "<tr><th class=\"{verdict}\">{verdict}</th><td class=\"verdict-count\" data-verdict=\"{verdict}\">{count}</td></tr>");
    }
    let _ = write!(html, "<tr><th>models</th><td>{}</td></tr>", escape(&models.join("; ")));
    let area_text: Vec<String> = areas.iter().map(|(c, a)| format!("{} {a:.1} mm²", escape(c))).collect();
    let _ = write!(
        html,
        "<tr><th>defect area</th><td>{}</td></tr>",
        if area_text.is_empty() {
            "none".into()
        } else {
            area_text.join(", ")
        }
    );
    // Layers a frame check kept from the model, by check (docs/frame-checks.md).
    let mut checks: Vec<(&str, usize)> = Vec::new();
    for record in records {
        if let Some(check) = record.rule.strip_prefix("frame_check.") {
            match checks.iter_mut().find(|(c, _)| *c == check) {
                Some(entry) => entry.1 += 1,
                None => checks.push((check, 1)),
            }
        }
    }
    let checks_text: Vec<String> = checks.iter().map(|(c, n)| format!("{} {n}", escape(c))).collect();
    let _ = write!(
        html,
        "<tr><th>frame checks</th><td id=\"frame-checks\">{}</td></tr>",
        if checks_text.is_empty() {
            "none fired".into()
        } else {
            checks_text.join(", ")
        }
    );
    let acknowledged = annotations.iter().filter(|a| a.action == Action::Acknowledge).count();
    let false_alarms = annotations.iter().filter(|a| a.action == Action::FalseAlarm).count();
    let _ = writeln!(html, "<tr><th>annotations</th><td>{acknowledged} REVIEWs acknowledged, {false_alarms} false alarms</td></tr></table>");

    let _ = writeln!(
        html,
        "<h2>Defect area and uncertainty by layer</h2>\n{}",
        trend_svg(&layers, bed.as_ref())
    );

    // The worst layers: most severe verdict first, then the most defect area.
    let mut worst: Vec<usize> = (0..records.len()).filter(|&i| records[i].verdict != "PASS").collect();
    let total_area = |i: usize| records[i].defects.iter().fold(0.0, |sum, d| sum + d.area_mm2);
    worst.sort_by(|&a, &b| {
        severity(&records[b].verdict)
            .cmp(&severity(&records[a].verdict))
            .then(total_area(b).total_cmp(&total_area(a)))
    });
    let _ = writeln!(html, "<h2>Worst layers</h2>");
    if worst.is_empty() {
        html.push_str("<p>Every layer was PASS.</p>\n");
    }
    for &index in worst.iter().take(WORST_SHOWN) {
        let record = &records[index];
        let mut caption = format!(
            "layer {} (record {index}): <span class=\"{verdict}\">{verdict}</span>, {} defects, {:.1} mm²",
            record.layer,
            record.defects.len(),
            total_area(index),
            verdict = escape(&record.verdict)
        );
        if !record.reason.is_empty() {
            caption.push_str(&format!(" · {}: {}", escape(&record.rule), escape(&record.reason)));
        }
        match image_dir(index).and_then(|dir| data_url(&dir.join("overlay.png"))) {
            Some(url) => {
                let _ = writeln!(html, "<figure class=\"worst\"><img class=\"overlay\" alt=\"overlay of layer {}\" src=\"{url}\"><figcaption>{caption}</figcaption></figure>", record.layer);
            }
            None => {
                let _ = writeln!(
                    html,
                    "<figure class=\"worst\"><figcaption>{caption}: images not kept</figcaption></figure>"
                );
            }
        }
    }

    let background = (0..records.len())
        .rev()
        .find_map(|i| image_dir(i).and_then(|dir| data_url(&dir.join("rectified.png"))));
    let _ = write!(
        html,
        "<h2>Defects stacked over all layers</h2>\n<p>Top view of the plate: each cell is tinted by how many layers had a defect there.</p>\n{}\n",
        stacked_svg(&layers, bed.as_ref(), background.as_deref())
    );

    let _ = write!(
        html,
        "<h2>Defect map</h2>\n<p>Every defect's footprint on the bed (mm, top view), stacked over the layers in the range; one colour per class.</p>\n{}\n{}\n<script>{}filterDefectMap();</script>\n<h2>Tracks</h2>\n{}\n",
        crate::web::defects::map_filter_controls(&layers),
        crate::web::defects::map_svg(&layers, config.bed.width_mm, config.bed.height_mm, bed.as_ref()),
        crate::web::defects::MAP_FILTER_SCRIPT,
        crate::web::defects::tracks_html(&layers, config)
    );

    let _ = write!(
        html,
        "<h2>Layers</h2>\n<table class=\"layers\"><thead><tr><th>record</th><th>layer</th><th>time</th><th>trigger</th><th>verdict</th><th>defects</th><th>area, mm²</th><th>uncertainty</th><th>ms</th><th>model</th><th>why</th><th>annotations</th></tr></thead><tbody>\n"
    );
    for (index, record) in records.iter().enumerate() {
        let notes: Vec<String> = annotations
            .iter()
            .filter(|a| a.index == index as u64)
            .map(|a| {
                let what = match a.action {
                    Action::Acknowledge => "acknowledged",
                    Action::FalseAlarm => "false alarm",
                };
                if a.note.is_empty() {
                    what.to_string()
                } else {
                    format!("{what}: {}", a.note)
                }
            })
            .collect();
        // the rule that decided and what it saw (a FAULT's cause, a frame check's finding)
        // and what the model made of the layer: its layer-level call and the domain check
        let mut why: Vec<String> = Vec::new();
        if !record.reason.is_empty() {
            why.push(format!("{}: {}", record.rule, record.reason));
        }
        if !record.layer_class.is_empty() {
            why.push(format!(
                "layer class {} ({:.0}%)",
                record.layer_class,
                record.layer_class_confidence * 100.0
            ));
        }
        if let Some(domain) = record.domain {
            let word = if domain.familiar { "familiar" } else { "unfamiliar" };
            why.push(format!(
                "domain {word} (score {:.2}, threshold {:.2})",
                domain.score, domain.threshold
            ));
        }
        let why = why.join("; ");
        let _ = writeln!(
            html,
            "<tr class=\"layer-row\"><td>{index}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"verdict {verdict}\">{verdict}</td><td>{}</td><td>{:.2}</td><td>{:.4}</td><td>{:.0}</td><td>{}</td><td class=\"why\">{}</td><td>{}</td></tr>",
            record.layer,
            utc(record.time_ms),
            escape(&record.trigger),
            record.defects.len(),
            total_area(index),
            record.uncertainty_score,
            record.total_ms,
            escape(&format!("{} {}", record.model, record.model_version)),
            escape(&why),
            escape(&notes.join(", ")),
            verdict = escape(&record.verdict)
        );
    }
    html.push_str("</tbody></table>\n</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_ones() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn the_worst_layers_come_by_verdict_then_area() {
        let record = |layer: u32, verdict: &str, area: f64| LayerRecord {
            layer,
            time_ms: 0,
            trigger: "timer".into(),
            verdict: verdict.into(),
            defects: vec![crate::record::journal::DefectRecord {
                class: "hopping".into(),
                area_mm2: area,
                bbox: [0, 0, 1, 1],
                centroid: [0.0; 2],
                mean_uncertainty: 0.0,
                ..Default::default()
            }],
            uncertainty_score: 0.0,
            model: "m".into(),
            model_version: "1".into(),
            backend: "tract".into(),
            total_ms: 1.0,
            infer_ms: 1.0,
            ..Default::default()
        };
        let records = [
            record(1, "RECOAT", 30.0),
            record(2, "PASS", 1.0),
            record(3, "PAUSE", 2.0),
            record(4, "RECOAT", 50.0),
        ];
        let html = render(&records, &[], None, "test.bsj", &Config::embedded());
        let order: Vec<usize> = ["layer 3 (record 2)", "layer 4 (record 3)", "layer 1 (record 0)"]
            .iter()
            .map(|t| html.find(t).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(!html.contains("layer 2 (record 1)"));
        assert_eq!(html.matches("class=\"layer-row\"").count(), 4);
    }
}
