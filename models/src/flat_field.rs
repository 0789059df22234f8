//! Flat-field correction: the bed's lighting, measured once on an evenly spread bed at
//! commissioning, divided out of every frame, so that a darker or brighter region of evenly spread
//! powder reaches the model at the brightness of the rest of the bed.
//!
//! The reference is the lighting alone: a frame of an evenly spread, empty bed, low-passed until
//! the powder's grain is gone (a Gaussian of sigma = `LOW_PASS_SHARE` of the frame's long side,
//! taken at 1/`DOWNSCALE` of the frame's size, where it is cheap). The correction multiplies each
//! camera pixel by `gain = mean(reference) / reference(pixel)`: corrected frames keep the
//! reference's mean brightness. It works in the camera's pixels, before rectification, so a
//! reference stays right when the model or its input size changes; a frame of another size is
//! refused, since it comes from another camera or another camera setting.
//!
//! Where no evenly spread bed can be photographed (a camera that only ever sees beds with a defect
//! somewhere), the reference frame is the per-pixel median of several recoated layers
//! (`median_frame`): a defect that moves from layer to layer drops out of the median, and the
//! lighting, the same on every layer, stays.

use image::{GrayImage, ImageBuffer, Luma};

use crate::ModelError;

/// Sigma of the low-pass, as a share of the frame's long side (about 10 px of a 1024-px frame):
/// wide enough to average the powder's grain and noise away, narrow enough to follow the light
/// where it falls steeply at the bed's far edge (on the PBLM camera, to a third within 40 px;
/// at 0.05 a dark band was left there, which a model takes for a defect). The reference is a
/// frame of an evenly spread bed, so there is nothing but lighting in it to follow.
pub const LOW_PASS_SHARE: f32 = 0.01;
/// The reference is low-passed at this fraction of the frame's size.
const DOWNSCALE: u32 = 8;
/// A reference pixel darker than this share of the reference's mean would need a gain above
/// 1 / MIN_RELATIVE: the bed is not lit there (a wall, the recoater's shadow), and amplifying
/// noise by more than that would make texture out of nothing.
pub const MIN_RELATIVE: f32 = 0.2;
/// The fewest frames whose median may stand for an evenly spread bed: with fewer, a defect on two
/// of them is already half of the frames and stays in the median.
pub const MIN_MEDIAN_FRAMES: usize = 5;

/// The per-pixel median of frames of one camera: the lower of the two middle values when their
/// count is even, so that every pixel is one of the frames' values (bedsight_train's
/// flat_field.median_frame computes the same).
pub fn median_frame(frames: &[GrayImage]) -> Result<GrayImage, ModelError> {
    if frames.len() < MIN_MEDIAN_FRAMES {
        return Err(ModelError::Input(format!(
            "{} frame(s): a median lighting reference needs at least {MIN_MEDIAN_FRAMES}",
            frames.len()
        )));
    }
    let (width, height) = frames[0].dimensions();
    if let Some((n, other)) = frames
        .iter()
        .enumerate()
        .find(|(_, f)| f.dimensions() != (width, height))
    {
        return Err(ModelError::Input(format!(
            "frame {} is {}x{} px and frame 1 {width}x{height}: the frames of one camera have one size",
            n + 1,
            other.width(),
            other.height()
        )));
    }
    let mut values = vec![0u8; frames.len()];
    let middle = (frames.len() - 1) / 2;
    Ok(GrayImage::from_fn(width, height, |x, y| {
        for (value, frame) in values.iter_mut().zip(frames) {
            *value = frame.get_pixel(x, y)[0];
        }
        Luma([*values.select_nth_unstable(middle).1])
    }))
}

/// The correction for one camera: a gain per camera pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatField {
    pub width: u32,
    pub height: u32,
    /// Row-major, `width * height` gains, each in (0, 1 / MIN_RELATIVE].
    pub gain: Vec<f32>,
}

