//! The whole build in the little the dashboard's views need: one compact entry per journal
//! record (layer, verdict, uncertainty, each defect's class, area and boxes, the recoat
//! outcome), with the class names kept once. A full `LayerRecord` is about 1 KB of strings;
//! an entry is about 60 bytes plus 64 per defect, so a long build stays small in memory.

use hal::plc::Verdict;

use crate::record::journal::{DefectRecord, LayerRecord};

/// One defect of a layer, as the chart, the stacked view, the map and the tracks use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Defect {
    /// Index into `Layers::classes`.
    pub class: u16,
    pub area_mm2: f64,
    /// Rectified-bed pixels [x, y, w, h] (the stacked view).
    pub bbox: [u32; 4],
    /// Bed millimetres [x, y, w, h] (the map and the tracks; f64 as in the journal, so the
    /// live tracks match `bedsight report`'s exactly).
    pub bbox_mm: [f64; 4],
}

/// What became of a RECOAT, told on the re-spread's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoatOutcome {
    None,
    Fixed,
    NotFixed,
}

impl RecoatOutcome {
    fn parse(word: &str) -> RecoatOutcome {
        match word {
            "fixed" => RecoatOutcome::Fixed,
            "not fixed" => RecoatOutcome::NotFixed,
            _ => RecoatOutcome::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecoatOutcome::None => "",
            RecoatOutcome::Fixed => "fixed",
            RecoatOutcome::NotFixed => "not fixed",
        }
    }
}

/// One journal record, compact.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub layer: u32,
    pub verdict: Verdict,
    pub recoat_outcome: RecoatOutcome,
    pub time_ms: u64,
    pub uncertainty: f64,
    pub defects: Box<[Defect]>,
    /// The classes that asked for a RECOAT (indices into `Layers::classes`).
    pub recoat_classes: Box<[u16]>,
}

impl Layer {
    /// Heap bytes this entry holds beyond its own size.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.defects) + std::mem::size_of_val(&*self.recoat_classes)
    }
}

/// The build's compact entries, in journal order, and the class names they index.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    entries: Vec<Layer>,
    classes: Vec<String>,
}

impl Layers {
    pub fn from_records(records: &[LayerRecord]) -> Layers {
        let mut layers = Layers::default();
        for record in records {
            layers.push(record);
        }
        layers
    }

    /// Adds a record's entry. A verdict word that is not one (only a foreign journal has one)
    /// shows as FAULT, as the tracks already treat it.
    pub fn push(&mut self, record: &LayerRecord) {
        let defects = record
            .defects
            .iter()
            .map(|d| Defect {
                class: self.class_index(&d.class),
                area_mm2: d.area_mm2,
                bbox: d.bbox,
                bbox_mm: d.bbox_mm,
            })
            .collect();
        let recoat_classes = record.recoat_classes.iter().map(|c| self.class_index(c)).collect();
        self.entries.push(Layer {
            layer: record.layer,
            verdict: Verdict::parse(&record.verdict).unwrap_or(Verdict::Fault),
            recoat_outcome: RecoatOutcome::parse(&record.recoat_outcome),
            time_ms: record.time_ms,
            uncertainty: record.uncertainty_score,
            defects,
            recoat_classes,
        });
    }

    fn class_index(&mut self, class: &str) -> u16 {
        match self.classes.iter().position(|c| c == class) {
            Some(index) => index as u16,
            None => {
                // A model has a handful of classes; past u16 (only a forged journal) the last
                // name stands for the rest rather than growing without bound.
                if self.classes.len() <= u16::MAX as usize {
                    self.classes.push(class.to_string());
                }
                (self.classes.len() - 1) as u16
            }
        }
    }

    pub fn class(&self, index: u16) -> &str {
        &self.classes[index as usize]
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Layer> {
        self.entries.get(index)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Layer> {
        self.entries.iter()
    }

    /// Defect area per class of an entry, mm², classes in first-seen order.
    pub fn class_areas(&self, layer: &Layer) -> Vec<(String, f64)> {
        let mut areas: Vec<(String, f64)> = Vec::new();
        for defect in layer.defects.iter() {
            let class = self.class(defect.class);
            match areas.iter_mut().find(|(c, _)| c == class) {
                Some(entry) => entry.1 += defect.area_mm2,
                None => areas.push((class.to_string(), defect.area_mm2)),
            }
        }
        areas
    }

    /// An entry's defects as journal defects (the fields the tracks read), for one layer at a time.
    pub fn defect_records(&self, layer: &Layer) -> Vec<DefectRecord> {
        layer
            .defects
            .iter()
            .map(|d| DefectRecord {
                class: self.class(d.class).to_string(),
                area_mm2: d.area_mm2,
                bbox: d.bbox,
                bbox_mm: d.bbox_mm,
                ..Default::default()
            })
            .collect()
    }

    pub fn recoat_classes(&self, layer: &Layer) -> Vec<String> {
        layer
            .recoat_classes
            .iter()
            .map(|&c| self.class(c).to_string())
            .collect()
    }
}

impl<'a> IntoIterator for &'a Layers {
    type Item = &'a Layer;
    type IntoIter = std::slice::Iter<'a, Layer>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_what_the_views_read_and_is_small() {
        let record = LayerRecord {
            layer: 7,
            time_ms: 1234,
            trigger: "timer".into(),
            verdict: "RECOAT".into(),
            defects: vec![
                DefectRecord {
                    class: "streaking".into(),
                    area_mm2: 40.0,
                    bbox: [1, 2, 3, 4],
                    bbox_mm: [10.0, 20.0, 30.0, 5.0],
                    ..Default::default()
                },
                DefectRecord {
                    class: "hopping".into(),
                    area_mm2: 2.5,
                    bbox: [5, 6, 7, 8],
                    bbox_mm: [1.0, 2.0, 3.0, 4.0],
                    ..Default::default()
                },
            ],
            uncertainty_score: 0.125,
            model: "bedsight-seg".into(),
            model_version: "3".into(),
            backend: "tract".into(),
            rule: "streaking area".into(),
            reason: "streaking covers 40.0 mm², over the 30 mm² limit".into(),
            recoat_outcome: "not fixed".into(),
            recoat_classes: vec!["streaking".into()],
            ..Default::default()
        };
        let layers = Layers::from_records(&[record.clone(), record.clone()]);
        let entry = layers.get(1).unwrap();
        assert_eq!(
            (entry.layer, entry.verdict, entry.time_ms, entry.uncertainty),
            (7, Verdict::Recoat, 1234, 0.125)
        );
        assert_eq!(entry.recoat_outcome.as_str(), "not fixed");
        assert_eq!(layers.recoat_classes(entry), vec!["streaking".to_string()]);
        assert_eq!(
            layers.defect_records(entry)[1],
            DefectRecord {
                class: "hopping".into(),
                area_mm2: 2.5,
                bbox: [5, 6, 7, 8],
                bbox_mm: [1.0, 2.0, 3.0, 4.0],
                ..Default::default()
            }
        );
        assert_eq!(
            layers.class_areas(entry),
            vec![("streaking".to_string(), 40.0), ("hopping".to_string(), 2.5)]
        );
        // Class names are kept once for the build, not per defect.
        assert_eq!(layers.classes.len(), 2);
        // 2 defects: 64 bytes of entry + 2 x 64 of defects + 2 of recoat class, well under the
        // ~1 KB of the record it stands for.
        let bytes = std::mem::size_of::<Layer>() + entry.heap_bytes();
        assert!(std::mem::size_of::<Layer>() <= 64, "{}", std::mem::size_of::<Layer>());
        assert!(bytes <= 200, "{bytes} bytes");
    }
}
