//! Measuring defects: connected components of each defect class, their area, size, position,
//! best-fit ellipse and uncertainty.

use serde::{Deserialize, Serialize};

use crate::components::Labeller;
use crate::fuse::Fused;
use crate::spec::ClassInfo;

/// The best-fit ellipse of a component: the ellipse with the same second central moments.
///
/// Seed 004 names these three parameters (angle of rotation θ, semi-major axis R_x, semi-minor
/// axis R_y) as the per-defect description but gives no formula; they are computed here from the
/// component's moments (see [`measure`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ellipse {
    /// Angle of the major axis, in degrees in (−90, 90], measured from the image's +x axis (to
    /// the right) and counter-clockwise **as the image is seen on screen** (rows grow downwards,
    /// so a major axis pointing up-and-right has a positive angle).
    pub theta_deg: f64,
    /// Semi-major axis, pixels.
    pub semi_major_px: f64,
    /// Semi-minor axis, pixels.
    pub semi_minor_px: f64,
}

/// One connected component of a defect class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Defect {
    /// Class index (into the model's classes).
    pub class: u8,
    /// Number of pixels.
    pub area_px: u32,
    /// Area on the bed: `area_px * mm_per_px²`.
    pub area_mm2: f64,
    /// Bounding box in pixels: `[x, y, width, height]`.
    pub bbox: [u32; 4],
    /// Mean position of the component's pixels `[x, y]`, pixels; the centre of pixel (x, y) is
    /// at (x, y).
    pub centroid: [f64; 2],
    /// Diameter of the disc with the same area, `sqrt(4 A / π)` (seed 002, Eq. 5), mm.
    pub equivalent_diameter_mm: f64,
    /// Best-fit ellipse (seed 004), pixels.
    pub ellipse: Ellipse,
    /// Mean of the uncertainty map over the component's pixels.
    pub mean_uncertainty: f32,
    /// Largest value of the uncertainty map inside the component.
    pub max_uncertainty: f32,
}

/// Running sums of one component.
#[derive(Clone, Copy, Debug)]
struct Moments {
    class: u8,
    count: u64,
    x_min: u32,
    y_min: u32,
    x_max: u32,
    y_max: u32,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_yy: f64,
    sum_xy: f64,
    sum_uncertainty: f64,
    max_uncertainty: f32,
}

impl Moments {
    fn new(class: u8) -> Self {
        Moments {
            class,
            count: 0,
            x_min: u32::MAX,
            y_min: u32::MAX,
            x_max: 0,
            y_max: 0,
            sum_x: 0.0,
            sum_y: 0.0,
            sum_xx: 0.0,
            sum_yy: 0.0,
            sum_xy: 0.0,
            sum_uncertainty: 0.0,
            max_uncertainty: f32::NEG_INFINITY,
        }
    }
}

/// Buffers that [`measure_into`] keeps between layers: the label image and one running sum per
/// component.
#[derive(Clone, Debug, Default)]
pub struct MeasureBuffers {
    labeller: Labeller,
    components: Vec<Option<Moments>>,
}

/// Components whose running sums [`MeasureBuffers::for_pixels`] makes room for up front; a layer
/// with more (a noise field, far past every rule) grows the buffer once.
pub const RESERVED_COMPONENTS: usize = 1 << 16;

impl MeasureBuffers {
    /// Buffers for a mask of `pixels` pixels, allocated now rather than on the first layers.
    pub fn for_pixels(pixels: usize) -> MeasureBuffers {
        MeasureBuffers {
            labeller: Labeller::with_capacity(pixels),
            components: Vec::with_capacity(pixels.min(RESERVED_COMPONENTS)),
        }
    }
}

/// Finds and measures every defect in `fused.mask`; [`measure_into`] with buffers of its own.
pub fn measure(fused: &Fused, classes: &[ClassInfo], mm_per_px: f64, min_area_px: u32) -> Vec<Defect> {
    let mut defects = Vec::new();
    measure_into(
        fused,
        classes,
        mm_per_px,
        min_area_px,
        &mut MeasureBuffers::default(),
        &mut defects,
    );
    defects
}

