//! The checks that keep a frame from the model when it cannot be judged (docs/frame-checks.md):
//! black, over-exposed, frozen (the last judged layer's bed again), a camera that moved, a blurred
//! or fogged lens, and a bed that something covers. Each has its own name and PLC reason code;
//! the pipeline runs them in that order and stops at the first that fires. Everything per layer
//! is measured on buffers allocated at start.

use std::path::Path;

use anyhow::{bail, Context, Result};
use hal::Verdict;
use image::GrayImage;

use crate::config::{Config, FrameCheckConfig, OcclusionAction};
use crate::judge::reason::{Reason, RuleKind};

/// Which check kept a frame from the model: the low byte of its reason code (docs/plc.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// Not a check: a stage failed (the camera, the flat field, rectification, the model).
    Stage = 0,
    /// The frame is not a bed camera frame: pixel format, shape or size.
    Format = 1,
    Black = 2,
    OverExposed = 3,
    Frozen = 4,
    CameraMoved = 5,
    Blurred = 6,
    LowContrast = 7,
    Occluded = 8,
}

impl FrameCheck {
    pub const ALL: [FrameCheck; 9] = [
        FrameCheck::Stage,
        FrameCheck::Format,
        FrameCheck::Black,
        FrameCheck::OverExposed,
        FrameCheck::Frozen,
        FrameCheck::CameraMoved,
        FrameCheck::Blurred,
        FrameCheck::LowContrast,
        FrameCheck::Occluded,
    ];

    /// The check's name, as the journal, the dashboard and `/metrics` show it.
    pub fn name(self) -> &'static str {
        match self {
            FrameCheck::Stage => "stage",
            FrameCheck::Format => "format",
            FrameCheck::Black => "black",
            FrameCheck::OverExposed => "over_exposed",
            FrameCheck::Frozen => "frozen",
            FrameCheck::CameraMoved => "camera_moved",
            FrameCheck::Blurred => "blurred",
            FrameCheck::LowContrast => "low_contrast",
            FrameCheck::Occluded => "occluded",
        }
    }

    pub fn from_byte(byte: u8) -> Option<FrameCheck> {
        FrameCheck::ALL.into_iter().find(|check| *check as u8 == byte)
    }

    /// A check that says the camera itself is broken or out of place (`/healthz` reports it
    /// down), rather than one frame that could not be judged.
    pub fn camera_down(self) -> bool {
        matches!(self, FrameCheck::Frozen | FrameCheck::CameraMoved)
    }
}

/// Why a frame was not judged, and the verdict that gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Unjudged {
    pub check: FrameCheck,
    pub verdict: Verdict,
    pub text: String,
}

impl Unjudged {
    pub fn fault(check: FrameCheck, text: String) -> Unjudged {
        Unjudged {
            check,
            verdict: Verdict::Fault,
            text,
        }
    }

    fn review(check: FrameCheck, text: String) -> Unjudged {
        Unjudged {
            check,
            verdict: Verdict::Review,
            text,
        }
    }

    /// The reason the journal keeps and the PLC reads: kind FAULT or frame review, the check in
    /// the low byte.
    pub fn reason(&self) -> Reason {
        Reason {
            kind: match self.verdict {
                Verdict::Review => RuleKind::FrameReview,
                _ => RuleKind::Fault,
            },
            class_index: self.check as u8,
            class: String::new(),
            text: self.text.clone(),
        }
    }
}

/// Side of the grid of grain samples (frozen, sharpness and contrast), in samples.
const GRAIN_GRID: usize = 128;
/// Positions along each half of a bed edge whose profiles are averaged (the powder beside the
/// edge changes from layer to layer, the edge does not).
const EDGE_POSITIONS: usize = 32;
/// The stretch of an edge (as shares of its length from its first corner) that each half's
/// profile is averaged over: away from the corners (a corner belongs to two edges) and away from
/// the middle, so that a camera turned about the bed's centre moves the halves apart.
const EDGE_HALVES: [(f32, f32); 2] = [(0.05, 0.40), (0.60, 0.95)];
/// The bed's edges in corner order, for the reasons, and which half of each comes first.
const EDGE_NAMES: [&str; 4] = ["top", "right", "bottom", "left"];
const HALF_NAMES: [[&str; 2]; 4] = [
    ["left", "right"],
    ["upper", "lower"],
    ["right", "left"],
    ["lower", "upper"],
];
/// The border band's frame is shrunk to about this many pixels on its long side.
const BAND_LONG_SIDE: u32 = 160;
/// The band reaches this share of the bed's size outside its edges, and BAND_RIM_SHARE inside.
const BAND_SHARE: f64 = 0.08;
const BAND_RIM_SHARE: f64 = 0.02;
/// The farthest the band is searched, in band pixels (a sixteenth of the bed is about 9).
const MAX_BAND_SEARCH: i32 = 24;
/// The band's best shift counts where it matches the reference this well.
const MIN_BAND_MATCH: f64 = 0.3;
/// A bed edge counts as found where the profile matches the reference's this well (normalised
/// cross-correlation).
const MIN_EDGE_MATCH: f64 = 0.5;
/// A profile window counts where the frame reaches at least this share of it (an edge at the
/// frame's border is followed on its inner side).
const MIN_VALID_SHARE: f64 = 0.5;
/// A reference profile with less spread than this (grey levels) has no edge to follow: the
/// profiles average EDGE_POSITIONS pixels, so powder grain alone spreads them by a few levels.
const MIN_EDGE_SPREAD: f64 = 5.0;
/// Cells per side of the grid over the bed that glare is looked for in.
const GLARE_GRID: u32 = 16;
/// A column (or row) of the bed with at least this share of its pixels dark is covered; a run of
/// covered ones at least BAR_MIN_SHARE of the bed wide is a bar, unless it is in the outer
/// BAR_EDGE_SHARE of the bed.
const BAR_SHARE: f64 = 0.75;
const BAR_MIN_SHARE: f64 = 0.01;
const BAR_EDGE_SHARE: f64 = 0.03;

/// The grain of a frame: each sample is a pixel minus the mean of its 3x3 neighbourhood, on a
/// GRAIN_GRID x GRAIN_GRID grid over the middle half of the bed; and the pixels' mean and spread.
#[derive(Debug, Clone)]
struct Grain {
    residual: Vec<f32>,
    mean: f64,
    /// Mean |residual| / mean brightness: what blur and fog take away.
    sharpness: f64,
    /// Standard deviation / mean of the sampled pixels: what fog takes away.
    contrast: f64,
}

