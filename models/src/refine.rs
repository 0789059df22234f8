//! Uncertainty-driven refinement of the mask (seed 000, Algorithm 2, Eq. 22-23).

use serde::{Deserialize, Serialize};

use crate::components::Labeller;
use crate::fuse::Fused;
use crate::spec::MAX_CLASSES;

/// What [`refine`] did to a mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefineReport {
    /// High-uncertainty regions that were relabelled (their class is in `apply_to_classes`).
    pub regions: usize,
    /// Mask pixels whose class changed.
    pub pixels_changed: usize,
    /// All high-uncertainty regions found, relabelled or not.
    pub regions_found: usize,
}

/// The threshold offset added to the mean of the four corners (seed 000, Eq. 23).
pub const CORNER_THRESHOLD_OFFSET: f32 = 0.05;

/// Relabels high-uncertainty regions of `fused.mask` (seed 000, Algorithm 2).
///
/// 1. Normalise the uncertainty map: `ū = (u − u_min) / (u_max − u_min)` (Eq. 22).
/// 2. Threshold `δ = (ū(0,0) + ū(W−1,0) + ū(0,H−1) + ū(W−1,H−1)) / 4 + 0.05` (Eq. 23); the
///    high-uncertainty set is `u_HU = {ū > δ}`.
/// 3. Split `u_HU` into connected regions (8-connectivity) and take each region's circumscribing
///    rectangle `b_k`.
/// 4. `C_k` = the most frequent class other than background (0) of the mask inside `b_k`
///    (ties go to the lower class index; a rectangle holding only background gives no class).
/// 5. If `C_k` is one of `apply_to_classes`, set the mask pixels of the region `u_HU^k` to `C_k`
///    (`u_HU^k ∩ y_pred ← C_k`). The paper applies it to lattice only; which classes it applies
///    to is configuration.
///
/// Only `mask` changes; the probability, uncertainty and confidence maps stay the model's.
/// When `u_max == u_min` (no variation, e.g. one ensemble member) nothing changes.
/// [`refine_with`] with buffers of its own.
pub fn refine(fused: &mut Fused, apply_to_classes: &[u8]) -> RefineReport {
    refine_with(fused, apply_to_classes, &mut RefineBuffers::default())
}

/// Buffers that [`refine_with`] keeps between layers: the region labelling, each region's
/// rectangle and class.
#[derive(Clone, Debug, Default)]
pub struct RefineBuffers {
    /// Per pixel: 1 where `ū > δ` (the set `u_HU`), else 0.
    high_uncertainty: Vec<u8>,
    labeller: Labeller,
    rectangles: Vec<[u32; 4]>,
    region_class: Vec<Option<u8>>,
}

/// Regions [`RefineBuffers::for_pixels`] makes room for up front; a layer with more grows the
/// buffers once.
pub const RESERVED_REGIONS: usize = 1 << 16;

impl RefineBuffers {
    /// Buffers for a map of `pixels` pixels, allocated now rather than on the first layers.
    pub fn for_pixels(pixels: usize) -> RefineBuffers {
        let regions = pixels.min(RESERVED_REGIONS);
        RefineBuffers {
            high_uncertainty: Vec::with_capacity(pixels),
            labeller: Labeller::with_capacity(pixels),
            rectangles: Vec::with_capacity(regions),
            region_class: Vec::with_capacity(regions),
        }
    }
}

