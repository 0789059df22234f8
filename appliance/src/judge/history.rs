//! What `bedsight run` remembers of the build across layers: the defect map, the tracks and the
//! closed loop of recoats (which RECOAT is pending, whether each one fixed its layer). Fed one
//! inspection at a time by the control loop, and rebuilt from the journal at start, so a
//! restart mid-build carries on with the same tracks.

use hal::Verdict;

use crate::config::Config;
use crate::judge::defect_map::{DefectMap, Footprint};
use crate::judge::reason::Reason;
use crate::judge::tracks::{judge, Sighting, TrackHit, Tracker};
use crate::record::journal::{DefectRecord, LayerRecord};

/// A RECOAT sent and not yet re-inspected.
#[derive(Debug, Clone, PartialEq)]
struct PendingRecoat {
    layer: u32,
    /// The classes that asked for it.
    classes: Vec<String>,
}

/// How the recoats of the build went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoatCounts {
    pub issued: u32,
    pub fixed: u32,
    pub not_fixed: u32,
}

/// What the history adds to one inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The verdict after the track rules (the most severe of the layer's and theirs).
    pub verdict: Verdict,
    /// The rule that gave it (the layer's own reason when no track rule was more severe).
    pub reason: Option<Reason>,
    /// Every track rule that fired.
    pub hits: Vec<TrackHit>,
    /// On a re-spread after a RECOAT: whether the recoat fixed what it was sent for.
    pub recoat_fixed: Option<bool>,
}

pub struct BuildHistory {
    pub map: DefectMap,
    pub tracker: Tracker,
    pub recoats: RecoatCounts,
    /// The last inspection: its layer and verdict (a re-spread is the same layer after RECOAT).
    last: Option<(u32, Verdict)>,
    pending: Option<PendingRecoat>,
}

impl BuildHistory {
    pub fn new(config: &Config) -> BuildHistory {
        BuildHistory {
            map: DefectMap::new(config.bed.width_mm, config.bed.height_mm, config.tracks.cell_mm),
            tracker: Tracker::new(&config.tracks),
            recoats: RecoatCounts::default(),
            last: None,
            pending: None,
        }
    }

    /// The history of the layers in a journal, in order, without judging them again.
    pub fn restore(config: &Config, records: &[LayerRecord]) -> BuildHistory {
        let mut history = BuildHistory::new(config);
        for record in records {
            let verdict = Verdict::parse(&record.verdict).unwrap_or(Verdict::Fault);
            history.add_restored(
                record.layer,
                verdict,
                &record.defects,
                &record.recoat_outcome,
                record.recoat_classes.clone(),
            );
        }
        history
    }

    /// One journal record, in order, without judging it again (`recoat_outcome`: "fixed",
    /// "not fixed" or "").
    pub fn add_restored(
        &mut self,
        layer: u32,
        verdict: Verdict,
        defects: &[DefectRecord],
        recoat_outcome: &str,
        recoat_classes: Vec<String>,
    ) {
        if verdict != Verdict::Fault {
            self.observe(layer, defects);
        }
        match recoat_outcome {
            "fixed" => self.recoats.fixed += 1,
            "not fixed" => self.recoats.not_fixed += 1,
            _ => {}
        }
        self.record_verdict(layer, verdict, recoat_classes);
    }

    /// Whether an inspection of `layer` now is the re-spread of a layer that got RECOAT.
    pub fn is_respread(&self, layer: u32) -> bool {
        self.last == Some((layer, Verdict::Recoat))
    }

    /// Adds one inspection to the map and the tracks; returns what the tracks saw.
    fn observe(&mut self, layer: u32, defects: &[DefectRecord]) -> crate::judge::tracks::TrackUpdate {
        let respread = self.is_respread(layer);
        let sightings: Vec<Sighting> = defects
            .iter()
            .map(|d| Sighting {
                class: d.class.clone(),
                area_mm2: d.area_mm2,
                footprint: Footprint::from_xywh(d.bbox_mm),
            })
            .collect();
        for sighting in &sightings {
            self.map.add(layer, &sighting.class, sighting.footprint);
        }
        self.tracker.observe(layer, respread, &sightings)
    }

    /// One inspection of `layer` judged by the layer's rules (`verdict`, `reason`,
    /// `tripped_classes`): adds it, applies the track rules, and on a re-spread says whether
    /// the recoat fixed it (none of the classes that asked for it trips again).
    // Allowed: the arguments are the layer (number, defects) and the three parts of its
    // decision as `decide` returns them; a struct made only to carry them here would hide which
    // part each test sets.
    #[allow(clippy::too_many_arguments)]
    pub fn assess(
        &mut self,
        config: &Config,
        class_names: &[String],
        layer: u32,
        defects: &[DefectRecord],
        verdict: Verdict,
        reason: Option<Reason>,
        tripped_classes: &[String],
    ) -> Assessment {
        // A FAULT layer was not seen: it neither continues nor ends a track, and is not judged.
        if verdict == Verdict::Fault {
            return Assessment {
                verdict,
                reason,
                hits: Vec::new(),
                recoat_fixed: None,
            };
        }
        let update = self.observe(layer, defects);
        let hits = judge(config, class_names, &self.tracker, &update);
        let (mut verdict, mut reason) = (verdict, reason);
        for hit in &hits {
            if hit.verdict.severity() > verdict.severity() {
                verdict = hit.verdict;
                reason = Some(hit.reason.clone());
            }
        }
        let recoat_fixed = match &self.pending {
            Some(pending) if pending.layer == layer => {
                let again =
                    |class: &String| tripped_classes.contains(class) || hits.iter().any(|h| h.reason.class == *class);
                let fixed = !pending.classes.iter().any(again);
                if fixed {
                    self.recoats.fixed += 1;
                } else {
                    self.recoats.not_fixed += 1;
                }
                Some(fixed)
            }
            _ => None,
        };
        Assessment {
            verdict,
            reason,
            hits,
            recoat_fixed,
        }
    }