impl Grain {
    fn new() -> Grain {
        Grain {
            residual: vec![0.0; GRAIN_GRID * GRAIN_GRID],
            mean: 0.0,
            sharpness: 0.0,
            contrast: 0.0,
        }
    }

    /// Measures `frame` over `window` ([x0, y0, x1, y1], pixels, at least 3 wide).
    fn measure(&mut self, frame: &GrayImage, window: [u32; 4]) {
        let [x0, y0, x1, y1] = window;
        let at = |x: u32, y: u32| frame.get_pixel(x, y).0[0] as f32;
        let (mut sum, mut sum_sq, mut abs_residual) = (0.0f64, 0.0f64, 0.0f64);
        for row in 0..GRAIN_GRID {
            let y = y0 + 1 + ((y1 - y0 - 3) as usize * row / (GRAIN_GRID - 1)) as u32;
            for col in 0..GRAIN_GRID {
                let x = x0 + 1 + ((x1 - x0 - 3) as usize * col / (GRAIN_GRID - 1)) as u32;
                let mut neighbourhood = 0.0f32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        neighbourhood += at(x + dx - 1, y + dy - 1);
                    }
                }
                let value = at(x, y);
                let residual = value - neighbourhood / 9.0;
                self.residual[row * GRAIN_GRID + col] = residual;
                sum += value as f64;
                sum_sq += (value as f64) * (value as f64);
                abs_residual += residual.abs() as f64;
            }
        }
        let n = (GRAIN_GRID * GRAIN_GRID) as f64;
        self.mean = sum / n;
        let spread = (sum_sq / n - self.mean * self.mean).max(0.0).sqrt();
        let mean = self.mean.max(1.0);
        self.sharpness = abs_residual / n / mean;
        self.contrast = spread / mean;
    }
}

/// The brightness profiles across the bed's four edges (top, right, bottom, left: corner i to
/// corner i+1), each averaged along two halves of its edge (EDGE_HALVES); offsets are along each
/// edge's normal. Segment 2 i + h is half h of edge i.
#[derive(Debug, Clone)]
struct EdgeProfiles {
    /// How far the profiles reach either side of the edge, and how far a match may shift.
    reach: usize,
    search: usize,
    /// 8 x (2 reach + 1) values; NaN where the frame does not reach.
    values: Vec<f32>,
    /// Millimetres on the bed per camera pixel along each edge's normal.
    mm_per_px: [f64; 4],
}

impl EdgeProfiles {
    fn new(bed_px: [f64; 2], bed_mm: [f64; 2]) -> EdgeProfiles {
        // A knocked camera moves the bed by a few percent of the frame; search that far.
        let search = ((bed_px[0].min(bed_px[1]) / 16.0).round() as usize).max(8);
        let reach = search + search / 2;
        EdgeProfiles {
            reach,
            search,
            values: vec![f32::NAN; 8 * (2 * reach + 1)],
            // the top and bottom edges move across the bed's height, the sides across its width
            mm_per_px: [
                bed_mm[1] / bed_px[1],
                bed_mm[0] / bed_px[0],
                bed_mm[1] / bed_px[1],
                bed_mm[0] / bed_px[0],
            ],
        }
    }

    fn profile(&self, segment: usize) -> &[f32] {
        let len = 2 * self.reach + 1;
        &self.values[segment * len..(segment + 1) * len]
    }

    fn measure(&mut self, frame: &GrayImage, corners: [[f32; 2]; 4]) {
        let len = 2 * self.reach + 1;
        for segment in 0..8 {
            let edge = segment / 2;
            let (from, to) = EDGE_HALVES[segment % 2];
            let ([ax, ay], [bx, by]) = (corners[edge], corners[(edge + 1) % 4]);
            let (dx, dy) = (bx - ax, by - ay);
            let norm = dx.hypot(dy).max(1e-6);
            let (nx, ny) = (-dy / norm, dx / norm);
            for s in 0..len {
                let offset = s as f32 - self.reach as f32;
                let (mut sum, mut count) = (0.0f32, 0usize);
                for k in 0..EDGE_POSITIONS {
                    let t = from + (to - from) * k as f32 / (EDGE_POSITIONS - 1) as f32;
                    let (x, y) = (ax + t * dx + offset * nx, ay + t * dy + offset * ny);
                    if let Some(pixel) = image::imageops::interpolate_bilinear(frame, x, y) {
                        sum += pixel.0[0] as f32;
                        count += 1;
                    }
                }
                self.values[segment * len + s] = if count * 2 >= EDGE_POSITIONS {
                    sum / count as f32
                } else {
                    f32::NAN
                };
            }
        }
    }

    /// Whether the reference's segment has something to follow: a spread of brightness in the
    /// middle of its profile (the part a match compares), where the frame reaches.
    fn usable(&self, segment: usize) -> bool {
        let window = &self.profile(segment)[self.reach - self.search / 2..=self.reach + self.search / 2];
        let valid = || window.iter().filter(|v| !v.is_nan());
        let count = valid().count();
        if (count as f64) < MIN_VALID_SHARE * window.len() as f64 {
            return false;
        }
        let mean = valid().sum::<f32>() / count as f32;
        let spread = (valid().map(|v| (v - mean).powi(2)).sum::<f32>() / count as f32).sqrt();
        spread as f64 >= MIN_EDGE_SPREAD
    }

    /// The shift (camera pixels along the edge's normal) that best lays this frame's profile of
    /// `segment` on the reference's, and how well it fits (normalised cross-correlation over the
    /// samples both frames reach, at least MIN_VALID_SHARE of the window).
    fn best_shift(&self, reference: &EdgeProfiles, segment: usize) -> (i32, f64) {
        let half = self.search / 2;
        let window = &reference.profile(segment)[self.reach - half..=self.reach + half];
        let here = self.profile(segment);
        let mut best = (0i32, f64::MIN);
        for shift in -(self.search as i32)..=self.search as i32 {
            let start = (self.reach as i32 - half as i32 + shift) as usize;
            let score = correlation(window, &here[start..start + window.len()]);
            // the smaller shift wins a tie, so a flat profile reads as not moved
            if score > best.1 + 1e-9 || (score > best.1 - 1e-9 && shift.abs() < best.0.abs()) {
                best = (shift, score);
            }
        }
        best
    }
}

/// The bed's surroundings as the camera sees them, shrunk to about BAND_LONG_SIDE pixels: the
/// gradient magnitude in a band outside the bed's edges and a thin rim inside (the walls, bolts,
/// the bed's rim: what stays from layer to layer, where the powder's own defects are not), for
/// the shift of the whole view in any direction, along the edges too.
#[derive(Debug, Clone)]
struct BorderBand {
    /// Camera pixels per band pixel, and the band frame's size.
    scale: u32,
    size: (u32, u32),
    /// How far a match may shift, in band pixels.
    search: i32,
    /// The band's samples (x, y) in the shrunk frame, at least a pixel from its border.
    samples: Vec<(u16, u16)>,
    shrunk: Vec<f32>,
    gradient: Vec<f32>,
}