/// [`refine`] in the buffers of `buffers`: once they have grown to a layer's size, refining
/// another allocates nothing.
pub fn refine_with(fused: &mut Fused, apply_to_classes: &[u8], buffers: &mut RefineBuffers) -> RefineReport {
    let (width, height) = (fused.width, fused.height);
    let mut report = RefineReport::default();
    if width == 0 || height == 0 || apply_to_classes.is_empty() {
        return report;
    }
    let uncertainty = &fused.uncertainty;
    let (u_min, u_max) = uncertainty
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &u| {
            (lo.min(u), hi.max(u))
        });
    let range = u_max - u_min;
    if !range.is_finite() || range <= 0.0 {
        return report;
    }
    // seed 000, Eq. 22
    let normalised = |index: usize| (uncertainty[index] - u_min) / range;
    // seed 000, Eq. 23: the four corners are the most accessible background.
    let corners = [0, width - 1, (height - 1) * width, (height - 1) * width + width - 1];
    let delta = corners.iter().map(|&i| normalised(i)).sum::<f32>() / 4.0 + CORNER_THRESHOLD_OFFSET;

    // u_HU = {ū > δ}, decided once per pixel (the labelling looks at each pixel up to 5 times).
    let high_uncertainty = &mut buffers.high_uncertainty;
    high_uncertainty.clear();
    high_uncertainty.extend(uncertainty.iter().map(|&u| u8::from((u - u_min) / range > delta)));
    let region_count = buffers
        .labeller
        .label(width, height, |index| u16::from(high_uncertainty[index])) as usize;
    report.regions_found = region_count;
    if region_count == 0 {
        return report;
    }

    // Circumscribing rectangle b_k of each region: [x_min, y_min, x_max, y_max], inclusive.
    let rectangles = &mut buffers.rectangles;
    rectangles.clear();
    rectangles.resize(region_count, [u32::MAX, u32::MAX, 0u32, 0u32]);
    // Row by row, a run of pixels with one label widens its rectangle once.
    for (y, row) in buffers.labeller.labels.chunks_exact(width).enumerate() {
        let mut x = 0;
        while x < width {
            let label = row[x];
            let run_end = x + row[x..].iter().take_while(|&&other| other == label).count();
            if label != 0 {
                let rectangle = &mut rectangles[label as usize - 1];
                rectangle[0] = rectangle[0].min(x as u32);
                rectangle[1] = rectangle[1].min(y as u32);
                rectangle[2] = rectangle[2].max(run_end as u32 - 1);
                rectangle[3] = rectangle[3].max(y as u32);
            }
            x = run_end;
        }
    }

    let region_class = &mut buffers.region_class;
    region_class.clear();
    region_class.resize(region_count, None);
    let mut counts = [0u32; MAX_CLASSES];
    for (rectangle, class) in rectangles.iter().zip(region_class.iter_mut()) {
        counts.fill(0);
        for y in rectangle[1]..=rectangle[3] {
            let row = &fused.mask[y as usize * width..(y as usize + 1) * width];
            for &c in &row[rectangle[0] as usize..=rectangle[2] as usize] {
                counts[c as usize] += 1;
            }
        }
        let mut best: Option<(u8, u32)> = None;
        for (c, &count) in counts.iter().enumerate().skip(1) {
            if count > 0 && best.is_none_or(|(_, best_count)| count > best_count) {
                best = Some((c as u8, count));
            }
        }
        *class = best.map(|(c, _)| c).filter(|c| apply_to_classes.contains(c));
    }
    report.regions = region_class.iter().filter(|c| c.is_some()).count();

    // Algorithm 2, step 5: (u_HU^k ∩ y_pred) ← C_k for the configured classes.
    for (&label, mask) in buffers.labeller.labels.iter().zip(fused.mask.iter_mut()) {
        if label == 0 {
            continue;
        }
        if let Some(class) = region_class[label as usize - 1] {
            report.pixels_changed += usize::from(*mask != class);
            *mask = class;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATTICE: u8 = 5;
    const STREAKING: u8 = 4;

    /// A 10x8 map (W = 10, H = 8). The uncertainty is 0 everywhere except a C-shaped region of
    /// five pixels and one single pixel; in the drawing `#` is uncertainty 1.0 and `+` 0.5:
    /// ```text
    ///   x 0123456789
    /// y0  ..........
    /// y1  ..........
    /// y2  ...##.....
    /// y3  ...#......
    /// y4  ...##.....
    /// y5  ..........
    /// y6  ........+.
    /// y7  ..........
    /// ```
    /// Eq. 22: u_min = 0, u_max = 1, so ū = u. Eq. 23: the corners are 0, δ = 0 + 0.05.
    /// Regions {ū > 0.05}: the L (bounding box x 3..=4, y 2..=4, six pixels) and the single `+`
    /// at (8,6) (bounding box one pixel).
    ///
    /// The mask inside the L's bounding box (3..=4, 2..=4), classes by position:
    /// ```text
    ///        x=3 x=4
    /// y=2     5   0
    /// y=3     5   5
    /// y=4     4   0
    /// ```
    /// Counts without background: lattice (5) 3, streaking (4) 1 → C = lattice. The region's
    /// pixels are (3,2) (4,2) (3,3) (3,4) (4,4); of these (4,2) = 0, (3,4) = 4 and (4,4) = 0
    /// differ from 5, so 3 pixels change; (4,3) is in the box but not in the region and stays 5
    /// (it already is). The `+` region's box holds only background: no class, nothing changes.
    fn crafted() -> Fused {
        let (width, height) = (10, 8);
        let mut fused = Fused::new(width, height, 6);
        for &(x, y) in &[(3, 2), (4, 2), (3, 3), (3, 4), (4, 4)] {
            fused.uncertainty[y * width + x] = 1.0;
        }
        fused.uncertainty[6 * width + 8] = 0.5;
        let mut set = |x: usize, y: usize, c: u8| fused.mask[y * width + x] = c;
        set(3, 2, LATTICE);
        set(3, 3, LATTICE);
        set(4, 3, LATTICE);
        set(3, 4, STREAKING);
        // A lattice pixel outside every box must stay as it is.
        set(0, 7, LATTICE);
        fused
    }

    #[test]
    fn algorithm2_relabels_the_region_with_its_boxs_majority_class() {
        let mut fused = crafted();
        let before = fused.mask.clone();
        let report = refine(&mut fused, &[LATTICE]);
        assert_eq!(
            report,
            RefineReport {
                regions: 1,
                pixels_changed: 3,
                regions_found: 2
            }
        );

        let width = fused.width;
        let mut expected = before.clone();
        for &(x, y) in &[(4, 2), (3, 4), (4, 4)] {
            expected[y * width + x] = LATTICE;
        }
        assert_eq!(fused.mask, expected);
    }

    #[test]
    fn a_class_not_configured_leaves_the_mask_unchanged() {
        let mut fused = crafted();
        let before = fused.mask.clone();
        let report = refine(&mut fused, &[STREAKING]);
        assert_eq!(
            report,
            RefineReport {
                regions: 0,
                pixels_changed: 0,
                regions_found: 2
            }
        );
        assert_eq!(fused.mask, before);
    }

    #[test]
    fn flat_uncertainty_changes_nothing() {
        let mut fused = crafted();
        fused.uncertainty.fill(0.3);
        let before = fused.mask.clone();
        assert_eq!(refine(&mut fused, &[LATTICE]), RefineReport::default());
        assert_eq!(fused.mask, before);
    }

    /// Eq. 23 with corners that are not zero, on an 8x7 map: corners ū = 0.2, 0.2, 0.2, 0.6 →
    /// δ = 0.3 + 0.05 = 0.35. A pixel at ū = 0.34 is not high-uncertainty, one at ū = 0.36 is.
    #[test]
    fn threshold_is_mean_of_corners_plus_005() {
        let (width, height) = (8, 7);
        let at = |x: usize, y: usize| y * width + x;
        let mut fused = Fused::new(width, height, 6);
        // u_min = 0 (interior), u_max = 1 → ū = u.
        fused.uncertainty[at(2, 2)] = 1.0;
        fused.uncertainty[at(0, 0)] = 0.2;
        fused.uncertainty[at(7, 0)] = 0.2;
        fused.uncertainty[at(0, 6)] = 0.2;
        fused.uncertainty[at(7, 6)] = 0.6;
        fused.uncertainty[at(5, 1)] = 0.34; // below δ
        fused.uncertainty[at(5, 4)] = 0.36; // above δ, touching no other region
        fused.mask.fill(LATTICE);
        fused.mask[at(2, 2)] = 0;
        fused.mask[at(5, 1)] = 0;
        fused.mask[at(5, 4)] = 0;
        let report = refine(&mut fused, &[LATTICE]);
        // Regions: (2,2), (5,4) and the corner (7,6) at ū = 0.6; (5,1) is not one. Each box is
        // one pixel: the two background boxes have no class, the corner is lattice already.
        assert_eq!(
            report,
            RefineReport {
                regions: 1,
                pixels_changed: 0,
                regions_found: 3
            }
        );
        assert_eq!(fused.mask[at(5, 1)], 0);
        assert_eq!(fused.mask[at(5, 4)], 0);
    }
}
