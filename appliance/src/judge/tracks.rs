//! Tracks: one defect followed across layers, and the rules on them (`rules.<class>.track`).
//!
//! A defect on layer L continues a track of its class when the track was last seen on layer
//! L - 1 (up to `tracks.max_gap_layers` layers earlier) or on layer L itself, and their
//! footprints (bounding boxes in bed millimetres) overlap by `tracks.min_iou`: as boxes, the
//! share of the smaller box inside the other against the share two boxes of one size have at
//! that IoU (`min_cover`: a defect growing fast in its place goes on); for a class in
//! `tracks.along_blade` (streaking), as spans along the blade (y) alone, since a streak at one
//! place of the blade may start anywhere along the travel, and the pieces of one streak on a
//! layer are one sighting.
//! "Layer L itself" is the re-spread of the same layer after a RECOAT: it is the same layer of
//! the part, so the re-spread's area replaces the first inspection's, the track does not get
//! longer, and a track whose defect is gone on the re-spread ends there (the recoat fixed it).
//! Matching is greedy by overlap: each track takes at most one defect per inspection.

use std::collections::VecDeque;

use hal::Verdict;
use serde::Serialize;

use crate::config::{Config, TracksConfig};
use crate::judge::decide::escalate_unfixable;
use crate::judge::defect_map::Footprint;
use crate::judge::reason::{Reason, RuleKind};

/// The most (layer, area) pairs a track keeps: its growth rate is over these.
pub const MAX_AREAS_PER_TRACK: usize = 32;

/// The share of the smaller of two boxes that must lie inside the other for them to be one
/// defect: what two boxes of one size share at an IoU of `min_iou` (I / A at I / (2A - I) =
/// min_iou). On boxes of one size it is the IoU test; unlike IoU it lets a defect that grows or
/// shrinks fast in its place go on (a box three times its last one, around it, has IoU 0.33).
pub fn min_cover(min_iou: f64) -> f64 {
    2.0 * min_iou / (1.0 + min_iou)
}

/// The most finished tracks kept for the summary and the dashboard (the journal has them all).
pub const MAX_FINISHED_TRACKS: usize = 256;

/// One defect followed across layers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Track {
    /// Numbered from 1 in the order tracks start, over the whole build.
    pub id: u32,
    pub class: String,
    pub first_layer: u32,
    pub last_layer: u32,
    /// The footprint on its last inspection.
    pub footprint: Footprint,
    /// Area per layer, oldest first, the last MAX_AREAS_PER_TRACK layers.
    pub areas_mm2: VecDeque<(u32, f64)>,
    /// How many re-spreads (RECOATs) of its layer the defect was still there after.
    pub survived_recoats: u32,
}

impl Track {
    /// Layers from first to last, both counted.
    pub fn layers(&self) -> u32 {
        self.last_layer - self.first_layer + 1
    }

    /// The least-squares slope of area over layer number (mm² per layer) of the kept areas;
    /// `None` before the track has three layers (two points give a slope of pure noise).
    pub fn growth_mm2_per_layer(&self) -> Option<f64> {
        let n = self.areas_mm2.len();
        if n < 3 {
            return None;
        }
        let mean_x = self.areas_mm2.iter().map(|&(l, _)| l as f64).sum::<f64>() / n as f64;
        let mean_y = self.areas_mm2.iter().map(|&(_, a)| a).sum::<f64>() / n as f64;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &(layer, area) in &self.areas_mm2 {
            let dx = layer as f64 - mean_x;
            sxy += dx * (area - mean_y);
            sxx += dx * dx;
        }
        Some(sxy / sxx)
    }

    /// The area on its last inspection.
    pub fn last_area_mm2(&self) -> f64 {
        self.areas_mm2.back().map(|&(_, a)| a).unwrap_or(0.0)
    }

    fn set_area(&mut self, layer: u32, area: f64) {
        match self.areas_mm2.back_mut() {
            Some(last) if last.0 == layer => last.1 = area,
            _ => {
                if self.areas_mm2.len() == MAX_AREAS_PER_TRACK {
                    self.areas_mm2.pop_front();
                }
                self.areas_mm2.push_back((layer, area));
            }
        }
    }
}

/// One defect of an inspection, as the tracker needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub class: String,
    pub area_mm2: f64,
    pub footprint: Footprint,
}