impl BorderBand {
    fn new(frame_size: (u32, u32), corners: [[f32; 2]; 4], bed_px: [f64; 2]) -> BorderBand {
        let scale = frame_size.0.max(frame_size.1).div_ceil(BAND_LONG_SIDE).max(1);
        let size = (frame_size.0 / scale, frame_size.1 / scale);
        let bed_small = bed_px[0].min(bed_px[1]) / scale as f64;
        let search = ((bed_small / 16.0).round() as i32).max(2);
        let outside = (BAND_SHARE * bed_small).max(2.0);
        let rim = (BAND_RIM_SHARE * bed_small).max(1.0);
        let small: Vec<[f64; 2]> = corners
            .iter()
            .map(|[x, y]| {
                [
                    (*x as f64 + 0.5) / scale as f64 - 0.5,
                    (*y as f64 + 0.5) / scale as f64 - 0.5,
                ]
            })
            .collect();
        let mut samples = Vec::new();
        for y in 1..size.1.saturating_sub(1) {
            for x in 1..size.0.saturating_sub(1) {
                let point = [x as f64, y as f64];
                let distance = (0..4)
                    .map(|i| segment_distance(point, small[i], small[(i + 1) % 4]))
                    .fold(f64::MAX, f64::min);
                let reach = if inside_quad(point, &small) { rim } else { outside };
                if distance <= reach {
                    samples.push((x as u16, y as u16));
                }
            }
        }
        let pixels = (size.0 * size.1) as usize;
        BorderBand {
            scale,
            size,
            search,
            samples,
            shrunk: vec![0.0; pixels],
            gradient: vec![0.0; pixels],
        }
    }

    fn measure(&mut self, frame: &GrayImage) {
        let (w, h) = (self.size.0 as usize, self.size.1 as usize);
        let s = self.scale as usize;
        let (raw, stride) = (frame.as_raw(), frame.width() as usize);
        self.shrunk.fill(0.0);
        for y in 0..h * s {
            let row = &raw[y * stride..y * stride + w * s];
            let out = &mut self.shrunk[(y / s) * w..(y / s + 1) * w];
            for (sum, block) in out.iter_mut().zip(row.chunks_exact(s)) {
                *sum += block.iter().map(|v| *v as u32).sum::<u32>() as f32;
            }
        }
        let area = (s * s) as f32;
        self.shrunk.iter_mut().for_each(|v| *v /= area);
        for y in 1..h.saturating_sub(1) {
            for x in 1..w.saturating_sub(1) {
                let at = |x: usize, y: usize| self.shrunk[y * w + x];
                self.gradient[y * w + x] = (at(x + 1, y) - at(x - 1, y)).abs() + (at(x, y + 1) - at(x, y - 1)).abs();
            }
        }
    }

    /// Normalised cross-correlation of the reference's band with this frame's shifted by (dx, dy)
    /// band pixels, over the samples whose shifted place is inside the frame; f64::MIN when fewer
    /// than MIN_VALID_SHARE of them are.
    fn score(&self, reference: &BorderBand, dx: i32, dy: i32) -> f64 {
        let (w, h) = (self.size.0 as i32, self.size.1 as i32);
        let (mut n, mut sa, mut sb, mut ab, mut aa, mut bb) = (0usize, 0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for &(x, y) in &self.samples {
            let (sx, sy) = (x as i32 + dx, y as i32 + dy);
            if sx < 1 || sy < 1 || sx > w - 2 || sy > h - 2 {
                continue;
            }
            let a = reference.gradient[y as usize * w as usize + x as usize] as f64;
            let b = self.gradient[sy as usize * w as usize + sx as usize] as f64;
            n += 1;
            sa += a;
            sb += b;
            ab += a * b;
            aa += a * a;
            bb += b * b;
        }
        if (n as f64) < MIN_VALID_SHARE * self.samples.len() as f64 {
            return f64::MIN;
        }
        let n = n as f64;
        let (va, vb) = (aa - sa * sa / n, bb - sb * sb / n);
        if va > 0.0 && vb > 0.0 {
            (ab - sa * sb / n) / (va * vb).sqrt()
        } else {
            0.0
        }
    }

    /// The shift (camera pixels, x and y) that best lays this frame's band on the reference's,
    /// and how well it fits: every other shift first (the shrunk gradients are smooth), then the
    /// best one's neighbours, then a parabola through the peak along each axis.
    fn best_shift(&self, reference: &BorderBand) -> ([f64; 2], f64) {
        let search = self.search.min(MAX_BAND_SEARCH);
        // NaN: not computed yet
        let mut scores = [[f64::NAN; 2 * MAX_BAND_SEARCH as usize + 1]; 2 * MAX_BAND_SEARCH as usize + 1];
        let mut at = |dx: i32, dy: i32| -> f64 {
            if dx.abs() > search || dy.abs() > search {
                return f64::MIN;
            }
            let slot = &mut scores[(dy + search) as usize][(dx + search) as usize];
            if slot.is_nan() {
                *slot = self.score(reference, dx, dy);
            }
            *slot
        };
        let better = |score: f64, dx: i32, dy: i32, best: (i32, i32, f64)| {
            score > best.2 + 1e-12 || (score > best.2 - 1e-12 && dx.abs() + dy.abs() < best.0.abs() + best.1.abs())
        };
        let mut best = (0i32, 0i32, f64::MIN);
        for dy in (-search..=search).step_by(2) {
            for dx in (-search..=search).step_by(2) {
                let score = at(dx, dy);
                if better(score, dx, dy, best) {
                    best = (dx, dy, score);
                }
            }
        }
        let coarse = best;
        for dy in coarse.1 - 1..=coarse.1 + 1 {
            for dx in coarse.0 - 1..=coarse.0 + 1 {
                let score = at(dx, dy);
                if better(score, dx, dy, best) {
                    best = (dx, dy, score);
                }
            }
        }
        let refine = |minus: f64, centre: f64, plus: f64| {
            let curvature = minus - 2.0 * centre + plus;
            if minus == f64::MIN || plus == f64::MIN || curvature >= 0.0 {
                0.0
            } else {
                (0.5 * (minus - plus) / curvature).clamp(-0.5, 0.5)
            }
        };
        let (left, right) = (at(best.0 - 1, best.1), at(best.0 + 1, best.1));
        let (up, down) = (at(best.0, best.1 - 1), at(best.0, best.1 + 1));
        let (sub_x, sub_y) = (refine(left, best.2, right), refine(up, best.2, down));
        let s = self.scale as f64;
        ([(best.0 as f64 + sub_x) * s, (best.1 as f64 + sub_y) * s], best.2)
    }
}

/// Whether `p` is inside the quadrilateral `q` (corners in order, either way round).
fn inside_quad(p: [f64; 2], q: &[[f64; 2]]) -> bool {
    let side = |a: [f64; 2], b: [f64; 2]| (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
    let signs: [bool; 4] = std::array::from_fn(|i| side(q[i], q[(i + 1) % 4]) >= 0.0);
    signs.iter().all(|s| *s) || signs.iter().all(|s| !*s)
}

/// Distance from point `p` to the segment from `a` to `b`.
fn segment_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let length2 = dx * dx + dy * dy;
    let t = if length2 > 0.0 {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / length2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p[0] - a[0] - t * dx).hypot(p[1] - a[1] - t * dy)
}

/// Pearson correlation of two equally long sample lists over the pairs where neither value is
/// NaN (0 when either is constant there); f64::MIN when fewer than MIN_VALID_SHARE of the pairs are.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (mut count, mut sa, mut sb) = (0usize, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        if !x.is_nan() && !y.is_nan() {
            count += 1;
            sa += *x as f64;
            sb += *y as f64;
        }
    }
    if (count as f64) < MIN_VALID_SHARE * n {
        return f64::MIN;
    }
    let (ma, mb) = (sa / count as f64, sb / count as f64);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        if !x.is_nan() && !y.is_nan() {
            let (x, y) = (*x as f64 - ma, *y as f64 - mb);
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
    }
    if aa <= 0.0 || bb <= 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Where the bed is in a frame: the profiles across its edges and its border band.