/// Finds and measures every defect in `fused.mask` into `defects` (cleared first), with the
/// labelling in `buffers`: once the buffers and `defects` have grown to a layer's size, measuring
/// another allocates nothing.
///
/// For each class with `classes[c].defect == true`, the connected components of that class
/// (8-connectivity, numbered as `imageproc::region_labelling::connected_components` does, see
/// [`Labeller`]) are measured; those with fewer than `min_area_px` pixels are dropped.
/// `mm_per_px` is the bed's scale at the model's resolution (the rectified bed's width in mm
/// divided by the input width).
///
/// - `area_mm2 = area_px · mm_per_px²`;
/// - `equivalent_diameter_mm = sqrt(4 · area_mm2 / π)` (seed 002, Eq. 5);
/// - the ellipse: with the central second moments `μ20, μ02, μ11` of the component's pixels,
///   each pixel counted as a unit square (so each adds 1/12 to `μ20` and `μ02`), the covariance
///   matrix has eigenvalues `λ1 ≥ λ2`; a filled ellipse with semi-axes `a, b` has
///   `λ1 = a²/4, λ2 = b²/4`, so `semi_major = 2 sqrt(λ1)`, `semi_minor = 2 sqrt(λ2)`. The major
///   axis is at `½ atan2(2 μ11, μ20 − μ02)` from +x in image coordinates (y down), reported with
///   the sign flipped so that it is counter-clockwise as seen on screen (see [`Ellipse`]).
///
/// Defects come out ordered by class, then by the position of their first pixel in raster order.
pub fn measure_into(
    fused: &Fused,
    classes: &[ClassInfo],
    mm_per_px: f64,
    min_area_px: u32,
    buffers: &mut MeasureBuffers,
    defects: &mut Vec<Defect>,
) {
    defects.clear();
    let (width, height) = (fused.width, fused.height);
    if width == 0 || height == 0 {
        return;
    }
    let is_defect = |c: u8| classes.get(c as usize).is_some_and(|class| class.defect);
    // Defect pixels carry class + 1, everything else 0 (the background of the labelling), so a
    // defect class 0 would still be labelled.
    let count = buffers.labeller.label(width, height, |index| {
        let class = fused.mask[index];
        if is_defect(class) {
            class as u16 + 1
        } else {
            0
        }
    });

    let components = &mut buffers.components;
    components.clear();
    components.resize(count as usize, None);
    for (index, &label) in buffers.labeller.labels.iter().enumerate() {
        let label = label as usize;
        if label == 0 {
            continue;
        }
        let (x, y) = ((index % width) as u32, (index / width) as u32);
        let moments = components[label - 1].get_or_insert_with(|| Moments::new(fused.mask[index]));
        let (xf, yf) = (x as f64, y as f64);
        moments.count += 1;
        moments.x_min = moments.x_min.min(x);
        moments.y_min = moments.y_min.min(y);
        moments.x_max = moments.x_max.max(x);
        moments.y_max = moments.y_max.max(y);
        moments.sum_x += xf;
        moments.sum_y += yf;
        moments.sum_xx += xf * xf;
        moments.sum_yy += yf * yf;
        moments.sum_xy += xf * yf;
        let u = fused.uncertainty[index];
        moments.sum_uncertainty += u as f64;
        moments.max_uncertainty = moments.max_uncertainty.max(u);
    }

    // Labels are numbered in raster order of first pixels; taking one class after the other
    // keeps that order per class (a stable sort by class, without a sort's scratch buffer).
    for class in 0..classes.len() {
        let of_class = components.iter().flatten().filter(|m| m.class as usize == class);
        defects.extend(
            of_class
                .filter(|m| m.count >= min_area_px as u64)
                .map(|m| defect_from_moments(m, mm_per_px)),
        );
    }
}