/// What one inspection did to the tracks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackUpdate {
    /// The ids of the tracks seen on this inspection (continued or new).
    pub seen: Vec<u32>,
    /// Of those, the ones seen again on a re-spread of a layer where they already were.
    pub after_recoat: Vec<u32>,
    /// Tracks ended by this inspection: gone on a re-spread (fixed by the recoat) or past the gap.
    pub ended: Vec<u32>,
}

/// The tracks of a build: the active ones (they can still go on) and the last finished ones.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: TracksConfig,
    pub active: Vec<Track>,
    pub finished: VecDeque<Track>,
    next_id: u32,
}

impl Tracker {
    pub fn new(settings: &TracksConfig) -> Tracker {
        Tracker {
            settings: settings.clone(),
            active: Vec::new(),
            finished: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Tracks started over the build.
    pub fn started(&self) -> u32 {
        self.next_id - 1
    }

    pub fn get(&self, id: u32) -> Option<&Track> {
        self.active.iter().find(|t| t.id == id)
    }

    /// The sightings with the pieces of one streak joined: sightings of a class matched along
    /// the blade whose spans along y overlap by `min_iou` are one defect of the blade, however
    /// the mask broke it along the travel (their boxes joined, their areas summed).
    fn join_along_blade(&self, sightings: &[Sighting]) -> Vec<Sighting> {
        let mut joined: Vec<Sighting> = Vec::with_capacity(sightings.len());
        for sighting in sightings {
            let same_line = self.settings.along_blade(&sighting.class).then(|| {
                joined.iter_mut().find(|j| {
                    j.class == sighting.class && j.footprint.iou_along_y(sighting.footprint) >= self.settings.min_iou
                })
            });
            match same_line.flatten() {
                Some(line) => {
                    line.footprint = line.footprint.union(sighting.footprint);
                    line.area_mm2 += sighting.area_mm2;
                }
                None => joined.push(sighting.clone()),
            }
        }
        joined
    }

    /// Adds one inspection of `layer`: `respread` when it is the same layer spread again after
    /// a RECOAT.
    pub fn observe(&mut self, layer: u32, respread: bool, sightings: &[Sighting]) -> TrackUpdate {
        let mut update = TrackUpdate::default();
        // Tracks past the gap end before matching; so do tracks on a later layer than this one
        // (the layer numbers started again: a new build in the same journal).
        let max_gap = self.settings.max_gap_layers;
        let (alive, gone): (Vec<Track>, Vec<Track>) = self
            .active
            .drain(..)
            .partition(|t| t.last_layer <= layer && layer - t.last_layer <= max_gap + 1);
        self.active = alive;
        for track in gone {
            update.ended.push(track.id);
            self.finish(track);
        }

        let sightings = &self.join_along_blade(sightings);
        // Every (IoU, track, sighting) pair of one class that matches, best IoU first.
        let mut pairs = Vec::new();
        for (t, track) in self.active.iter().enumerate() {
            for (s, sighting) in sightings.iter().enumerate() {
                if sighting.class == track.class {
                    let (a, b) = (track.footprint, sighting.footprint);
                    let (iou, matches) = if self.settings.along_blade(&track.class) {
                        let iou = a.iou_along_y(b);
                        (iou, iou >= self.settings.min_iou)
                    } else {
                        (a.iou(b), a.cover(b) >= min_cover(self.settings.min_iou))
                    };
                    if matches {
                        pairs.push((iou, t, s));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_taken = vec![false; self.active.len()];
        let mut sighting_taken = vec![false; sightings.len()];
        for (_, t, s) in pairs {
            if track_taken[t] || sighting_taken[s] {
                continue;
            }
            track_taken[t] = true;
            sighting_taken[s] = true;
            let track = &mut self.active[t];
            if respread && track.last_layer == layer {
                track.survived_recoats += 1;
                update.after_recoat.push(track.id);
            }
            track.last_layer = layer;
            track.footprint = sightings[s].footprint;
            track.set_area(layer, sightings[s].area_mm2);
            update.seen.push(track.id);
        }

        // On a re-spread, a track of this layer whose defect is gone was fixed by the recoat.
        if respread {
            let mut index = 0;
            while index < self.active.len() {
                if !track_taken.get(index).copied().unwrap_or(true) && self.active[index].last_layer == layer {
                    track_taken.remove(index);
                    let track = self.active.remove(index);
                    update.ended.push(track.id);
                    self.finish(track);
                } else {
                    index += 1;
                }
            }
        }

        for (sighting, taken) in sightings.iter().zip(sighting_taken) {
            if taken {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.active.push(Track {
                id,
                class: sighting.class.clone(),
                first_layer: layer,
                last_layer: layer,
                footprint: sighting.footprint,
                areas_mm2: VecDeque::from([(layer, sighting.area_mm2)]),
                survived_recoats: 0,
            });
            update.seen.push(id);
        }
        update
    }

    fn finish(&mut self, track: Track) {
        if self.finished.len() == MAX_FINISHED_TRACKS {
            self.finished.pop_front();
        }
        self.finished.push_back(track);
    }
}

/// A track rule that fired on an inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackHit {
    pub verdict: Verdict,
    pub reason: Reason,
}

/// The rules of `rules.<class>.track` on the tracks seen by one inspection, in class order then
/// track order; a rule that asks RECOAT for a class a recoat cannot fix gives PAUSE.
pub fn judge(config: &Config, class_names: &[String], tracker: &Tracker, update: &TrackUpdate) -> Vec<TrackHit> {
    let mut hits = Vec::new();
    for &id in &update.seen {
        let Some(track) = tracker.get(id) else {
            continue;
        };
        let Some(rule) = config.rules.get(&track.class).and_then(|r| r.track.as_ref()) else {
            continue;
        };
        let verdict = Verdict::parse(&rule.verdict).expect("checked at load");
        let class_index = class_names.iter().position(|c| *c == track.class).unwrap_or(0) as u8;
        let what = format!(
            "{} track #{} over layers {}-{}",
            track.class, track.id, track.first_layer, track.last_layer
        );
        let mut fired = Vec::new();
        if let Some(limit) = rule.max_layers {
            if track.layers() > limit {
                fired.push((
                    RuleKind::TrackLength,
                    format!("{what}: {} layers > {limit}", track.layers()),
                ));
            }
        }
        if let (Some(limit), Some(growth)) = (rule.max_growth_mm2_per_layer, track.growth_mm2_per_layer()) {
            if growth > limit {
                fired.push((
                    RuleKind::TrackGrowth,
                    format!("{what}: grows {growth:.2} mm²/layer > {limit:.2} mm²/layer"),
                ));
            }
        }
        if rule.after_recoat && update.after_recoat.contains(&id) {
            fired.push((
                RuleKind::TrackAfterRecoat,
                format!("{what}: still there after the RECOAT of layer {}", track.last_layer),
            ));
        }
        for (kind, mut text) in fired {
            text.push_str(&format!(" → {verdict}"));
            if let Some(message) = &rule.message {
                text.push_str(&format!(": {message}"));
            }
            let (verdict, kind) = escalate_unfixable(config, &track.class, verdict, kind, &mut text);
            hits.push(TrackHit {
                verdict,
                reason: Reason {
                    kind,
                    class_index,
                    class: track.class.clone(),
                    text,
                },
            });
        }
    }
    hits.sort_by_key(|hit| hit.reason.class_index);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::class_names as names;

    fn settings(min_iou: f64, max_gap_layers: u32) -> TracksConfig {
        TracksConfig {
            min_iou,
            max_gap_layers,
            cell_mm: 5.0,
            along_blade: None,
        }
    }

    fn sighting(class: &str, x0: f64, width: f64, area_mm2: f64) -> Sighting {
        Sighting {
            class: class.into(),
            area_mm2,
            footprint: Footprint {
                x0,
                y0: 10.0,
                x1: x0 + width,
                y1: 20.0,
            },
        }
    }

    #[test]
    fn growth_is_the_least_squares_slope_by_hand() {
        let mut tracker = Tracker::new(&settings(0.3, 0));
        // Areas 10, 14, 15, 21 on layers 1-4: mean x 2.5, mean y 15; sxy = -1.5*-5 + -0.5*-1 +
        // 0.5*0 + 1.5*6 = 17, sxx = 5; slope 3.4 mm²/layer.
        for (layer, area) in [(1, 10.0), (2, 14.0), (3, 15.0), (4, 21.0)] {
            let update = tracker.observe(layer, false, &[sighting("super-elevation", 0.0, 10.0, area)]);
            assert_eq!(update.seen, vec![1]);
            let growth = tracker.get(1).unwrap().growth_mm2_per_layer();
            assert_eq!(growth.is_some(), layer >= 3, "layer {layer}");
        }
        let track = tracker.get(1).unwrap();
        assert!((track.growth_mm2_per_layer().unwrap() - 3.4).abs() < 1e-12);
        assert_eq!((track.first_layer, track.last_layer, track.layers()), (1, 4, 4));
    }

    #[test]
    fn overlap_under_the_threshold_or_a_missed_layer_starts_a_new_track() {
        let mut tracker = Tracker::new(&settings(0.5, 0));
        tracker.observe(1, false, &[sighting("super-elevation", 0.0, 10.0, 5.0)]);
        // 0..10 vs 4..14 mm (same y): intersection 6, union 14, IoU 0.43 < 0.5: a new track.
        let update = tracker.observe(2, false, &[sighting("super-elevation", 4.0, 10.0, 5.0)]);
        assert_eq!(update.seen, vec![2]);
        // 4..14 vs 5..14: IoU 9/10 = 0.9: track 2 goes on.
        assert_eq!(
            tracker
                .observe(3, false, &[sighting("super-elevation", 5.0, 9.0, 5.0)])
                .seen,
            vec![2]
        );
        // Another class at the same place is its own track.
        assert_eq!(
            tracker.observe(4, false, &[sighting("hopping", 5.0, 9.0, 5.0)]).seen,
            vec![3]
        );
        // Layer 6 after nothing on layer 5: track 3 ended (no gap allowed), a new one starts.
        let update = tracker.observe(6, false, &[sighting("hopping", 5.0, 9.0, 5.0)]);
        assert_eq!(update.seen, vec![4]);
        assert!(update.ended.contains(&3), "{update:?}");
        assert_eq!(tracker.finished.iter().map(|t| t.id).collect::<Vec<_>>(), vec![1, 2, 3]);

        // Layer numbers that start again (a new build): the old tracks end.
        let update = tracker.observe(1, false, &[sighting("hopping", 5.0, 9.0, 5.0)]);
        assert_eq!((update.seen, update.ended), (vec![5], vec![4]));

        // With max_gap_layers = 1 the track survives one missed layer.
        let mut tracker = Tracker::new(&settings(0.5, 1));
        tracker.observe(1, false, &[sighting("hopping", 5.0, 9.0, 5.0)]);
        assert_eq!(
            tracker.observe(3, false, &[sighting("hopping", 5.0, 9.0, 6.0)]).seen,
            vec![1]
        );
        assert_eq!(tracker.get(1).unwrap().layers(), 3);
    }

    #[test]
    fn a_defect_growing_in_its_place_goes_on_though_its_boxes_iou_is_low() {
        // min_cover(0.3) = 0.6 / 1.3; min_cover(0.5) = 1 / 1.5.
        assert!((min_cover(0.3) - 0.461_538_461_538).abs() < 1e-9);
        assert!((min_cover(0.5) - 2.0 / 3.0).abs() < 1e-12);
        let square = |x0: f64, y0: f64, side: f64| Sighting {
            class: "super-elevation".into(),
            area_mm2: side * side / 2.0,
            footprint: Footprint {
                x0,
                y0,
                x1: x0 + side,
                y1: y0 + side,
            },
        };
        let mut tracker = Tracker::new(&settings(0.3, 0));
        tracker.observe(3, false, &[square(10.0, 10.0, 4.0)]);
        // 8..16 around 10..14: IoU 16 / 64 = 0.25, but the last box lies wholly inside (cover 1).
        assert_eq!(tracker.observe(4, false, &[square(8.0, 8.0, 8.0)]).seen, vec![1]);
        // 8..16 and 14..22 on x, the same y: 2 x 8 of 64 in common, cover 0.25 (IoU 0.14): a
        // new track.
        assert_eq!(tracker.observe(5, false, &[square(14.0, 8.0, 8.0)]).seen, vec![2]);
    }

    #[test]
    fn the_pieces_of_one_streak_on_a_layer_are_one_sighting() {
        let streak = |x0: f64, x1: f64, y0: f64, y1: f64, area_mm2: f64| Sighting {
            class: "streaking".into(),
            area_mm2,
            footprint: Footprint { x0, y0, x1, y1 },
        };
        let mut tracker = Tracker::new(&settings(0.3, 0));
        tracker.observe(1, false, &[streak(0.0, 200.0, 10.0, 12.0, 400.0)]);
        // The mask broke the streak in three along the travel, and a second streak sits at y 50.
        let update = tracker.observe(
            2,
            false,
            &[
                streak(0.0, 50.0, 10.0, 12.0, 100.0),
                streak(150.0, 200.0, 10.0, 11.8, 90.0),
                streak(20.0, 80.0, 50.0, 52.0, 120.0),
                streak(60.0, 100.0, 10.2, 12.0, 70.0),
            ],
        );
        assert_eq!(update.seen, vec![1, 2]);
        let track = tracker.get(1).unwrap();
        assert_eq!(track.areas_mm2, VecDeque::from([(1, 400.0), (2, 260.0)]));
        assert_eq!(
            track.footprint,
            Footprint {
                x0: 0.0,
                y0: 10.0,
                x1: 200.0,
                y1: 12.0
            }
        );
        assert_eq!(tracker.get(2).unwrap().footprint.y0, 50.0);
    }

    #[test]
    fn a_respread_replaces_the_area_and_a_fixed_defect_ends_its_track() {
        let mut tracker = Tracker::new(&settings(0.3, 0));
        tracker.observe(4, false, &[sighting("incompleteness", 0.0, 10.0, 50.0)]);
        tracker.observe(5, false, &[sighting("incompleteness", 0.0, 10.0, 60.0)]);
        // Layer 5 spread again: the defect is still there.
        let update = tracker.observe(5, true, &[sighting("incompleteness", 1.0, 10.0, 40.0)]);
        assert_eq!((update.seen.clone(), update.after_recoat.clone()), (vec![1], vec![1]));
        let track = tracker.get(1).unwrap();
        assert_eq!(track.areas_mm2, VecDeque::from([(4, 50.0), (5, 40.0)]));
        assert_eq!((track.layers(), track.survived_recoats), (2, 1));
        // Spread once more: gone, fixed; the track ends.
        let update = tracker.observe(5, true, &[]);
        assert_eq!(update.ended, vec![1]);
        assert!(tracker.active.is_empty());
    }

    #[test]
    fn each_track_takes_one_defect_the_best_overlap() {
        let mut tracker = Tracker::new(&settings(0.3, 0));
        tracker.observe(1, false, &[sighting("super-elevation", 0.0, 10.0, 5.0)]);
        let update = tracker.observe(
            2,
            false,
            &[
                sighting("super-elevation", 3.0, 10.0, 5.0),
                sighting("super-elevation", 1.0, 10.0, 5.0),
            ],
        );
        // The second sighting overlaps more (9/11 against 7/13): it continues track 1.
        assert_eq!(update.seen, vec![1, 2]);
        assert_eq!(tracker.get(1).unwrap().footprint.x0, 1.0);
        assert_eq!(tracker.get(2).unwrap().footprint.x0, 3.0);
    }

    #[test]
    fn areas_are_bounded() {
        let mut tracker = Tracker::new(&settings(0.3, 0));
        for layer in 1..=100 {
            tracker.observe(layer, false, &[sighting("streaking", 0.0, 10.0, layer as f64)]);
        }
        let track = tracker.get(1).unwrap();
        assert_eq!(track.areas_mm2.len(), MAX_AREAS_PER_TRACK);
        assert_eq!(track.areas_mm2.front(), Some(&(69, 69.0)));
        assert_eq!(
            (
                track.layers(),
                track.growth_mm2_per_layer().map(|g| (g * 1e9).round() / 1e9)
            ),
            (100, Some(1.0))
        );
    }

    fn config(rules: &str) -> Config {
        Config::parse(&format!("[bed]\nwidth_mm = 100\nheight_mm = 100\n{rules}"), "test.toml").unwrap()
    }

    #[test]
    fn track_rules_fire_past_their_limits_with_code_and_message() {
        let config = config(
            "[rules.streaking.track]\nmax_layers = 3\nverdict = \"REVIEW\"\nmessage = \"recoater blade damage suspected\"\n\
             [rules.super-elevation.track]\nmax_growth_mm2_per_layer = 3.0\nverdict = \"PAUSE\"\n",
        );
        let mut tracker = Tracker::new(&config.tracks);
        let mut verdicts = Vec::new();
        for (layer, area) in [(1, 10.0), (2, 14.0), (3, 15.0), (4, 21.0)] {
            let update = tracker.observe(
                layer,
                false,
                &[
                    sighting("streaking", 0.0, 10.0, 1.0),
                    sighting("super-elevation", 50.0, 10.0, area),
                ],
            );
            verdicts.push(judge(&config, &names(), &tracker, &update));
        }
        // Layer 3: super-elevation slope over 10, 14, 15 = 2.5 <= 3; streaking 3 layers, not > 3.
        assert!(verdicts[..3].iter().all(Vec::is_empty), "{verdicts:?}");
        // Layer 4: slope 3.4 > 3, and streaking 4 layers > 3.
        let hits = &verdicts[3];
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert_eq!((hits[0].verdict, hits[0].reason.code()), (Verdict::Pause, 0x0601));
        assert!(
            hits[0].reason.text.contains("grows 3.40 mm²/layer > 3.00 mm²/layer"),
            "{}",
            hits[0].reason.text
        );
        assert_eq!((hits[1].verdict, hits[1].reason.code()), (Verdict::Review, 0x0504));
        assert_eq!(
            hits[1].reason.text,
            "streaking track #1 over layers 1-4: 4 layers > 3 → REVIEW: recoater blade damage suspected"
        );
    }

    #[test]
    fn a_streak_at_one_place_of_the_blade_is_one_track_whichever_end_it_starts_from() {
        // docs/tracks.md: boxes [0, 58, 256, 5] and [206, 58, 50, 5] mm alternately (box IoU
        // 50 x 5 / 256 x 5 = 0.195 < 0.3); along the blade both span y 58..63: IoU 1.
        let config = config(
            "[rules.streaking.track]\nmax_layers = 5\nverdict = \"REVIEW\"\nmessage = \"recoater blade damage suspected\"\n",
        );
        let streak = |x0: f64, width: f64| Sighting {
            class: "streaking".into(),
            area_mm2: width * 5.0,
            footprint: Footprint {
                x0,
                y0: 58.0,
                x1: x0 + width,
                y1: 63.0,
            },
        };
        let mut tracker = Tracker::new(&config.tracks);
        let mut verdicts = Vec::new();
        for layer in 1..=10 {
            let sighting = if layer % 2 == 1 {
                streak(0.0, 256.0)
            } else {
                streak(206.0, 50.0)
            };
            let update = tracker.observe(layer, false, &[sighting]);
            assert_eq!(update.seen, vec![1], "layer {layer}");
            verdicts.push(judge(&config, &names(), &tracker, &update));
        }
        assert_eq!(tracker.get(1).unwrap().layers(), 10);
        assert!(verdicts[..5].iter().all(Vec::is_empty), "{verdicts:?}");
        for hits in &verdicts[5..] {
            assert_eq!((hits[0].verdict, hits[0].reason.code()), (Verdict::Review, 0x0504));
        }
        assert_eq!(
            verdicts[5][0].reason.text,
            "streaking track #1 over layers 1-6: 6 layers > 5 → REVIEW: recoater blade damage suspected"
        );
        // a streak at another place of the blade (y 70..75) is another track; and a class not
        // along the blade keeps box overlap (x 226..326 against 0..256: 30 of the smaller box's
        // 100 mm in common, cover 0.3 < min_cover(0.3); along the blade they would be one)
        let update = tracker.observe(
            11,
            false,
            &[Sighting {
                footprint: Footprint {
                    y0: 70.0,
                    y1: 75.0,
                    ..streak(0.0, 256.0).footprint
                },
                ..streak(0.0, 256.0)
            }],
        );
        assert_eq!(update.seen, vec![2]);
        let mut boxes = Tracker::new(&config.tracks);
        boxes.observe(1, false, &[sighting("super-elevation", 0.0, 256.0, 10.0)]);
        let update = boxes.observe(2, false, &[sighting("super-elevation", 226.0, 100.0, 10.0)]);
        assert_eq!(update.seen, vec![2]);
    }

    #[test]
    fn after_recoat_fires_only_on_the_respread() {
        let config = config("[rules.incompleteness.track]\nafter_recoat = true\nverdict = \"PAUSE\"\n");
        let mut tracker = Tracker::new(&config.tracks);
        let defect = [sighting("incompleteness", 0.0, 10.0, 80.0)];
        let update = tracker.observe(7, false, &defect);
        assert!(judge(&config, &names(), &tracker, &update).is_empty());
        let update = tracker.observe(7, true, &defect);
        let hits = judge(&config, &names(), &tracker, &update);
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].verdict, hits[0].reason.code(), hits[0].reason.rule().as_str()),
            (Verdict::Pause, 0x0702, "rules.incompleteness.track.after_recoat")
        );
    }
}