#[derive(Debug, Clone)]
struct BedView {
    edges: EdgeProfiles,
    band: BorderBand,
}

impl BedView {
    fn new(frame_size: (u32, u32), corners: [[f32; 2]; 4], bed_mm: [f64; 2]) -> BedView {
        let length = |i: usize| {
            let ([ax, ay], [bx, by]) = (corners[i], corners[(i + 1) % 4]);
            ((bx - ax) as f64).hypot((by - ay) as f64)
        };
        // the bed's width and height in camera pixels
        let bed_px = [0.5 * (length(0) + length(2)), 0.5 * (length(1) + length(3))];
        BedView {
            edges: EdgeProfiles::new(bed_px, bed_mm),
            band: BorderBand::new(frame_size, corners, bed_px),
        }
    }

    fn measure(&mut self, frame: &GrayImage, corners: [[f32; 2]; 4]) {
        self.edges.measure(frame, corners);
        self.band.measure(frame);
    }

    /// Names of the edge halves the reference can follow.
    fn usable_halves(&self) -> impl Iterator<Item = usize> + '_ {
        (0..8).filter(|segment| self.edges.usable(*segment))
    }
}

fn half_name(segment: usize) -> String {
    format!(
        "{} edge ({} half)",
        EDGE_NAMES[segment / 2],
        HALF_NAMES[segment / 2][segment % 2]
    )
}

/// What the commissioning frame says: its size, grain and where the bed is.
#[derive(Debug, Clone)]
struct Reference {
    origin: String,
    size: (u32, u32),
    sharpness: f64,
    contrast: f64,
    view: Option<BedView>,
}

/// The measured reference, for `bedsight calibrate --frame-reference` to print.
#[derive(Debug, Clone)]
pub struct ReferenceSummary {
    pub sharpness: f64,
    pub contrast: f64,
    /// The halves of the bed's edges that the camera check can follow (it needs 2); empty
    /// without bed corners.
    pub usable_edges: Vec<String>,
}

/// The frame checks of one pipeline, with what they remember between layers.
pub struct FrameChecker {
    limits: FrameCheckConfig,
    corners: Option<[[f32; 2]; 4]>,
    reference: Option<Reference>,
    grain: Grain,
    /// The grain of the last layer the model judged, and how many frames since were it again.
    last_judged: Grain,
    has_last_judged: bool,
    repeats: u32,
    /// This frame's view of the bed, measured into buffers made at start.
    view: Option<BedView>,
    /// Dark pixels per column and per row of the bed (sized on the first bed).
    columns: Vec<u32>,
    rows: Vec<u32>,
}

impl FrameChecker {
    /// The checks of `config`, with the reference it names read and measured.
    pub fn new(config: &Config) -> Result<FrameChecker> {
        let limits = config.frame_check.clone();
        let corners = config.bed.corners_px;
        let reference = match &limits.reference {
            Some(path) => Some(read_reference(
                path,
                corners,
                [config.bed.width_mm, config.bed.height_mm],
            )?),
            None => None,
        };
        if let (Some(reference), Some(_)) = (&reference, limits.camera_shift_mm(corners.is_some())) {
            let view = reference.view.as_ref().expect("measured with corners");
            let usable = view.usable_halves().count();
            if usable < 2 {
                bail!(
                    "frame_check.reference {}: only {usable} of the 8 halves of the bed's edges stand out from what is around them, \
                     and the camera check needs 2: set bed.corners_px on the bed's visible edges (bedsight calibrate shows them)",
                    reference.origin
                );
            }
        }
        let view = reference.as_ref().and_then(|r| r.view.clone());
        Ok(FrameChecker {
            limits,
            corners,
            reference,
            grain: Grain::new(),
            last_judged: Grain::new(),
            has_last_judged: false,
            repeats: 0,
            view,
            columns: Vec::new(),
            rows: Vec::new(),
        })
    }

    /// Measures a commissioning frame as `new` would read it (for `bedsight calibrate`).
    pub fn summarise_reference(frame: &GrayImage, config: &Config) -> ReferenceSummary {
        let corners = config.bed.corners_px;
        let reference = measure_reference(frame, "frame", corners, [config.bed.width_mm, config.bed.height_mm]);
        ReferenceSummary {
            sharpness: reference.sharpness,
            contrast: reference.contrast,
            usable_edges: match &reference.view {
                Some(view) => view.usable_halves().map(half_name).collect(),
                None => Vec::new(),
            },
        }
    }

