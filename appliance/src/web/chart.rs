//! SVG drawings of a build, shared by the dashboard (`/chart.svg`, `/stacked.svg`) and
//! `bedsight report`: defect area per class and uncertainty against the layer, and the top view
//! of defects stacked over all layers.

use std::fmt::Write as _;

use hal::Verdict;

use crate::record::layer_images::BedInfo;
use crate::web::layers::Layers;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 56.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 34.0;
/// The uncertainty line's colour (the heat layer's orange).
const UNCERTAINTY_COLOUR: &str = "#ff9500";
/// Colours for classes the bed info does not know.
const FALLBACK_COLOURS: [&str; 6] = ["#e6194b", "#3cb44b", "#4363d8", "#911eb4", "#f58231", "#42d4f4"];

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A class's colour: the model image's, else one of a fixed set by position.
pub fn class_colour(class: &str, position: usize, bed: Option<&BedInfo>) -> String {
    match bed.and_then(|b| b.classes.iter().find(|c| c.name == class)) {
        Some(info) => format!("#{:02x}{:02x}{:02x}", info.colour[0], info.colour[1], info.colour[2]),
        None => FALLBACK_COLOURS[position % FALLBACK_COLOURS.len()].to_string(),
    }
}

/// Defect area per class (left axis, mm²) and the uncertainty score (right axis) for every
/// record, in journal order. Each record is one point of each line; the uncertainty points are
/// `circle.pt-unc` with `data-index`, so a page can pick a layer by clicking.
pub fn trend_svg(records: &Layers, bed: Option<&BedInfo>) -> String {
    let mut classes: Vec<String> = Vec::new();
    let areas: Vec<Vec<(String, f64)>> = records.iter().map(|r| records.class_areas(r)).collect();
    for (class, _) in areas.iter().flatten() {
        if !classes.contains(class) {
            classes.push(class.clone());
        }
    }
    // Areas on a log scale (log10(1 + a)) up to the power of ten above the largest, with a tick
    // at each power: one big area does not flatten the rest, and the ticks are round numbers.
    let max_area = areas.iter().flatten().map(|(_, a)| *a).fold(0.0, f64::max);
    let area_top = 10f64.powi((max_area.max(1.0)).log10().ceil().max(1.0) as i32);
    let max_uncertainty = nice_ceiling(records.iter().map(|r| r.uncertainty).fold(0.0, f64::max).max(0.01));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |i: usize| {
        LEFT + if records.len() > 1 {
            plot_w * i as f64 / (records.len() - 1) as f64
        } else {
            plot_w / 2.0
        }
    };
    let y_area = |a: f64| TOP + plot_h * (1.0 - (1.0 + a).log10() / (1.0 + area_top).log10());
    let y_unc = |u: f64| TOP + plot_h * (1.0 - u / max_uncertainty);
    // A FAULT layer was not judged: its lines break there, and it has a mark of its own.
    let fault: Vec<bool> = records.iter().map(|r| r.verdict == Verdict::Fault).collect();

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="defect area per class and uncertainty by layer">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>"##
    );
    let mut power = 0.0;
    while power <= area_top {
        let ty = y_area(power);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{ty:.1}" y2="{ty:.1}" stroke="#e4e4e4"/><text class="tick-area" x="{}" y="{:.1}" font-size="10" text-anchor="end">{power}</text>"##,
            LEFT + plot_w,
            LEFT - 4.0,
            ty + 3.0,
        );
        power = if power == 0.0 { 1.0 } else { power * 10.0 };
    }
    for tick in 0..=4 {
        let value = max_uncertainty * tick as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text class="tick-unc" x="{}" y="{:.1}" font-size="10" fill="{UNCERTAINTY_COLOUR}">{}</text>"#,
            LEFT + plot_w + 4.0,
            y_unc(value) + 3.0,
            round_label(value)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">defect area, mm²</text><text x="{}" y="{}" font-size="11" text-anchor="middle">layer</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0
    );
    // Layer numbers under the axis, at most ~12 of them.
    let step = records.len().div_ceil(12).max(1);
    for (i, record) in records.iter().enumerate().step_by(step) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            x(i),
            TOP + plot_h + 13.0,
            record.layer
        );
    }
    for (position, class) in classes.iter().enumerate() {
        let colour = class_colour(class, position, bed);
        let points: Vec<Option<String>> = areas
            .iter()
            .enumerate()
            .map(|(i, per_class)| {
                let area = per_class
                    .iter()
                    .find(|(c, _)| c == class)
                    .map(|(_, a)| *a)
                    .unwrap_or(0.0);
                (!fault[i]).then(|| format!("{:.1},{:.1}", x(i), y_area(area)))
            })
            .collect();
        for segment in points.split(Option::is_none).filter(|s| !s.is_empty()) {
            let _ = write!(
                svg,
                r#"<polyline class="line-area" data-class="{}" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                escape(class),
                segment.iter().flatten().cloned().collect::<Vec<_>>().join(" ")
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="10" fill="{colour}">■ {}</text>"#,
            LEFT + 6.0 + 110.0 * position as f64,
            TOP + 12.0,
            escape(class)
        );
    }
    let points: Vec<Option<String>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (!fault[i]).then(|| format!("{:.1},{:.1}", x(i), y_unc(r.uncertainty))))
        .collect();
    for segment in points.split(Option::is_none).filter(|s| !s.is_empty()) {
        let _ = write!(
            svg,
            r#"<polyline class="line-unc" fill="none" stroke="{UNCERTAINTY_COLOUR}" stroke-dasharray="4 2" stroke-width="1.5" points="{}"/>"#,
            segment.iter().flatten().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    for (i, record) in records.iter().enumerate() {
        if fault[i] {
            let _ = write!(
                svg,
                r##"<text class="pt-fault" data-index="{i}" x="{:.1}" y="{:.1}" font-size="14" fill="#b71c1c" text-anchor="middle">×<title>layer {} FAULT: not judged</title></text>"##,
                x(i),
                TOP + plot_h - 3.0,
                record.layer
            );
            continue;
        }
        let _ = write!(
            svg,
            r#"<circle class="pt-unc" data-index="{i}" cx="{:.1}" cy="{:.1}" r="3.5" fill="{UNCERTAINTY_COLOUR}"><title>layer {} {}: uncertainty {:.4}</title></circle>"#,
            x(i),
            y_unc(record.uncertainty),
            record.layer,
            record.verdict.as_str(),
            record.uncertainty
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="10" fill="{UNCERTAINTY_COLOUR}" text-anchor="end">- - uncertainty</text>"#,
        LEFT + plot_w - 4.0,
        TOP + 12.0
    );
    svg.push_str("</svg>");
    svg
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value` (> 0).
fn nice_ceiling(value: f64) -> f64 {
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|v| *v >= value * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// A tick value with no more decimals than it needs (0.005, 0.01, 0.015).
fn round_label(value: f64) -> String {
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Cells of the stacked top view per side.
pub const GRID: usize = 32;

/// In how many records a defect covered each cell of a `GRID` x `GRID` grid over the bed.
/// `bed_px`: the rectified bed's size; without it, the defects' own extent.
pub fn stacked_counts(records: &Layers, bed_px: Option<(u32, u32)>) -> ([[u32; GRID]; GRID], (u32, u32)) {
    let (width, height) = bed_px.unwrap_or_else(|| {
        let max = |f: fn(&[u32; 4]) -> u32| {
            records
                .iter()
                .flat_map(|r| r.defects.iter().map(|d| f(&d.bbox)))
                .max()
                .unwrap_or(1)
                .max(1)
        };
        (max(|b| b[0] + b[2]), max(|b| b[1] + b[3]))
    });
    let mut counts = [[0u32; GRID]; GRID];
    for record in records {
        let mut covered = [[false; GRID]; GRID];
        for defect in record.defects.iter() {
            let [x, y, w, h] = defect.bbox;
            let cell_x = |px: u32| ((px as usize * GRID) / width as usize).min(GRID - 1);
            let cell_y = |px: u32| ((px as usize * GRID) / height as usize).min(GRID - 1);
            for row in covered
                .iter_mut()
                .take(cell_y((y + h).saturating_sub(1)) + 1)
                .skip(cell_y(y))
            {
                for cell in row
                    .iter_mut()
                    .take(cell_x((x + w).saturating_sub(1)) + 1)
                    .skip(cell_x(x))
                {
                    *cell = true;
                }
            }
        }
        for (count_row, covered_row) in counts.iter_mut().zip(covered) {
            for (count, hit) in count_row.iter_mut().zip(covered_row) {
                *count += hit as u32;
            }
        }
    }
    (counts, (width, height))
}

/// The top view: the bed (`background`, a data: URL of a rectified layer, when there is one),
/// each grid cell tinted by how many layers had a defect there, with the count written in.
pub fn stacked_svg(records: &Layers, bed: Option<&BedInfo>, background: Option<&str>) -> String {
    let (counts, (width, height)) = stacked_counts(records, bed.map(|b| (b.width, b.height)));
    let most = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let side = 480.0;
    let (cell_w, cell_h) = (side / GRID as f64, side * height as f64 / width as f64 / GRID as f64);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="stacked" viewBox="0 0 {side} {:.1}" role="img" aria-label="defects stacked over all layers">"#,
        cell_h * GRID as f64
    );
    match background {
        Some(url) => {
            let _ = write!(
                svg,
                r#"<image href="{url}" x="0" y="0" width="{side}" height="{:.1}" preserveAspectRatio="none" opacity="0.6"/>"#,
                cell_h * GRID as f64
            );
        }
        None => {
            let _ = write!(
                svg,
                r##"<rect width="{side}" height="{:.1}" fill="#777"/>"##,
                cell_h * GRID as f64
            );
        }
    }
    for (row, cells) in counts.iter().enumerate() {
        for (column, &count) in cells.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let opacity = 0.25 + 0.65 * count as f64 / most as f64;
            let (cx, cy) = (column as f64 * cell_w, row as f64 * cell_h);
            let _ = write!(
                svg,
                r##"<rect class="stack-cell" data-count="{count}" x="{cx:.1}" y="{cy:.1}" width="{cell_w:.1}" height="{cell_h:.1}" fill="#d7191c" fill-opacity="{opacity:.2}"><title>{count} layers</title></rect>"##
            );
            if count > 1 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" fill="white" text-anchor="middle">{count}</text>"#,
                    cx + cell_w / 2.0,
                    cy + cell_h / 2.0 + 3.0
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::journal::{DefectRecord, LayerRecord};

    fn record(layer: u32, boxes: &[[u32; 4]]) -> LayerRecord {
        LayerRecord {
            layer,
            time_ms: 0,
            trigger: "timer".into(),
            verdict: "RECOAT".into(),
            defects: boxes
                .iter()
                .map(|&bbox| DefectRecord {
                    class: "hopping".into(),
                    area_mm2: 1.0,
                    bbox,
                    centroid: [0.0; 2],
                    mean_uncertainty: 0.0,
                    ..Default::default()
                })
                .collect(),
            uncertainty_score: 0.05 * layer as f64,
            model: "m".into(),
            model_version: "1".into(),
            backend: "tract".into(),
            total_ms: 1.0,
            infer_ms: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_defect_repeated_at_the_same_place_counts_once_per_layer() {
        // A 256 px bed: 8 px per cell. Layers 1 and 2 have a defect in cell (1, 0); layer 2 has
        // two boxes in that cell, still one layer; layer 3 a box spanning cells 30 and 31 of row 31.
        let records = Layers::from_records(&[
            record(1, &[[8, 0, 8, 8]]),
            record(2, &[[8, 0, 4, 4], [12, 4, 4, 4]]),
            record(3, &[[247, 250, 6, 4]]),
        ]);
        let (counts, size) = stacked_counts(&records, Some((256, 256)));
        assert_eq!(size, (256, 256));
        assert_eq!(counts[0][1], 2);
        assert_eq!((counts[31][30], counts[31][31]), (1, 1));
        assert_eq!(counts.iter().flatten().sum::<u32>(), 4);
        let bed = BedInfo {
            width: 256,
            height: 256,
            mm_per_px: 1.0,
            classes: Vec::new(),
        };
        let svg = stacked_svg(&records, Some(&bed), None);
        assert_eq!(svg.matches("class=\"stack-cell\"").count(), 3);
        assert_eq!(svg.matches("data-count=\"2\"").count(), 1);
    }

    #[test]
    fn the_trend_breaks_at_a_fault_keeps_small_areas_visible_and_has_round_ticks() {
        let mut records = vec![
            record(1, &[[0, 0, 2, 2]]),
            record(2, &[[0, 0, 2, 2]]),
            record(3, &[]),
            record(4, &[[0, 0, 2, 2]]),
        ];
        records[2].verdict = "FAULT".into();
        records[3].defects[0].area_mm2 = 5000.0;
        let svg = trend_svg(&Layers::from_records(&records), None);
        // the area and uncertainty lines each in two pieces, around layer 3's mark
        assert_eq!(svg.matches("class=\"line-area\"").count(), 2);
        assert_eq!(svg.matches("class=\"line-unc\"").count(), 2);
        assert_eq!(svg.matches("class=\"pt-unc\"").count(), 3);
        assert!(svg.contains("<title>layer 3 FAULT: not judged</title>"));
        // log10(1 + a) up to 10 000 mm²: ticks at 0, 1, 10, 100, 1000 and 10000
        let ticks: Vec<&str> = svg
            .split("class=\"tick-area\"")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(ticks, ["0", "1", "10", "100", "1000", "10000"]);
        // uncertainty 0.05 x layer, at most 0.2: ticks 0, 0.05, 0.1, 0.15, 0.2
        let unc: Vec<&str> = svg
            .split("class=\"tick-unc\"")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(unc, ["0", "0.05", "0.1", "0.15", "0.2"]);
        assert_eq!(
            (nice_ceiling(0.013), nice_ceiling(0.2), nice_ceiling(3.0)),
            (0.02, 0.2, 5.0)
        );
    }

    #[test]
    fn the_trend_has_one_uncertainty_point_per_record() {
        let records = Layers::from_records(&(1..=5).map(|l| record(l, &[[0, 0, 2, 2]])).collect::<Vec<_>>());
        let svg = trend_svg(&records, None);
        assert_eq!(svg.matches("class=\"pt-unc\"").count(), 5);
        assert_eq!(svg.matches("class=\"line-area\"").count(), 1);
        assert!(trend_svg(&Layers::default(), None).contains("</svg>"));
    }
}
