//! From a camera frame to the graph's input tensor: rectify the bed (a homography of its four
//! corners), resize to the model's input size, scale to 0..1, normalise, lay out as CHW.

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, Luma};
use imageproc::geometric_transformations::{warp_into, Border, Interpolation, Projection};

use crate::error::ModelError;
use crate::spec::InputSpec;

/// ITU-R BT.601 luma weights for R, G, B (the model contract's grey).
pub const LUMA_601: [f32; 3] = [0.299, 0.587, 0.114];

/// The bed's four corners in a camera frame and the size of the rectified image: a homography
/// computed once (at start-up or calibration) and applied to every frame without allocating.
///
/// Corner coordinates are in frame pixels with the centre of pixel (x, y) at (x, y), in the
/// order top-left, top-right, bottom-right, bottom-left (as the bed is seen after rectification).
/// They map onto the centres of the output's corner pixels: (0, 0), (W−1, 0), (W−1, H−1), (0, H−1).
/// A mirrored view (the four corners going round the other way) is accepted and un-mirrored.
#[derive(Clone, Copy, Debug)]
pub struct Rectifier {
    projection: Projection,
    /// Output width, pixels.
    pub out_w: u32,
    /// Output height, pixels.
    pub out_h: u32,
}

impl Rectifier {
    /// Checks the corners (finite, a convex quadrilateral going round one way, not degenerate)
    /// and computes the homography.
    pub fn new(corners_px: [[f32; 2]; 4], out_w: u32, out_h: u32) -> Result<Self, ModelError> {
        if out_w < 2 || out_h < 2 {
            return Err(ModelError::Input(format!(
                "rectify: output size {out_w}x{out_h} is too small (at least 2x2)"
            )));
        }
        if corners_px.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ModelError::Input(format!(
                "rectify: bed corners {corners_px:?} are not all finite numbers"
            )));
        }
        // The corners must turn the same way at every vertex (a convex quadrilateral, no bow-tie)
        // and enclose a real area. Seen on screen, top-left → top-right → bottom-right turns
        // clockwise; a mirrored view (camera behind a mirror, flipped sensor) turns the other
        // way and is accepted too: the homography un-mirrors it.
        let turn = |i: usize| {
            let [a, b, c] =
                [corners_px[i], corners_px[(i + 1) % 4], corners_px[(i + 2) % 4]].map(|[x, y]| [x as f64, y as f64]);
            (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])
        };
        let turns = [turn(0), turn(1), turn(2), turn(3)];
        if !(turns.iter().all(|&t| t > 0.0) || turns.iter().all(|&t| t < 0.0)) {
            return Err(ModelError::Input(format!(
                "rectify: bed corners {corners_px:?} are not a convex quadrilateral in the order \
                 top-left, top-right, bottom-right, bottom-left; recalibrate the bed corners"
            )));
        }
        let area_twice: f64 = (0..4)
            .map(|i| {
                let ([x0, y0], [x1, y1]) = (corners_px[i], corners_px[(i + 1) % 4]);
                x0 as f64 * y1 as f64 - x1 as f64 * y0 as f64
            })
            .sum();
        if area_twice.abs() / 2.0 < 4.0 {
            return Err(ModelError::Input(format!(
                "rectify: bed corners {corners_px:?} enclose almost no area"
            )));
        }
        let (right, bottom) = ((out_w - 1) as f32, (out_h - 1) as f32);
        let from = corners_px.map(|[x, y]| (x, y));
        let to = [(0.0, 0.0), (right, 0.0), (right, bottom), (0.0, bottom)];
        let projection = Projection::from_control_points(from, to).ok_or_else(|| {
            ModelError::Input(format!(
                "rectify: no homography maps the bed corners {corners_px:?} onto the output"
            ))
        })?;
        Ok(Rectifier {
            projection,
            out_w,
            out_h,
        })
    }

    /// Where the camera pixel (`x`, `y`) lands on the rectified bed, in output pixels.
    pub fn camera_to_bed(&self, x: f32, y: f32) -> (f32, f32) {
        self.projection * (x, y)
    }

    /// The homography from camera pixels to output pixels, row-major 3x3, scaled so that the
    /// last entry is 1: what a person copies into another tool to check the calibration.
    pub fn homography(&self) -> [f64; 9] {
        // imageproc keeps the matrix private; its Debug output is the only way to read it back,
        // and the unit test checks it against `camera_to_bed`.
        let debug = format!("{:?}", self.projection);
        let start = debug
            .find("transform: [")
            .map(|i| i + "transform: [".len())
            .unwrap_or(0);
        let end = debug[start..].find(']').map(|i| start + i).unwrap_or(start);
        let mut matrix = [0.0f64; 9];
        for (slot, value) in matrix.iter_mut().zip(debug[start..end].split(',')) {
            *slot = value.trim().parse().unwrap_or(f64::NAN);
        }
        let scale = matrix[8];
        matrix.map(|v| v / scale)
    }

    /// Warps `frame` into `out` (which must be `out_w` x `out_h`), bilinear; parts of the output
    /// whose pre-image lies outside the frame are black. Does not allocate.
    pub fn rectify_into(&self, frame: &GrayImage, out: &mut GrayImage) -> Result<(), ModelError> {
        if out.dimensions() != (self.out_w, self.out_h) {
            return Err(ModelError::Input(format!(
                "rectify: output image is {}x{}, expected {}x{}",
                out.width(),
                out.height(),
                self.out_w,
                self.out_h
            )));
        }
        warp_into(
            frame,
            self.projection,
            Interpolation::Bilinear,
            Border::Constant(Luma([0])),
            out,
        );
        Ok(())
    }

    /// Warps `frame` into a new `out_w` x `out_h` image.
    pub fn rectify(&self, frame: &GrayImage) -> GrayImage {
        let mut out = GrayImage::new(self.out_w, self.out_h);
        warp_into(
            frame,
            self.projection,
            Interpolation::Bilinear,
            Border::Constant(Luma([0])),
            &mut out,
        );
        out
    }
}