    /// The checks on the grey camera frame, in order: black, over-exposed, frozen, camera moved,
    /// blurred, low contrast.
    pub fn check_camera_frame(&mut self, frame: &GrayImage) -> Result<(), Unjudged> {
        let limits = &self.limits;
        let (mean, saturated) = brightness(frame);
        if mean < limits.min_mean_brightness {
            return Err(Unjudged::fault(
                FrameCheck::Black,
                format!(
                    "black frame: mean brightness {mean:.1} < {:.1} (lights off, lens covered?)",
                    limits.min_mean_brightness
                ),
            ));
        }
        if saturated > limits.max_saturated_share {
            return Err(Unjudged::fault(
                FrameCheck::OverExposed,
                format!(
                    "over-exposed frame: {:.0}% of pixels saturated > {:.0}% (laser in view, exposure too long?)",
                    saturated * 100.0,
                    limits.max_saturated_share * 100.0
                ),
            ));
        }
        if let Some(reference) = &self.reference {
            if frame.dimensions() != reference.size {
                return Err(Unjudged::fault(
                    FrameCheck::Format,
                    format!(
                        "frame is {}x{} px, the frame reference {} is {}x{}: another camera or another mode",
                        frame.width(),
                        frame.height(),
                        reference.origin,
                        reference.size.0,
                        reference.size.1
                    ),
                ));
            }
        }
        if frame.width() < 8 || frame.height() < 8 {
            return Ok(());
        }
        self.grain.measure(frame, grain_window(frame, self.corners));
        self.check_frozen()?;
        self.check_camera_position(frame)?;
        self.check_sharpness()?;
        self.check_glare(frame)
    }

    fn check_frozen(&mut self) -> Result<(), Unjudged> {
        if self.limits.frozen_after == 0 || !self.has_last_judged {
            return Ok(());
        }
        let r = correlation(&self.grain.residual, &self.last_judged.residual);
        if r < self.limits.frozen_min_correlation {
            self.repeats = 0;
            return Ok(());
        }
        self.repeats += 1;
        if self.repeats < self.limits.frozen_after {
            return Ok(());
        }
        let what = if r > 0.999 {
            "the camera hands out its last frame again"
        } else {
            "the same bed with new sensor noise: no new layer was spread, or the camera repeats a stored picture"
        };
        Err(Unjudged::fault(
            FrameCheck::Frozen,
            format!(
                "frozen camera: the frame is the last judged layer's bed again ({} in a row; grain correlation {r:.2} >= {:.2}): {what}",
                self.repeats, self.limits.frozen_min_correlation
            ),
        ))
    }

    fn check_camera_position(&mut self, frame: &GrayImage) -> Result<(), Unjudged> {
        let (Some(limit), Some(corners), Some(reference)) = (
            self.limits.camera_shift_mm(self.corners.is_some()),
            self.corners,
            &self.reference,
        ) else {
            return Ok(());
        };
        let (Some(view), Some(reference_view)) = (&mut self.view, &reference.view) else {
            return Ok(());
        };
        view.measure(frame, corners);
        let moved = |what: String| {
            Unjudged::fault(
                FrameCheck::CameraMoved,
                format!(
                    "camera moved: {what} (limit {limit:.1} mm; reference {}); check the mount, then run bedsight calibrate again",
                    reference.origin
                ),
            )
        };
        // the whole border, in any direction
        let (shift_px, fit) = view.band.best_shift(&reference_view.band);
        let mm = [
            shift_px[0] * view.edges.mm_per_px[1],
            shift_px[1] * view.edges.mm_per_px[0],
        ];
        if fit >= MIN_BAND_MATCH && mm[0].hypot(mm[1]) > limit {
            return Err(moved(format!(
                "the bed's border is {:.1} mm from where it was (x {:+.1} mm, y {:+.1} mm)",
                mm[0].hypot(mm[1]),
                mm[0],
                mm[1]
            )));
        }
        // each half of each edge, across the edge: a turned or tilted camera moves them apart
        let (mut worst, mut usable, mut lost, mut first_lost) = ((0.0f64, 0usize), 0usize, 0usize, 0usize);
        for segment in 0..8 {
            if !reference_view.edges.usable(segment) {
                continue;
            }
            usable += 1;
            let (shift_px, fit) = view.edges.best_shift(&reference_view.edges, segment);
            if fit < MIN_EDGE_MATCH {
                if lost == 0 {
                    first_lost = segment;
                }
                lost += 1;
                continue;
            }
            let shift_mm = shift_px as f64 * view.edges.mm_per_px[segment / 2];
            if shift_mm.abs() > worst.0.abs() {
                worst = (shift_mm, segment);
            }
        }
        if worst.0.abs() > limit {
            return Err(moved(format!(
                "the bed's {} is {:.1} mm from where it was",
                half_name(worst.1),
                worst.0.abs()
            )));
        }
        if lost * 2 > usable {
            return Err(moved(format!(
                "{lost} of the {usable} halves of the bed's edges that the reference shows are not found near where they were, the {} among them",
                half_name(first_lost)
            )));
        }
        Ok(())
    }

