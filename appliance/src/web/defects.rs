//! Defects across layers for people, shared by the dashboard (`/map.svg`, `/tracks.html`,
//! `/map-filter.js`) and `bedsight report`: the stacked defect map in bed millimetres (a top
//! view, one colour per class, one group per inspection so a layer range can be picked) and the
//! list of tracks with the recoat outcomes (docs/tracks.md).

use std::fmt::Write as _;

use crate::config::Config;
use crate::judge::history::BuildHistory;
use crate::record::layer_images::BedInfo;
use crate::web::chart::{class_colour, escape};
use crate::web::layers::Layers;

/// The map's width in SVG units; the height follows the bed's aspect.
const MAP_SIDE: f64 = 480.0;

/// The layer-range filter: hides the map's inspections outside `#map-from`..`#map-to` and says
/// how many are shown. Inlined by the report, served at `/map-filter.js` to the dashboard.
pub const MAP_FILTER_SCRIPT: &str = r#"function filterDefectMap() {
  const from = Number(document.getElementById("map-from").value || -Infinity);
  const to = Number(document.getElementById("map-to").value || Infinity);
  let shown = 0;
  for (const layer of document.querySelectorAll("svg.defect-map g.map-layer")) {
    const visible = Number(layer.dataset.layer) >= from && Number(layer.dataset.layer) <= to;
    layer.style.display = visible ? "" : "none";
    shown += visible && layer.childElementCount > 0 ? 1 : 0;
  }
  document.getElementById("map-shown").textContent = shown + " inspections with defects shown";
}
"#;

/// The range inputs the filter reads (layer numbers, both ends included).
pub fn map_filter_controls(records: &Layers) -> String {
    let first = records.iter().map(|r| r.layer).min().unwrap_or(0);
    let last = records.iter().map(|r| r.layer).max().unwrap_or(0);
    format!(
        r#"<div class="map-filter">layers <input type="number" id="map-from" value="{first}" min="0" oninput="filterDefectMap()"> to <input type="number" id="map-to" value="{last}" min="0" oninput="filterDefectMap()"> <span id="map-shown"></span></div>"#
    )
}