/// Rectifies the bed seen in `frame`: the quadrilateral `corners_px` (top-left, top-right,
/// bottom-right, bottom-left, frame pixels) becomes an `out_w` x `out_h` image whose corner pixels
/// are the four corners (see [`Rectifier`], which does the same without allocating per frame).
///
/// An error when the corners are not finite, not a convex quadrilateral in that order, or
/// degenerate, or the output is smaller than 2x2.
pub fn rectify(frame: &GrayImage, corners_px: [[f32; 2]; 4], out_w: u32, out_h: u32) -> Result<GrayImage, ModelError> {
    Ok(Rectifier::new(corners_px, out_w, out_h)?.rectify(frame))
}

/// Fills `out` (`C * H * W` values, CHW order) with the graph input for `image` (the model
/// contract in docs/model-image.md):
/// - resized to `spec.width` x `spec.height` if it is not that size already (bilinear with the
///   filter widened when shrinking, `image`'s `FilterType::Triangle`; it allocates only then);
/// - scaled to 0..1 by the pixel type's maximum (255 for 8-bit, 65535 for 16-bit; float images
///   are taken as already 0..1);
/// - for `C = 1`, colour turned into ITU-R BT.601 luma; for `C = 3`, grey repeated in R, G, B;
///   alpha ignored;
/// - normalised per channel: `(x − mean[c]) / std[c]`.
pub fn preprocess(image: &DynamicImage, spec: &InputSpec, out: &mut [f32]) -> Result<(), ModelError> {
    spec.validate()?;
    if out.len() != spec.len() {
        return Err(ModelError::Input(format!(
            "preprocess: input buffer holds {} values, the model takes {} ({}x{}x{})",
            out.len(),
            spec.len(),
            spec.channels,
            spec.height,
            spec.width
        )));
    }
    if image.width() == 0 || image.height() == 0 {
        return Err(ModelError::Input("preprocess: the image is empty".into()));
    }
    if image.width() == spec.width && image.height() == spec.height {
        fill(image, spec, out);
    } else {
        let resized = image.resize_exact(spec.width, spec.height, FilterType::Triangle);
        fill(&resized, spec, out);
    }
    Ok(())
}