    fn check_sharpness(&self) -> Result<(), Unjudged> {
        let Some(reference) = &self.reference else {
            return Ok(());
        };
        if let Some(ratio) = self.limits.sharpness_ratio() {
            let share = self.grain.sharpness / reference.sharpness.max(1e-9);
            if share < ratio {
                return Err(Unjudged::review(
                    FrameCheck::Blurred,
                    format!(
                        "blurred frame: the bed's fine detail is {:.0}% of the reference's (< {:.0}%): fogged or soiled lens, fumes, focus?",
                        share * 100.0,
                        ratio * 100.0
                    ),
                ));
            }
        }
        if let Some(ratio) = self.limits.contrast_ratio() {
            let share = self.grain.contrast / reference.contrast.max(1e-9);
            if share < ratio {
                return Err(Unjudged::review(
                    FrameCheck::LowContrast,
                    format!(
                        "low contrast: the bed's contrast is {:.0}% of the reference's (< {:.0}%): fog or fumes in the chamber, a veiled lens?",
                        share * 100.0,
                        ratio * 100.0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The check on the rectified bed (`bed`, `mm_per_px` along x and y): something dark across
    /// it (the recoater, an arm, a cable).
    pub fn check_bed(&mut self, bed: &GrayImage, mm_per_px: [f64; 2]) -> Result<(), Unjudged> {
        if self.limits.occlusion_action() == OcclusionAction::Off || bed.width() < 16 || bed.height() < 16 {
            return Ok(());
        }
        let Some((across, centre)) = dark_bar(bed, self.limits.occlusion_dark_ratio, &mut self.columns, &mut self.rows)
        else {
            return Ok(());
        };
        Err(self.occluded(if across {
            format!(
                "bed covered: a dark bar across the bed at x = {:.0} mm (the recoater, or something in the camera's view)",
                centre * mm_per_px[0]
            )
        } else {
            format!(
                "bed covered: a dark bar along the bed at y = {:.0} mm (something in the camera's view)",
                centre * mm_per_px[1]
            )
        }))
    }

    fn occluded(&self, text: String) -> Unjudged {
        match self.limits.occlusion_action() {
            OcclusionAction::Fault => Unjudged::fault(FrameCheck::Occluded, text),
            _ => Unjudged::review(FrameCheck::Occluded, text),
        }
    }

    /// Glare on the bed in the camera frame, before the flat field scales saturated pixels down.
    fn check_glare(&self, frame: &GrayImage) -> Result<(), Unjudged> {
        if self.limits.occlusion_action() == OcclusionAction::Off {
            return Ok(());
        }
        let Some((x, y, share)) = glare(frame, bed_box(frame, self.corners), self.limits.occlusion_glare_share) else {
            return Ok(());
        };
        Err(self.occluded(format!(
            "bed covered: glare at camera pixel ({x}, {y}), {:.0}% of that spot saturated (the laser plume, spatter or a reflection)",
            share * 100.0
        )))
    }

    /// The model judged this frame: it is the bed a later frame must not be again.
    pub fn judged(&mut self) {
        std::mem::swap(&mut self.last_judged, &mut self.grain);
        self.has_last_judged = true;
        self.repeats = 0;
    }
}

fn read_reference(path: &Path, corners: Option<[[f32; 2]; 4]>, bed_mm: [f64; 2]) -> Result<Reference> {
    let frame = image::open(path)
        .with_context(|| {
            format!(
                "frame_check.reference {}: cannot read it as an image; write it with `bedsight calibrate --frame-reference`",
                path.display()
            )
        })?
        .to_luma8();
    if frame.width() < 8 || frame.height() < 8 {
        bail!(
            "frame_check.reference {}: {}x{} px is not a camera frame",
            path.display(),
            frame.width(),
            frame.height()
        );
    }
    Ok(measure_reference(&frame, &path.display().to_string(), corners, bed_mm))
}

fn measure_reference(frame: &GrayImage, origin: &str, corners: Option<[[f32; 2]; 4]>, bed_mm: [f64; 2]) -> Reference {
    let mut grain = Grain::new();
    grain.measure(frame, grain_window(frame, corners));
    let view = corners.map(|corners| {
        let mut view = BedView::new(frame.dimensions(), corners, bed_mm);
        view.measure(frame, corners);
        view
    });
    Reference {
        origin: origin.to_string(),
        size: frame.dimensions(),
        sharpness: grain.sharpness,
        contrast: grain.contrast,
        view,
    }
}

/// The bed's bounding box in camera pixels ([x0, y0, x1, y1]; the frame without corners).
fn bed_box(frame: &GrayImage, corners: Option<[[f32; 2]; 4]>) -> [f32; 4] {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    match corners {
        Some(corners) => [
            corners.iter().map(|c| c[0]).fold(f32::MAX, f32::min).clamp(0.0, w),
            corners.iter().map(|c| c[1]).fold(f32::MAX, f32::min).clamp(0.0, h),
            corners.iter().map(|c| c[0]).fold(f32::MIN, f32::max).clamp(0.0, w),
            corners.iter().map(|c| c[1]).fold(f32::MIN, f32::max).clamp(0.0, h),
        ],
        None => [0.0, 0.0, w, h],
    }
}

/// The middle half of the bed's bounding box in camera pixels, kept inside the frame.
fn grain_window(frame: &GrayImage, corners: Option<[[f32; 2]; 4]>) -> [u32; 4] {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let [x0, y0, x1, y1] = bed_box(frame, corners);
    let (qx, qy) = ((x1 - x0) / 4.0, (y1 - y0) / 4.0);
    let clamp = |v: f32, max: f32| v.clamp(0.0, max) as u32;
    let window = [
        clamp(x0 + qx, w - 3.0),
        clamp(y0 + qy, h - 3.0),
        clamp(x1 - qx, w),
        clamp(y1 - qy, h),
    ];
    // at least 3 pixels each way, for the 3x3 neighbourhoods
    [
        window[0],
        window[1],
        window[2].max(window[0] + 3),
        window[3].max(window[1] + 3),
    ]
}

/// Mean brightness (0..255) and the share of saturated pixels, on a grid of at most ~64k samples.
fn brightness(frame: &GrayImage) -> (f64, f64) {
    let step = ((frame.width() as u64 * frame.height() as u64 / 65_536) as f64)
        .sqrt()
        .max(1.0) as usize;
    let (mut sum, mut saturated, mut count) = (0u64, 0u64, 0u64);
    for y in (0..frame.height()).step_by(step) {
        for x in (0..frame.width()).step_by(step) {
            let value = frame.get_pixel(x, y).0[0];
            sum += value as u64;
            saturated += (value >= 250) as u64;
            count += 1;
        }
    }
    (sum as f64 / count.max(1) as f64, saturated as f64 / count.max(1) as f64)
}

/// The saturated spot on the bed (camera pixels): the cell of a GLARE_GRID x GLARE_GRID grid
/// over `bed_box` with the largest share of saturated pixels, when it is over `glare_share`.
fn glare(frame: &GrayImage, bed_box: [f32; 4], glare_share: f64) -> Option<(u32, u32, f64)> {
    let [x0, y0, x1, y1] = bed_box.map(|v| v as u32);
    let (cell_w, cell_h) = ((x1 - x0) / GLARE_GRID, (y1 - y0) / GLARE_GRID);
    if cell_w == 0 || cell_h == 0 {
        return None;
    }
    let mut worst: Option<(u32, u32, f64)> = None;
    for row in 0..GLARE_GRID {
        for col in 0..GLARE_GRID {
            let (cx, cy) = (x0 + col * cell_w, y0 + row * cell_h);
            // every other pixel each way: glare comes in spots far larger than two pixels
            let (mut saturated, mut seen) = (0u32, 0u32);
            for y in (cy..cy + cell_h).step_by(2) {
                let row =
                    &frame.as_raw()[(y * frame.width() + cx) as usize..(y * frame.width() + cx + cell_w) as usize];
                for value in row.iter().step_by(2) {
                    saturated += (*value >= 250) as u32;
                    seen += 1;
                }
            }
            let share = saturated as f64 / seen.max(1) as f64;
            if share > glare_share && worst.is_none_or(|(_, _, s)| share > s) {
                worst = Some((cx + cell_w / 2, cy + cell_h / 2, share));
            }
        }
    }
    worst
}

/// A dark bar across the bed: a run of at least BAR_MIN_SHARE of the bed's columns (or rows), each
/// with at least BAR_SHARE of its pixels darker than `dark_ratio` of the bed's median, away
/// from the bed's outer BAR_EDGE_SHARE (where the wall and a parked recoater are). Returns
/// (across the travel: columns, the run's centre in pixels). `columns` and `rows` are buffers.
fn dark_bar(bed: &GrayImage, dark_ratio: f64, columns: &mut Vec<u32>, rows: &mut Vec<u32>) -> Option<(bool, f64)> {
    let (w, h) = (bed.width() as usize, bed.height() as usize);
    let mut histogram = [0u32; 256];
    for pixel in bed.pixels() {
        histogram[pixel.0[0] as usize] += 1;
    }
    let (mut below, mut median) = (0usize, 0usize);
    while median < 255 && (below + histogram[median] as usize) * 2 < w * h {
        below += histogram[median] as usize;
        median += 1;
    }
    let threshold = dark_ratio * median as f64;
    columns.clear();
    columns.resize(w, 0);
    rows.clear();
    rows.resize(h, 0);
    for (x, y, pixel) in bed.enumerate_pixels() {
        if (pixel.0[0] as f64) < threshold {
            columns[x as usize] += 1;
            rows[y as usize] += 1;
        }
    }
    let run = |counts: &[u32], length: usize| -> Option<f64> {
        let margin = (BAR_EDGE_SHARE * counts.len() as f64).ceil() as usize;
        let needed = (BAR_MIN_SHARE * counts.len() as f64).ceil().max(2.0) as usize;
        let mut start = None;
        for i in margin..=counts.len().saturating_sub(margin) {
            let dark = i < counts.len() - margin && counts[i] as f64 >= BAR_SHARE * length as f64;
            match (dark, start) {
                (true, None) => start = Some(i),
                (false, Some(first)) => {
                    if i - first >= needed {
                        return Some((first + i - 1) as f64 / 2.0 + 0.5);
                    }
                    start = None;
                }
                _ => {}
            }
        }
        None
    };
    if let Some(centre) = run(columns, h) {
        return Some((true, centre));
    }
    run(rows, w).map(|centre| (false, centre))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    /// A bed of grain: a fixed pseudo-random pattern around 120 (a fresh layer per seed).
    fn powder(width: u32, height: u32, seed: u64) -> GrayImage {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        GrayImage::from_fn(width, height, |_, _| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Luma([100 + (state >> 58) as u8])
        })
    }

    #[test]
    fn correlation_of_a_list_with_itself_its_negative_and_a_constant() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((correlation(&a, &a) - 1.0).abs() < 1e-12);
        assert!((correlation(&a, &[-1.0, -2.0, -3.0, -4.0]) + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&a, &[5.0; 4]), 0.0);
        // [1,2,3,4] against [1,3,2,4]: centred (-1.5,-0.5,0.5,1.5) . (-1.5,0.5,-0.5,1.5) = 4 over 5
        assert!((correlation(&a, &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn grain_of_a_checkerboard() {
        // 100 and 140 alternating: every 3x3 mean is (5x100+4x140)/9 or (4x100+5x140)/9, so each
        // residual is 100-117.78 or 140-122.22, |r| = 17.78 everywhere; mean 120, spread 20.
        let frame = GrayImage::from_fn(64, 64, |x, y| Luma([if (x + y) % 2 == 0 { 100 } else { 140 }]));
        let mut grain = Grain::new();
        grain.measure(&frame, [0, 0, 64, 64]);
        assert!(
            (grain.sharpness - (160.0 / 9.0) / grain.mean).abs() < 1e-3,
            "{}",
            grain.sharpness
        );
        assert!((grain.mean - 120.0).abs() < 1.0, "{}", grain.mean);
        assert!((grain.contrast - 20.0 / grain.mean).abs() < 0.01, "{}", grain.contrast);
    }

    #[test]
    fn brightness_of_a_half_saturated_frame() {
        let frame = GrayImage::from_fn(100, 100, |_, y| Luma([if y < 50 { 255 } else { 100 }]));
        let (mean, saturated) = brightness(&frame);
        assert!((mean - 177.5).abs() < 1e-9, "{mean}");
        assert!((saturated - 0.5).abs() < 1e-9, "{saturated}");
    }

    #[test]
    fn a_run_of_dark_columns_is_a_bar_and_a_patch_or_the_bed_edge_is_not() {
        let (mut columns, mut rows) = (Vec::new(), Vec::new());
        let bed = |dark: &dyn Fn(u32, u32) -> bool| {
            GrayImage::from_fn(100, 100, |x, y| Luma([if dark(x, y) { 10 } else { 120 }]))
        };
        // columns 40..=44 at 10 against a median of 120 (threshold 0.4 x 120 = 48): centre 42.5
        let bar = bed(&|x, _| (40..45).contains(&x));
        assert_eq!(dark_bar(&bar, 0.4, &mut columns, &mut rows), Some((true, 42.5)));
        // the same along a row
        let along = bed(&|_, y| (70..73).contains(&y));
        assert_eq!(dark_bar(&along, 0.4, &mut columns, &mut rows), Some((false, 71.5)));
        // dark over 60 % of the height (an uncovered patch) is not across the bed
        let patch = bed(&|x, y| (40..45).contains(&x) && y < 60);
        assert_eq!(dark_bar(&patch, 0.4, &mut columns, &mut rows), None);
        // one dark column is not wide enough (1 % of 100 columns, at least 2), and the outer 3 %
        // is the wall's
        assert_eq!(dark_bar(&bed(&|x, _| x == 50), 0.4, &mut columns, &mut rows), None);
        assert_eq!(dark_bar(&bed(&|x, _| x < 3), 0.4, &mut columns, &mut rows), None);
        // grey 50 is not darker than 48
        let grey = GrayImage::from_fn(100, 100, |x, _| Luma([if (40..45).contains(&x) { 50 } else { 120 }]));
        assert_eq!(dark_bar(&grey, 0.4, &mut columns, &mut rows), None);
    }

    #[test]
    fn the_most_saturated_cell_over_the_share_is_glare() {
        // 160 x 160 px, cells of 10 x 10: a saturated block on cell (5, 2), and 4 rows of cell (1, 1)
        let frame = GrayImage::from_fn(160, 160, |x, y| {
            let block = (50..60).contains(&x) && (20..30).contains(&y);
            let strip = (10..20).contains(&x) && (10..14).contains(&y);
            Luma([if block || strip { 255 } else { 120 }])
        });
        let whole = [0.0, 0.0, 160.0, 160.0];
        assert_eq!(glare(&frame, whole, 0.3), Some((55, 25, 1.0)));
        // the block alone is over 0.99 of its cell; the strip (0.4 of its cell) is what is over 0.3 elsewhere
        let strip_only = GrayImage::from_fn(160, 160, |x, y| {
            Luma([if (10..20).contains(&x) && (10..14).contains(&y) {
                255
            } else {
                120
            }])
        });
        assert_eq!(glare(&strip_only, whole, 0.3), Some((15, 15, 0.4)));
        assert_eq!(glare(&strip_only, whole, 0.5), None);
    }

    fn checker(config: &Config) -> FrameChecker {
        FrameChecker::new(config).unwrap()
    }

    #[test]
    fn the_same_frame_again_is_frozen_and_a_new_layer_is_not() {
        let config = Config::embedded();
        let mut checks = checker(&config);
        let first = powder(256, 256, 1);
        assert_eq!(checks.check_camera_frame(&first), Ok(()));
        checks.judged();
        assert_eq!(checks.check_camera_frame(&powder(256, 256, 2)), Ok(()));
        checks.judged();
        let again = powder(256, 256, 2);
        let fired = checks.check_camera_frame(&again).unwrap_err();
        assert_eq!((fired.check, fired.verdict), (FrameCheck::Frozen, Verdict::Fault));
        assert!(
            fired.text.contains("1 in a row; grain correlation 1.00"),
            "{}",
            fired.text
        );
        assert!(fired.text.contains("hands out its last frame again"), "{}", fired.text);
        // a frame that was not judged is not the bed to compare with: the next new layer passes
        assert_eq!(checks.check_camera_frame(&powder(256, 256, 3)), Ok(()));
    }

    /// A 200x200 camera frame: the chamber at grey 20 and a bed of powder (seed) at 40..160,
    /// moved `dx` pixels to the right.
    fn chamber(seed: u64, dx: i64) -> GrayImage {
        let mut frame = GrayImage::from_pixel(200, 200, Luma([20]));
        image::imageops::replace(&mut frame, &powder(120, 120, seed), 40 + dx, 40);
        frame
    }

    /// The embedded configuration with the chamber's bed (120 x 120 mm, about 1 mm per pixel)
    /// and `reference` as the commissioning frame.
    fn commissioned(reference: &GrayImage, dir: &Path) -> Config {
        let path = dir.join("reference.png");
        reference.save(&path).unwrap();
        let mut config = Config::embedded();
        config.bed.width_mm = 120.0;
        config.bed.height_mm = 120.0;
        config.bed.corners_px = Some([[40.0, 40.0], [159.0, 40.0], [159.0, 159.0], [40.0, 159.0]]);
        config.frame_check.reference = Some(path);
        config
    }

    #[test]
    fn a_bed_moved_by_five_pixels_is_a_camera_that_moved_five_millimetres() {
        let dir = tempfile::tempdir().unwrap();
        let mut checks = checker(&commissioned(&chamber(1, 0), dir.path()));
        // a new layer where the reference had its bed, and one pixel off: within 2 mm
        assert_eq!(checks.check_camera_frame(&chamber(2, 0)), Ok(()));
        assert_eq!(checks.check_camera_frame(&chamber(3, 1)), Ok(()));
        let fired = checks.check_camera_frame(&chamber(4, 5)).unwrap_err();
        assert_eq!((fired.check, fired.verdict), (FrameCheck::CameraMoved, Verdict::Fault));
        // 5 px x 120 mm / 119 px = 5.04 mm along x, found on the border band (2 camera px per
        // band px, the peak refined on a parabola)
        let moved: f64 = fired
            .text
            .split("the bed's border is ")
            .nth(1)
            .and_then(|rest| rest.split(" mm").next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("{}", fired.text));
        assert!((moved - 5.04).abs() < 1.0, "{}", fired.text);
        assert!(fired.text.contains("y +0.0 mm"), "{}", fired.text);
    }

    #[test]
    fn a_blurred_bed_and_a_fogged_one_are_review_against_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let mut checks = checker(&commissioned(&chamber(1, 0), dir.path()));
        let blurred = image::imageops::blur(&chamber(2, 0), 1.5);
        let fired = checks.check_camera_frame(&blurred).unwrap_err();
        assert_eq!(
            (fired.check, fired.verdict),
            (FrameCheck::Blurred, Verdict::Review),
            "{}",
            fired.text
        );
        // a veil: half the powder's variation on a brighter level keeps the fine detail's shape
        // but halves both ratios to the brightness, and more
        let clear = chamber(3, 0);
        let fogged = GrayImage::from_fn(200, 200, |x, y| Luma([clear.get_pixel(x, y).0[0] / 2 + 100]));
        let fired = checks.check_camera_frame(&fogged).unwrap_err();
        assert!(
            matches!(fired.check, FrameCheck::Blurred | FrameCheck::LowContrast),
            "{fired:?}"
        );
        assert_eq!(fired.verdict, Verdict::Review);
        assert_eq!(checks.check_camera_frame(&chamber(4, 0)), Ok(()));
    }

    #[test]
    fn a_reference_of_another_size_is_a_format_fault_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let mut checks = checker(&commissioned(&chamber(1, 0), dir.path()));
        let fired = checks.check_camera_frame(&powder(100, 100, 2)).unwrap_err();
        assert_eq!(fired.check, FrameCheck::Format);
        assert!(
            fired.text.contains("frame is 100x100 px, the frame reference"),
            "{}",
            fired.text
        );
        assert!(fired.text.contains("is 200x200"), "{}", fired.text);
    }

    #[test]
    fn a_reference_without_bed_edges_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        // powder to the frame's edges: nothing but grain where the corners say the edges are
        let config = commissioned(&powder(200, 200, 1), dir.path());
        let message = format!("{:#}", FrameChecker::new(&config).err().unwrap());
        assert!(
            message.contains("only 0 of the 8 halves of the bed's edges stand out"),
            "{message}"
        );
    }

    #[test]
    fn a_dark_bar_on_the_bed_is_review_with_its_place() {
        let config = Config::embedded();
        let mut checks = checker(&config);
        let mut bed = powder(256, 256, 1);
        assert_eq!(checks.check_bed(&bed, [1.0, 1.0]), Ok(()));
        for y in 0..256 {
            for x in 100..120 {
                bed.put_pixel(x, y, Luma([10]));
            }
        }
        let fired = checks.check_bed(&bed, [1.0, 1.0]).unwrap_err();
        assert_eq!((fired.check, fired.verdict), (FrameCheck::Occluded, Verdict::Review));
        // columns 100..=119 dark: the bar's centre is at 110 px, 1 mm per pixel
        assert!(
            fired.text.contains("dark bar across the bed at x = 110 mm"),
            "{}",
            fired.text
        );
    }
}