    /// The classes a RECOAT of this inspection is for: those whose layer rule tripped, and
    /// those of the track rules that asked for RECOAT.
    pub fn recoat_classes(tripped_classes: &[String], hits: &[TrackHit]) -> Vec<String> {
        let mut classes = tripped_classes.to_vec();
        for hit in hits.iter().filter(|h| h.verdict == Verdict::Recoat) {
            if !classes.contains(&hit.reason.class) {
                classes.push(hit.reason.class.clone());
            }
        }
        classes
    }

    /// The verdict the PLC was sent for `layer`; a RECOAT waits for its re-spread.
    pub fn record_verdict(&mut self, layer: u32, verdict: Verdict, recoat_classes: Vec<String>) {
        if verdict == Verdict::Recoat {
            self.recoats.issued += 1;
            self.pending = Some(PendingRecoat {
                layer,
                classes: recoat_classes,
            });
        } else if verdict != Verdict::Fault {
            self.pending = None;
        }
        // A FAULT leaves the pending recoat: the re-spread was not seen yet.
        if verdict != Verdict::Fault {
            self.last = Some((layer, verdict));
        }
    }

    /// One line for stdout: tracks, map and recoats.
    pub fn summary(&self) -> String {
        let cells: Vec<String> = self
            .map
            .occupied_cells()
            .into_iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect();
        format!(
            "tracks: {} started, {} active; map cells with defects: {}; recoats: {} issued, {} fixed, {} not fixed",
            self.tracker.started(),
            self.tracker.active.len(),
            if cells.is_empty() {
                "none".to_string()
            } else {
                cells.join(", ")
            },
            self.recoats.issued,
            self.recoats.fixed,
            self.recoats.not_fixed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[bed]\nwidth_mm = 100\nheight_mm = 100\n[rules.incompleteness]\nmax_count = 0\nverdict = \"RECOAT\"\n\
             [rules.incompleteness.track]\nafter_recoat = true\nverdict = \"PAUSE\"\n",
            "test.toml",
        )
        .unwrap()
    }

    fn names() -> Vec<String> {
        ["background", "super-elevation", "incompleteness"]
            .map(String::from)
            .to_vec()
    }

    fn hole(x: f64) -> DefectRecord {
        DefectRecord {
            class: "incompleteness".into(),
            area_mm2: 80.0,
            bbox: [0, 0, 1, 1],
            bbox_mm: [x, 10.0, 10.0, 10.0],
            centroid: [0.0, 0.0],
            mean_uncertainty: 0.0,
        }
    }

    #[test]
    fn a_recoat_that_fixes_and_one_that_does_not() {
        let config = config();
        let tripped = vec!["incompleteness".to_string()];
        let mut history = BuildHistory::new(&config);
        let first = history.assess(&config, &names(), 3, &[hole(20.0)], Verdict::Recoat, None, &tripped);
        assert_eq!((first.verdict, first.recoat_fixed), (Verdict::Recoat, None));
        history.record_verdict(3, Verdict::Recoat, tripped.clone());
        assert!(history.is_respread(3));
        // Re-spread: clean. Fixed, PASS.
        let again = history.assess(&config, &names(), 3, &[], Verdict::Pass, None, &[]);
        assert_eq!((again.verdict, again.recoat_fixed), (Verdict::Pass, Some(true)));
        history.record_verdict(3, Verdict::Pass, vec![]);

        // Layer 4: a hole, RECOAT; the re-spread has it at the same place: not fixed, PAUSE.
        history.assess(&config, &names(), 4, &[hole(50.0)], Verdict::Recoat, None, &tripped);
        history.record_verdict(4, Verdict::Recoat, tripped.clone());
        let again = history.assess(&config, &names(), 4, &[hole(51.0)], Verdict::Recoat, None, &tripped);
        assert_eq!((again.verdict, again.recoat_fixed), (Verdict::Pause, Some(false)));
        assert_eq!(again.reason.unwrap().rule(), "rules.incompleteness.track.after_recoat");
        history.record_verdict(4, Verdict::Pause, vec![]);
        assert_eq!(
            history.recoats,
            RecoatCounts {
                issued: 2,
                fixed: 1,
                not_fixed: 1
            }
        );
    }
}