/// The lighting of a frame of an evenly spread bed: its low-pass, at the frame's size, on the
/// 0..1 scale.
pub fn lighting_reference(frame: &GrayImage) -> Vec<f32> {
    let (width, height) = frame.dimensions();
    let small_w = (width / DOWNSCALE).max(1);
    let small_h = (height / DOWNSCALE).max(1);
    // On the 0..1 scale: imageproc's blur clamps f32 pixels to it.
    let as_float: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_fn(width, height, |x, y| Luma([frame.get_pixel(x, y)[0] as f32 / 255.0]));
    let small = image::imageops::resize(&as_float, small_w, small_h, image::imageops::FilterType::Triangle);
    let sigma = LOW_PASS_SHARE * small_w.max(small_h) as f32;
    let blurred = imageproc::filter::gaussian_blur_f32(&small, sigma.max(0.5));
    image::imageops::resize(&blurred, width, height, image::imageops::FilterType::Triangle).into_raw()
}

impl FlatField {
    /// The correction for a reference (the lighting, any positive scale, `width * height` values).
    pub fn from_reference(width: u32, height: u32, reference: &[f32]) -> Result<FlatField, ModelError> {
        if width == 0 || height == 0 || reference.len() != width as usize * height as usize {
            return Err(ModelError::Input(format!(
                "flat field: {} values for {width}x{height} pixels",
                reference.len()
            )));
        }
        if let Some(bad) = reference.iter().find(|v| !v.is_finite() || **v <= 0.0) {
            return Err(ModelError::Input(format!(
                "flat field: holds {bad}: a reference is a positive brightness at every pixel"
            )));
        }
        let mean = (reference.iter().map(|v| *v as f64).sum::<f64>() / reference.len() as f64) as f32;
        let dark = reference.iter().filter(|v| **v < MIN_RELATIVE * mean).count();
        if dark * 2 > reference.len() {
            return Err(ModelError::Input(format!(
                "flat field: {dark} of {} pixels are below {MIN_RELATIVE} of the mean: not a frame of an evenly lit bed",
                reference.len()
            )));
        }
        let floor = MIN_RELATIVE * mean;
        let gain = reference.iter().map(|v| mean / v.max(floor)).collect();
        Ok(FlatField { width, height, gain })
    }