/// Every defect footprint of `records` on the bed, `width_mm` x `height_mm`: one translucent
/// rectangle per defect in its class's colour (where defects repeat, the colour deepens), one
/// `g.map-layer` per inspection with its layer number in `data-layer`.
pub fn map_svg(records: &Layers, width_mm: f64, height_mm: f64, bed: Option<&BedInfo>) -> String {
    let scale = MAP_SIDE / width_mm;
    let height = height_mm * scale;
    let mut classes: Vec<String> = Vec::new();
    for defect in records.iter().flat_map(|r| r.defects.iter()) {
        let class = records.class(defect.class);
        if !classes.iter().any(|c| c == class) {
            classes.push(class.to_string());
        }
    }
    let colour = |class: &str| class_colour(class, classes.iter().position(|c| c == class).unwrap_or(0), bed);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="defect-map" viewBox="0 0 {MAP_SIDE} {:.1}" role="img" aria-label="defect footprints stacked over the layers, top view of the bed">"#,
        height + 18.0
    );
    let _ = write!(
        svg,
        r##"<rect class="bed" width="{MAP_SIDE}" height="{height:.1}" fill="#f4f4f4" stroke="#999"/>"##
    );
    for record in records {
        let _ = write!(svg, r#"<g class="map-layer" data-layer="{}">"#, record.layer);
        for defect in record.defects.iter() {
            let class = records.class(defect.class);
            let [x, y, w, h] = defect.bbox_mm.map(|v| v * scale);
            let _ = write!(
                svg,
                r#"<rect class="footprint" data-class="{}" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.3"><title>layer {} {}: {} {:.1} mm² at x {:.0} y {:.0} mm</title></rect>"#,
                escape(class),
                w.max(1.0),
                h.max(1.0),
                colour(class),
                record.layer,
                record.verdict.as_str(),
                escape(class),
                defect.area_mm2,
                defect.bbox_mm[0],
                defect.bbox_mm[1]
            );
        }
        svg.push_str("</g>");
    }
    for (position, class) in classes.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{}">■ {}</text>"#,
            4.0 + 118.0 * position as f64,
            height + 14.0,
            colour(class),
            escape(class)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The tracks of the build (the active ones and the last finished ones, newest first) and the
/// recoat outcomes, as an HTML fragment; recomputed from the journal's records.
pub fn tracks_html(records: &Layers, config: &Config) -> String {
    let mut history = BuildHistory::new(config);
    for record in records.iter() {
        history.add_restored(
            record.layer,
            record.verdict,
            &records.defect_records(record),
            record.recoat_outcome.as_str(),
            records.recoat_classes(record),
        );
    }
    let recoats = history.recoats;
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<p class="recoats">recoats: <span id="recoats-issued">{}</span> issued, <span id="recoats-fixed">{}</span> fixed, <span id="recoats-not-fixed">{}</span> not fixed</p>"#,
        recoats.issued, recoats.fixed, recoats.not_fixed
    );
    let mut tracks: Vec<(&crate::judge::tracks::Track, bool)> = history
        .tracker
        .active
        .iter()
        .map(|t| (t, true))
        .chain(history.tracker.finished.iter().map(|t| (t, false)))
        .collect();
    tracks.sort_by_key(|(t, _)| std::cmp::Reverse(t.id));
    html.push_str(
        r#"<table class="tracks"><thead><tr><th>track</th><th>class</th><th>layers</th><th>span</th><th>last area, mm²</th><th>growth, mm²/layer</th><th>survived recoats</th><th>footprint [x, y, w, h] mm</th><th>state</th></tr></thead><tbody>"#,
    );
    for (track, active) in tracks {
        let [x, y, w, h] = track.footprint.to_xywh();
        let _ = write!(
            html,
            r#"<tr class="track" data-class="{}"><td>#{}</td><td>{}</td><td>{}-{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>[{x:.0}, {y:.0}, {w:.0}, {h:.0}]</td><td>{}</td></tr>"#,
            escape(&track.class),
            track.id,
            escape(&track.class),
            track.first_layer,
            track.last_layer,
            track.layers(),
            track.last_area_mm2(),
            track
                .growth_mm2_per_layer()
                .map(|g| format!("{g:.1}"))
                .unwrap_or_else(|| "-".into()),
            track.survived_recoats,
            if active { "active" } else { "ended" }
        );
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::journal::{DefectRecord, LayerRecord};

    fn record(layer: u32, verdict: &str, x: f64, outcome: &str) -> LayerRecord {
        LayerRecord {
            layer,
            verdict: verdict.into(),
            defects: vec![DefectRecord {
                class: "streaking".into(),
                area_mm2: 40.0,
                bbox_mm: [x, 100.0, 200.0, 5.0],
                ..Default::default()
            }],
            recoat_outcome: outcome.into(),
            recoat_classes: if verdict == "RECOAT" {
                vec!["streaking".into()]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_map_has_one_group_per_inspection_in_bed_millimetres() {
        let records = Layers::from_records(&[record(1, "PASS", 10.0, ""), record(2, "PASS", 20.0, "")]);
        let svg = map_svg(&records, 250.0, 250.0, None);
        assert_eq!(svg.matches(r#"<g class="map-layer""#).count(), 2);
        // 480 units over 250 mm: x 20 mm -> 38.4, width 200 mm -> 384.
        assert!(svg.contains(r#"<g class="map-layer" data-layer="2"><rect class="footprint" data-class="streaking" x="38.4" y="192.0" width="384.0" height="9.6""#), "{svg}");
    }

    #[test]
    fn the_tracks_list_shows_the_track_and_the_recoats() {
        let records = Layers::from_records(&[
            record(1, "RECOAT", 10.0, ""),
            record(1, "PASS", 10.0, "not fixed"),
            record(2, "PASS", 12.0, ""),
        ]);
        let config = Config::parse("[bed]\nwidth_mm = 250\nheight_mm = 250\n", "test.toml").unwrap();
        let html = tracks_html(&records, &config);
        assert!(html.contains(r#"<span id="recoats-issued">1</span> issued, <span id="recoats-fixed">0</span> fixed, <span id="recoats-not-fixed">1</span> not fixed"#), "{html}");
        assert!(
            html.contains("<td>#1</td><td>streaking</td><td>1-2</td><td>2</td><td>40.0</td><td>-</td><td>1</td>"),
            "{html}"
        );
    }
}