fn defect_from_moments(m: &Moments, mm_per_px: f64) -> Defect {
    let n = m.count as f64;
    let (mean_x, mean_y) = (m.sum_x / n, m.sum_y / n);
    // Central second moments, each pixel a unit square (variance 1/12 along each axis).
    let mu20 = (m.sum_xx / n - mean_x * mean_x).max(0.0) + 1.0 / 12.0;
    let mu02 = (m.sum_yy / n - mean_y * mean_y).max(0.0) + 1.0 / 12.0;
    let mu11 = m.sum_xy / n - mean_x * mean_y;
    let half_trace = (mu20 + mu02) / 2.0;
    let half_gap = (((mu20 - mu02) / 2.0).powi(2) + mu11 * mu11).sqrt();
    let lambda_major = half_trace + half_gap;
    let lambda_minor = (half_trace - half_gap).max(0.0);
    // Angle in image coordinates (y down) is ½ atan2(2 μ11, μ20 − μ02); negate for on-screen
    // counter-clockwise. Keep it in (−90, 90].
    let mut theta_deg = -0.5 * (2.0 * mu11).atan2(mu20 - mu02).to_degrees();
    if theta_deg <= -90.0 {
        theta_deg += 180.0;
    }
    if theta_deg == 0.0 {
        theta_deg = 0.0; // no −0.0
    }
    let area_px = m.count as u32;
    let area_mm2 = area_px as f64 * mm_per_px * mm_per_px;
    Defect {
        class: m.class,
        area_px,
        area_mm2,
        bbox: [m.x_min, m.y_min, m.x_max - m.x_min + 1, m.y_max - m.y_min + 1],
        centroid: [mean_x, mean_y],
        // seed 002, Eq. 5: ∅_e = sqrt(4 A_p / π)
        equivalent_diameter_mm: (4.0 * area_mm2 / std::f64::consts::PI).sqrt(),
        ellipse: Ellipse {
            theta_deg,
            semi_major_px: 2.0 * lambda_major.sqrt(),
            semi_minor_px: 2.0 * lambda_minor.sqrt(),
        },
        mean_uncertainty: (m.sum_uncertainty / n) as f32,
        max_uncertainty: m.max_uncertainty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};
    use imageproc::drawing::{draw_filled_circle_mut, draw_filled_ellipse_mut};

    fn classes() -> Vec<ClassInfo> {
        [
            "background",
            "super-elevation",
            "incompleteness",
            "hopping",
            "streaking",
            "lattice",
        ]
        .iter()
        .enumerate()
        .map(|(k, name)| ClassInfo {
            name: name.to_string(),
            colour: [0; 3],
            defect: k != 0 && k != 5,
        })
        .collect()
    }

    fn fused_from(image: &GrayImage) -> Fused {
        let mut fused = Fused::new(image.width() as usize, image.height() as usize, 6);
        for (index, pixel) in image.pixels().enumerate() {
            fused.mask[index] = pixel[0];
        }
        fused
    }

    fn within(actual: f64, expected: f64, relative: f64) -> bool {
        (actual - expected).abs() <= relative * expected.abs()
    }

    /// Angle difference modulo 180° (an ellipse's axis has no direction).
    fn angle_error(a: f64, b: f64) -> f64 {
        let d = (a - b).rem_euclid(180.0);
        d.min(180.0 - d)
    }

    /// A rotated filled ellipse drawn by testing the implicit equation per pixel. `theta_deg` is
    /// counter-clockwise on screen: in image coordinates (y down) the major axis direction is
    /// (cos θ, −sin θ).
    fn rotated_ellipse(size: u32, centre: (f64, f64), a: f64, b: f64, theta_deg: f64, class: u8) -> GrayImage {
        let t = theta_deg.to_radians();
        let (ux, uy) = (t.cos(), -t.sin());
        GrayImage::from_fn(size, size, |x, y| {
            let (dx, dy) = (x as f64 - centre.0, y as f64 - centre.1);
            let along = dx * ux + dy * uy;
            let across = -dx * uy + dy * ux;
            let inside = (along / a).powi(2) + (across / b).powi(2) <= 1.0;
            Luma([if inside { class } else { 0 }])
        })
    }

    #[test]
    fn ellipse_fit_recovers_axes_and_angle_of_rotated_ellipses() {
        for &theta in &[0.0, 30.0, 60.0, 90.0, -45.0, -20.0] {
            let image = rotated_ellipse(160, (80.3, 79.6), 40.0, 16.0, theta, 1);
            let defects = measure(&fused_from(&image), &classes(), 0.1, 1);
            assert_eq!(defects.len(), 1, "θ = {theta}");
            let ellipse = defects[0].ellipse;
            assert!(
                angle_error(ellipse.theta_deg, theta) < 1.0,
                "θ = {theta}: fitted {}",
                ellipse.theta_deg
            );
            assert!(
                within(ellipse.semi_major_px, 40.0, 0.02),
                "θ = {theta}: a = {}",
                ellipse.semi_major_px
            );
            assert!(
                within(ellipse.semi_minor_px, 16.0, 0.02),
                "θ = {theta}: b = {}",
                ellipse.semi_minor_px
            );
            assert!((defects[0].centroid[0] - 80.3).abs() < 0.5 && (defects[0].centroid[1] - 79.6).abs() < 0.5);
        }
    }

    /// imageproc's axis-aligned ellipse: width radius 30 along x, height radius 12 along y → θ = 0.
    /// imageproc fills x in [cx − 30, cx + 30] inclusive, 61 pixels, so as a union of unit squares
    /// the shape reaches 30.5 px either side: the semi-axes to expect are r + ½ = 30.5 and 12.5.
    /// The same drawn taller than wide → θ = 90.
    #[test]
    fn ellipse_fit_on_imageproc_ellipses() {
        let mut image = GrayImage::new(100, 100);
        draw_filled_ellipse_mut(&mut image, (50, 50), 30, 12, Luma([2]));
        let defect = &measure(&fused_from(&image), &classes(), 1.0, 1)[0];
        assert_eq!(defect.class, 2);
        assert_eq!(defect.bbox, [20, 38, 61, 25]);
        assert!(
            angle_error(defect.ellipse.theta_deg, 0.0) < 1.0,
            "{}",
            defect.ellipse.theta_deg
        );
        assert!(
            within(defect.ellipse.semi_major_px, 30.5, 0.02),
            "{}",
            defect.ellipse.semi_major_px
        );
        assert!(
            within(defect.ellipse.semi_minor_px, 12.5, 0.02),
            "{}",
            defect.ellipse.semi_minor_px
        );

        let mut image = GrayImage::new(100, 100);
        draw_filled_ellipse_mut(&mut image, (50, 50), 12, 30, Luma([2]));
        let defect = &measure(&fused_from(&image), &classes(), 1.0, 1)[0];
        assert!(
            angle_error(defect.ellipse.theta_deg, 90.0) < 1.0,
            "{}",
            defect.ellipse.theta_deg
        );
    }

    /// A disc of radius r = 25 px (pixels whose centre is within r of (40, 40)) at 0.2 mm/px:
    /// equivalent diameter 2 r · 0.2 = 10 mm (seed 002, Eq. 5), area_mm2 = area_px · 0.04, and a
    /// circle's ellipse has equal axes ≈ r.
    #[test]
    fn disc_equivalent_diameter_and_area() {
        let (radius, mm_per_px) = (25.0f64, 0.2f64);
        let image = rotated_ellipse(80, (40.0, 40.0), radius, radius, 0.0, 3);
        let defects = measure(&fused_from(&image), &classes(), mm_per_px, 1);
        assert_eq!(defects.len(), 1);
        let disc = &defects[0];
        assert!(
            within(disc.equivalent_diameter_mm, 2.0 * radius * mm_per_px, 0.02),
            "{}",
            disc.equivalent_diameter_mm
        );
        assert_eq!(disc.area_mm2, disc.area_px as f64 * mm_per_px * mm_per_px);
        assert!(within(disc.ellipse.semi_major_px, radius, 0.02) && within(disc.ellipse.semi_minor_px, radius, 0.02));
        assert_eq!(disc.bbox, [15, 15, 51, 51]);
        assert_eq!(disc.centroid, [40.0, 40.0]);

        // imageproc's filled circle of radius 25 is, like its ellipse, about half a pixel wider.
        let mut drawn = GrayImage::new(80, 80);
        draw_filled_circle_mut(&mut drawn, (40, 40), radius as i32, Luma([3]));
        let drawn_disc = &measure(&fused_from(&drawn), &classes(), mm_per_px, 1)[0];
        assert!(within(
            drawn_disc.equivalent_diameter_mm,
            2.0 * (radius + 0.5) * mm_per_px,
            0.02
        ));
    }

    /// Components per defect class with 8-connectivity; non-defect classes (background, lattice)
    /// are not reported; components under `min_area_px` are dropped; uncertainty statistics.
    #[test]
    fn components_classes_and_minimum_area() {
        let width = 8;
        #[rustfmt::skip]
        let mask: [u8; 48] = [
            1, 1, 0, 0, 0, 0, 5, 5,
            0, 0, 1, 0, 0, 0, 5, 5,
            0, 0, 0, 0, 2, 2, 0, 0,
            4, 0, 0, 0, 2, 1, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 4,
        ];
        let mut fused = Fused::new(width, 6, 6);
        fused.mask.copy_from_slice(&mask);
        fused.uncertainty[0] = 0.1;
        fused.uncertainty[1] = 0.2;
        fused.uncertainty[width + 2] = 0.6;
        let defects = measure(&fused, &classes(), 0.5, 1);
        // class 1: {(0,0),(1,0),(2,1)} diagonal-connected, and {(5,3)}; class 2: {(4,2),(5,2),(4,3)};
        // class 4: {(0,3)}, {(7,5)}. Lattice (5) is not a defect.
        let summary: Vec<(u8, u32, [u32; 4])> = defects.iter().map(|d| (d.class, d.area_px, d.bbox)).collect();
        assert_eq!(
            summary,
            vec![
                (1, 3, [0, 0, 3, 2]),
                (1, 1, [5, 3, 1, 1]),
                (2, 3, [4, 2, 2, 2]),
                (4, 1, [0, 3, 1, 1]),
                (4, 1, [7, 5, 1, 1]),
            ]
        );
        assert!((defects[0].mean_uncertainty - 0.3).abs() < 1e-6);
        assert_eq!(defects[0].max_uncertainty, 0.6);
        assert_eq!(defects[0].area_mm2, 0.75);

        let large = measure(&fused, &classes(), 0.5, 2);
        assert_eq!(
            large.iter().map(|d| (d.class, d.area_px)).collect::<Vec<_>>(),
            vec![(1, 3), (2, 3)]
        );
    }
}