/// [`preprocess`] for an 8-bit grey image (what [`rectify`] returns), without wrapping it in a
/// `DynamicImage`. Allocates only when it has to resize.
pub fn preprocess_gray(image: &GrayImage, spec: &InputSpec, out: &mut [f32]) -> Result<(), ModelError> {
    spec.validate()?;
    if image.dimensions() == (spec.width, spec.height) && spec.channels == 1 && out.len() == spec.len() {
        let (mean, std) = (spec.mean[0], spec.std[0]);
        for (value, pixel) in out.iter_mut().zip(image.as_raw()) {
            *value = (*pixel as f32 / 255.0 - mean) / std;
        }
        return Ok(());
    }
    preprocess(&DynamicImage::ImageLuma8(image.clone()), spec, out)
}

/// Writes the normalised CHW tensor of an image that already has the model's size.
fn fill(image: &DynamicImage, spec: &InputSpec, out: &mut [f32]) {
    let pixels = spec.pixels();
    let channels = spec.channels as usize;
    // One pixel at a time as (r, g, b) on the 0..1 scale, or (l, l, l) for grey images.
    let mut write = |index: usize, rgb: [f32; 3], grey: bool| {
        if channels == 1 {
            let luma = if grey {
                rgb[0]
            } else {
                LUMA_601[0] * rgb[0] + LUMA_601[1] * rgb[1] + LUMA_601[2] * rgb[2]
            };
            out[index] = (luma - spec.mean[0]) / spec.std[0];
        } else {
            for c in 0..3 {
                out[c * pixels + index] = (rgb[c] - spec.mean[c]) / spec.std[c];
            }
        }
    };
    macro_rules! each_pixel {
        ($buffer:expr, $scale:expr, $grey:expr) => {
            for (index, pixel) in $buffer.pixels().enumerate() {
                let channels = &pixel.0;
                let value = |c: usize| channels[c.min(channels.len() - 1)] as f32 / $scale;
                let rgb = if $grey {
                    [value(0); 3]
                } else {
                    [value(0), value(1), value(2)]
                };
                write(index, rgb, $grey);
            }
        };
    }
    match image {
        DynamicImage::ImageLuma8(buffer) => each_pixel!(buffer, 255.0, true),
        DynamicImage::ImageLumaA8(buffer) => each_pixel!(buffer, 255.0, true),
        DynamicImage::ImageLuma16(buffer) => each_pixel!(buffer, 65535.0, true),
        DynamicImage::ImageLumaA16(buffer) => each_pixel!(buffer, 65535.0, true),
        DynamicImage::ImageRgb8(buffer) => each_pixel!(buffer, 255.0, false),
        DynamicImage::ImageRgba8(buffer) => each_pixel!(buffer, 255.0, false),
        DynamicImage::ImageRgb16(buffer) => each_pixel!(buffer, 65535.0, false),
        DynamicImage::ImageRgba16(buffer) => each_pixel!(buffer, 65535.0, false),
        DynamicImage::ImageRgb32F(buffer) => each_pixel!(buffer, 1.0, false),
        DynamicImage::ImageRgba32F(buffer) => each_pixel!(buffer, 1.0, false),
        other => {
            // A pixel layout added to `image` later: go through 32-bit float RGB.
            let converted = other.to_rgb32f();
            each_pixel!(converted, 1.0, false)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_homography_maps_points_as_the_rectifier_does() {
        let corners = [[112.0, 80.0], [1830.0, 96.0], [1850.0, 1810.0], [96.0, 1795.0]];
        let rectifier = Rectifier::new(corners, 256, 256).unwrap();
        let h = rectifier.homography();
        assert_eq!(h[8], 1.0);
        for (x, y) in [(112.0f64, 80.0f64), (1850.0, 1810.0), (900.0, 1000.0)] {
            let w = h[6] * x + h[7] * y + h[8];
            let mapped = ((h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w);
            let (bx, by) = rectifier.camera_to_bed(x as f32, y as f32);
            assert!(
                (mapped.0 - bx as f64).abs() < 1e-2 && (mapped.1 - by as f64).abs() < 1e-2,
                "{mapped:?} vs {bx},{by}"
            );
        }
        let (bx, by) = rectifier.camera_to_bed(1850.0, 1810.0);
        assert!((bx - 255.0).abs() < 1e-2 && (by - 255.0).abs() < 1e-2);
    }

    use super::*;
    use image::{ImageBuffer, Rgb};

    fn spec(width: u32, height: u32, channels: u32) -> InputSpec {
        let c = channels as usize;
        InputSpec {
            width,
            height,
            channels,
            mean: vec![0.5; c],
            std: vec![0.25; c],
        }
    }

    /// A frame with four marked points on a skewed quadrilateral: after rectification each marked
    /// point sits on the output's corresponding corner pixel, and a point at the quadrilateral's
    /// centre of perspective ends up inside.
    #[test]
    fn rectify_maps_corners_to_output_corners() {
        let corners = [[20.0f32, 10.0], [90.0, 18.0], [100.0, 85.0], [8.0, 70.0]];
        let mut frame = GrayImage::new(120, 100);
        let marks = [50u8, 100, 150, 200];
        for (corner, &value) in corners.iter().zip(&marks) {
            // A 3x3 block so bilinear sampling at the exact centre reads the value.
            for dy in -1..=1 {
                for dx in -1..=1 {
                    frame.put_pixel(
                        (corner[0] as i32 + dx) as u32,
                        (corner[1] as i32 + dy) as u32,
                        Luma([value]),
                    );
                }
            }
        }
        let (w, h) = (64, 48);
        let out = rectify(&frame, corners, w, h).unwrap();
        assert_eq!(out.dimensions(), (w, h));
        // imageproc's bilinear blend truncates, so a value may come out one grey level low.
        let near = |value: u8, expected: u8| value == expected || value + 1 == expected;
        assert!(near(out.get_pixel(0, 0)[0], 50), "top-left {}", out.get_pixel(0, 0)[0]);
        assert!(
            near(out.get_pixel(w - 1, 0)[0], 100),
            "top-right {}",
            out.get_pixel(w - 1, 0)[0]
        );
        assert!(
            near(out.get_pixel(w - 1, h - 1)[0], 150),
            "bottom-right {}",
            out.get_pixel(w - 1, h - 1)[0]
        );
        assert!(
            near(out.get_pixel(0, h - 1)[0], 200),
            "bottom-left {}",
            out.get_pixel(0, h - 1)[0]
        );
        // The middle of the output is inside the bed, away from every mark.
        assert_eq!(out.get_pixel(w / 2, h / 2)[0], 0);

        let rectifier = Rectifier::new(corners, w, h).unwrap();
        let mut reused = GrayImage::new(w, h);
        rectifier.rectify_into(&frame, &mut reused).unwrap();
        assert_eq!(reused, out);
    }

    /// An axis-aligned rectangle with an exact 2:1 scale: the output is the frame sampled every
    /// other pixel.
    #[test]
    fn rectify_of_an_axis_aligned_rectangle_is_a_resample() {
        let frame = GrayImage::from_fn(41, 21, |x, y| Luma([(x * 5 + y) as u8]));
        let out = rectify(&frame, [[0.0, 0.0], [40.0, 0.0], [40.0, 20.0], [0.0, 20.0]], 21, 11).unwrap();
        for (x, y, pixel) in out.enumerate_pixels() {
            let expected = frame.get_pixel(2 * x, 2 * y)[0] as i32;
            assert!(
                (pixel[0] as i32 - expected).abs() <= 1,
                "at ({x}, {y}): {} vs {expected}",
                pixel[0]
            );
        }
    }

    /// A mirrored view (the corners go round the other way) is un-mirrored.
    #[test]
    fn rectify_accepts_a_mirrored_view() {
        let frame = GrayImage::from_fn(41, 21, |x, y| Luma([(x * 5 + y) as u8]));
        let out = rectify(&frame, [[40.0, 0.0], [0.0, 0.0], [0.0, 20.0], [40.0, 20.0]], 21, 11).unwrap();
        for (x, y, pixel) in out.enumerate_pixels() {
            let expected = frame.get_pixel(40 - 2 * x, 2 * y)[0] as i32;
            assert!(
                (pixel[0] as i32 - expected).abs() <= 1,
                "at ({x}, {y}): {} vs {expected}",
                pixel[0]
            );
        }
    }

    #[test]
    fn rectify_refuses_bad_corners() {
        let frame = GrayImage::new(10, 10);
        // Bottom corners swapped: a bow-tie, not a convex quadrilateral.
        assert!(rectify(&frame, [[0.0, 0.0], [9.0, 0.0], [0.0, 9.0], [9.0, 9.0]], 8, 8).is_err());
        // All four on a line.
        assert!(rectify(&frame, [[0.0, 0.0], [3.0, 0.0], [6.0, 0.0], [9.0, 0.0]], 8, 8).is_err());
        assert!(rectify(&frame, [[0.0, 0.0], [f32::NAN, 0.0], [9.0, 9.0], [0.0, 9.0]], 8, 8).is_err());
        assert!(rectify(&frame, [[0.0, 0.0], [9.0, 0.0], [9.0, 9.0], [0.0, 9.0]], 1, 8).is_err());
    }

    #[test]
    fn preprocess_grey_scales_normalises_and_keeps_layout() {
        let image = GrayImage::from_fn(3, 2, |x, y| Luma([(x + 3 * y) as u8 * 51]));
        let spec = spec(3, 2, 1);
        let mut out = vec![0.0; 6];
        preprocess(&DynamicImage::ImageLuma8(image.clone()), &spec, &mut out).unwrap();
        // pixel values 0, 51, ..., 255 → 0, 0.2, ..., 1.0 → (x − 0.5) / 0.25
        let expected: Vec<f32> = (0..6).map(|i| (i as f32 * 0.2 - 0.5) / 0.25).collect();
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
        let mut again = vec![0.0; 6];
        preprocess_gray(&image, &spec, &mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn preprocess_colour_to_luma_and_to_chw() {
        let image = ImageBuffer::from_fn(
            2,
            1,
            |x, _| {
                if x == 0 {
                    Rgb([255u8, 0, 0])
                } else {
                    Rgb([0u8, 0, 255])
                }
            },
        );
        let image = DynamicImage::ImageRgb8(image);
        // C = 1: ITU-R 601 luma 0.299 (red) and 0.114 (blue).
        let grey = InputSpec {
            width: 2,
            height: 1,
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0],
        };
        let mut out = vec![0.0; 2];
        preprocess(&image, &grey, &mut out).unwrap();
        assert!(
            (out[0] - 0.299).abs() < 1e-6 && (out[1] - 0.114).abs() < 1e-6,
            "{out:?}"
        );
        // C = 3: planes R, G, B.
        let rgb = InputSpec {
            width: 2,
            height: 1,
            channels: 3,
            mean: vec![0.0, 0.5, 0.0],
            std: vec![1.0, 0.5, 2.0],
        };
        let mut out = vec![0.0; 6];
        preprocess(&image, &rgb, &mut out).unwrap();
        assert_eq!(out, vec![1.0, 0.0, -1.0, -1.0, 0.0, 0.5]);
    }

    #[test]
    fn preprocess_resizes_and_checks_the_buffer() {
        let image = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(8, 6, Luma([65535u16])));
        let spec = spec(4, 3, 1);
        let mut out = vec![0.0; 12];
        preprocess(&image, &spec, &mut out).unwrap();
        assert!(out.iter().all(|&v| (v - 2.0).abs() < 1e-4), "{out:?}");
        let mut short = vec![0.0; 11];
        assert!(preprocess(&image, &spec, &mut short).is_err());
    }
}