    /// Multiplies every pixel of `frame` by its gain, in place (allocates nothing).
    pub fn apply(&self, frame: &mut GrayImage) -> Result<(), ModelError> {
        if frame.dimensions() != (self.width, self.height) {
            return Err(ModelError::Input(format!(
                "frame is {}x{} px but the flat field is {}x{}: another camera or camera setting; capture the \
                 reference again with `bedsight calibrate --flat-field`",
                frame.width(),
                frame.height(),
                self.width,
                self.height
            )));
        }
        for (pixel, gain) in frame.iter_mut().zip(&self.gain) {
            *pixel = (*pixel as f32 * gain).round().clamp(0.0, 255.0) as u8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bed lit 2:1 from left to right (brightness 80 at x = 0 rising to 160) under even powder.
    fn graded_bed(width: u32, height: u32) -> GrayImage {
        GrayImage::from_fn(width, height, |x, _| {
            Luma([(80.0 + 80.0 * x as f32 / (width - 1) as f32).round() as u8])
        })
    }

    #[test]
    fn the_gain_is_the_mean_over_the_reference() {
        // reference 50 and 150, mean 100: gains 2 and 2/3
        let field = FlatField::from_reference(2, 1, &[50.0, 150.0]).unwrap();
        assert_eq!(field.gain, vec![2.0, 100.0 / 150.0]);
        let mut frame = GrayImage::from_raw(2, 1, vec![40, 120]).unwrap();
        field.apply(&mut frame).unwrap();
        assert_eq!(frame.into_raw(), vec![80, 80]);
    }

    #[test]
    fn a_graded_bed_comes_out_even_and_a_dark_patch_stays_dark() {
        let bed = graded_bed(256, 128);
        let field = FlatField::from_reference(256, 128, &lighting_reference(&bed)).unwrap();
        let mut frame = bed.clone();
        // a patch at half the local brightness: an uncovered area, not lighting
        for y in 60..70 {
            for x in 100..110 {
                let p = frame.get_pixel_mut(x, y);
                p[0] /= 2;
            }
        }
        field.apply(&mut frame).unwrap();
        // away from the borders (where the low-pass sees the edge) the bed is within a few grey
        // levels of the mean brightness, 120, where it spanned 80..160
        for x in [30u32, 128, 225] {
            let v = frame.get_pixel(x, 20)[0] as i32;
            assert!((v - 120).abs() <= 4, "x {x}: {v}");
        }
        let patch = frame.get_pixel(105, 65)[0] as i32;
        assert!((patch - 60).abs() <= 4, "patch {patch}");
    }

    #[test]
    fn a_frame_of_another_size_is_refused_and_left_as_it_was() {
        let field = FlatField::from_reference(4, 4, &[100.0; 16]).unwrap();
        let mut frame = GrayImage::from_pixel(8, 4, Luma([7]));
        let message = field.apply(&mut frame).unwrap_err().to_string();
        assert!(
            message.contains("frame is 8x4 px but the flat field is 4x4"),
            "{message}"
        );
        assert!(frame.iter().all(|v| *v == 7));
    }

    #[test]
    fn a_reference_that_is_not_lighting_is_refused() {
        assert!(FlatField::from_reference(2, 2, &[1.0, 2.0, 0.0, 1.0])
            .unwrap_err()
            .to_string()
            .contains("holds 0"));
        assert!(FlatField::from_reference(2, 2, &[1.0, 2.0])
            .unwrap_err()
            .to_string()
            .contains("2 values for 2x2"));
        let mostly_black = [100.0, 1.0, 1.0, 1.0];
        assert!(FlatField::from_reference(2, 2, &mostly_black)
            .unwrap_err()
            .to_string()
            .contains("not a frame of an evenly lit bed"));
    }

    #[test]
    fn the_median_of_six_frames_is_the_lower_middle_value_and_a_moving_defect_drops_out() {
        // one pixel over six frames: 10, 20, 30, 40, 50, 60 -> the lower middle, 30
        let frames: Vec<GrayImage> = [40u8, 10, 60, 30, 20, 50]
            .iter()
            .map(|v| GrayImage::from_raw(1, 1, vec![*v]).unwrap())
            .collect();
        assert_eq!(median_frame(&frames).unwrap().into_raw(), vec![30]);
        // a lit bed of 100 with a dark patch (40) at another place on each of 5 frames
        let frames: Vec<GrayImage> = (0..5u32)
            .map(|n| GrayImage::from_fn(5, 1, |x, _| Luma([if x == n { 40 } else { 100 }])))
            .collect();
        assert_eq!(median_frame(&frames).unwrap().into_raw(), vec![100; 5]);
    }

    #[test]
    fn too_few_frames_or_frames_of_two_sizes_are_refused_for_a_median() {
        let four = vec![GrayImage::new(2, 2); 4];
        let message = median_frame(&four).unwrap_err().to_string();
        assert!(
            message.contains("4 frame(s): a median lighting reference needs at least 5"),
            "{message}"
        );
        let mut five = vec![GrayImage::new(2, 2); 5];
        five[3] = GrayImage::new(3, 2);
        let message = median_frame(&five).unwrap_err().to_string();
        assert!(message.contains("frame 4 is 3x2 px and frame 1 2x2"), "{message}");
    }

    #[test]
    fn unlit_pixels_are_not_amplified_past_the_floor() {
        // mean of [10, 190, 100, 100] = 100; 10 < 0.2 * 100 is floored to 20: gain 5, not 10
        let field = FlatField::from_reference(4, 1, &[10.0, 190.0, 100.0, 100.0]).unwrap();
        assert_eq!(field.gain[0], 5.0);
    }
}
