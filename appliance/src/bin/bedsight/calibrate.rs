//! `bedsight calibrate`: helps an integrator find and check the bed corners once, when the box
//! is bolted on. Without corners in the configuration it writes the frame with a labelled pixel
//! grid to read them off; with corners it prints the homography and writes the rectified bed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_cross_mut, draw_line_segment_mut};

use appliance::config::Config;
use appliance::judge::frame_check::FrameChecker;

/// Long side of the rectified image written for a person to check, in pixels.
const CHECK_LONG_SIDE_PX: u32 = 1024;
/// Spacing of the grid drawn on a frame without corners, in camera pixels.
const GRID_STEP_PX: u32 = 100;

/// Writes the check images next to `out_stem` (`<stem>.rectified.png`, `<stem>.corners.png` or
/// `<stem>.grid.png`) and returns the paths written.
pub fn calibrate(config_path: &Path, frame_path: &Path, out_stem: &Path) -> Result<Vec<PathBuf>> {
    let config = Config::load(config_path)?;
    let frame = image::open(frame_path)
        .with_context(|| format!("frame {}: not a readable image", frame_path.display()))?
        .to_luma8();
    println!(
        "frame {}: {}x{} px",
        frame_path.display(),
        frame.width(),
        frame.height()
    );
    let with_suffix = |suffix: &str| PathBuf::from(format!("{}.{suffix}.png", out_stem.display()));

    let Some(corners) = config.bed.corners_px else {
        let grid_path = with_suffix("grid");
        grid(&frame)
            .save(&grid_path)
            .with_context(|| format!("cannot write {}", grid_path.display()))?;
        println!("configuration {}: bed.corners_px is not set.", config_path.display());
        println!(
            "Open {} (grid lines every {GRID_STEP_PX} px), read the bed's corners",
            grid_path.display()
        );
        println!("(top-left, top-right, bottom-right, bottom-left, recoater travelling left to right) and set");
        println!("  corners_px = [[x, y], [x, y], [x, y], [x, y]]");
        println!("in the [bed] table, then run calibrate again to check the rectified bed.");
        return Ok(vec![grid_path]);
    };

    let (bed_w, bed_h) = (config.bed.width_mm, config.bed.height_mm);
    let scale = CHECK_LONG_SIDE_PX as f64 / bed_w.max(bed_h);
    let (out_w, out_h) = (
        ((bed_w * scale).round() as u32).max(2),
        ((bed_h * scale).round() as u32).max(2),
    );
    let rectifier = models::Rectifier::new(corners, out_w, out_h)
        .map_err(|e| anyhow::anyhow!("configuration {}: bed.corners_px: {e}", config_path.display()))?;

    let h = rectifier.homography();
    println!(
        "homography, camera px -> rectified px ({out_w}x{out_h}, {:.4} mm per px):",
        bed_w / out_w as f64
    );
    for row in h.chunks(3) {
        println!("  [{:>14.6e} {:>14.6e} {:>14.6e}]", row[0], row[1], row[2]);
    }
    for (name, [x, y]) in ["top-left", "top-right", "bottom-right", "bottom-left"]
        .iter()
        .zip(corners)
    {
        let (bx, by) = rectifier.camera_to_bed(x, y);
        println!(
            "  {name:<12} camera ({x:>7.1}, {y:>7.1}) -> bed ({:>7.2}, {:>7.2}) mm",
            bx as f64 / scale,
            by as f64 / scale
        );
    }

    let rectified_path = with_suffix("rectified");
    rectifier
        .rectify(&frame)
        .save(&rectified_path)
        .with_context(|| format!("cannot write {}", rectified_path.display()))?;
    let corners_path = with_suffix("corners");
    outline(&frame, corners)
        .save(&corners_path)
        .with_context(|| format!("cannot write {}", corners_path.display()))?;
    println!(
        "wrote {} (the bed as the model will see it) and {} (the corners on the frame)",
        rectified_path.display(),
        corners_path.display()
    );
    Ok(vec![rectified_path, corners_path])
}

/// Writes `<stem>.flat-field.tiff`, the lighting of one frame of an evenly spread, empty bed (or
/// of the per-pixel median of several frames of recoated layers), and says how to use it.
pub fn write_flat_field(frame_paths: &[PathBuf], out_stem: &Path) -> Result<PathBuf> {
    let frames = frame_paths
        .iter()
        .map(|p| {
            image::open(p)
                .with_context(|| format!("frame {}: not a readable image", p.display()))
                .map(|f| f.to_luma8())
        })
        .collect::<Result<Vec<_>>>()?;
    let (frame, source) = match frames.as_slice() {
        [one] => (one.clone(), frame_paths[0].display().to_string()),
        _ => (
            models::median_frame(&frames).map_err(|e| anyhow::anyhow!("--frame for the flat field: {e}"))?,
            format!("the median of {} frames", frames.len()),
        ),
    };
    let path = PathBuf::from(format!("{}.flat-field.tiff", out_stem.display()));
    let field = appliance::record::flat_field::write(&path, &frame).with_context(|| source.clone())?;
    let (low, high) = field
        .gain
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), g| (lo.min(*g), hi.max(*g)));
    println!(
        "wrote {}: the lighting of {} ({}x{} camera px); it brightens the bed by up to x{high:.2} and darkens it by up to x{low:.2}",
        path.display(),
        source,
        field.width,
        field.height
    );
    println!(
        "set  flat_field = \"{}\"  in the [bed] table to correct every frame of this camera with it.",
        path.display()
    );
    Ok(path)
}

/// Writes `<stem>.frame-reference.png`, the frame in grey as the commissioning reference of the
/// frame checks, and says what the checks will compare and how to use it.
pub fn write_frame_reference(config_path: &Path, frame_path: &Path, out_stem: &Path) -> Result<PathBuf> {
    let config = Config::load(config_path)?;
    let frame = image::open(frame_path)
        .with_context(|| format!("frame {}: not a readable image", frame_path.display()))?
        .to_luma8();
    let path = PathBuf::from(format!("{}.frame-reference.png", out_stem.display()));
    frame
        .save(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let summary = FrameChecker::summarise_reference(&frame, &config);
    println!(
        "wrote {}: the commissioning frame ({}x{} px); fine detail {:.4}, contrast {:.4} of its brightness",
        path.display(),
        frame.width(),
        frame.height(),
        summary.sharpness,
        summary.contrast
    );
    if config.bed.corners_px.is_none() {
        println!("bed.corners_px is not set: the camera check (max_camera_shift_mm) needs it and will not run.");
    } else if summary.usable_edges.len() < 2 {
        println!(
            "only {} of the 8 halves of the bed's edges stand out from what is around them: the camera check needs 2; \
             set bed.corners_px on the bed's visible edges and capture again.",
            summary.usable_edges.len()
        );
    } else {
        println!(
            "the camera check will follow the bed's border and its {}.",
            summary.usable_edges.join(", ")
        );
    }
    println!(
        "set  reference = \"{}\"  in the [frame_check] table to check every frame against it.",
        path.display()
    );
    Ok(path)
}

/// The frame with a grid line every GRID_STEP_PX pixels, brighter every 500.
fn grid(frame: &image::GrayImage) -> RgbImage {
    let mut picture = image::DynamicImage::ImageLuma8(frame.clone()).to_rgb8();
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    for x in (0..frame.width()).step_by(GRID_STEP_PX as usize) {
        let colour = if x % 500 == 0 {
            Rgb([255, 64, 64])
        } else {
            Rgb([64, 200, 255])
        };
        draw_line_segment_mut(&mut picture, (x as f32, 0.0), (x as f32, h - 1.0), colour);
    }
    for y in (0..frame.height()).step_by(GRID_STEP_PX as usize) {
        let colour = if y % 500 == 0 {
            Rgb([255, 64, 64])
        } else {
            Rgb([64, 200, 255])
        };
        draw_line_segment_mut(&mut picture, (0.0, y as f32), (w - 1.0, y as f32), colour);
    }
    picture
}

/// The frame with the configured bed outline and a cross on each corner.
fn outline(frame: &image::GrayImage, corners: [[f32; 2]; 4]) -> RgbImage {
    let mut picture = image::DynamicImage::ImageLuma8(frame.clone()).to_rgb8();
    for i in 0..4 {
        let ([x0, y0], [x1, y1]) = (corners[i], corners[(i + 1) % 4]);
        draw_line_segment_mut(&mut picture, (x0, y0), (x1, y1), Rgb([255, 59, 48]));
        draw_cross_mut(&mut picture, Rgb([255, 204, 0]), x0 as i32, y0 as i32);
    }
    picture
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tilted_bed_comes_out_square_with_its_corners_on_the_rectified_corners() {
        let dir = tempfile::tempdir().unwrap();
        // A 200x100 mm bed seen as a quadrilateral in a 400x300 frame: bright inside, dark outside.
        let corners = [[50.0f32, 40.0], [350.0, 60.0], [330.0, 250.0], [70.0, 230.0]];
        let frame = image::GrayImage::from_fn(400, 300, |x, y| {
            let inside = models::Rectifier::new(corners, 200, 100)
                .unwrap()
                .camera_to_bed(x as f32, y as f32);
            let lit = (0.0..=199.0).contains(&inside.0) && (0.0..=99.0).contains(&inside.1);
            image::Luma([if lit { 200 } else { 20 }])
        });
        let frame_path = dir.path().join("frame.png");
        frame.save(&frame_path).unwrap();
        let config_path = dir.path().join("box.toml");
        std::fs::write(&config_path, "[bed]\nwidth_mm = 200\nheight_mm = 100\ncorners_px = [[50.0, 40.0], [350.0, 60.0], [330.0, 250.0], [70.0, 230.0]]\n").unwrap();
        let written = calibrate(&config_path, &frame_path, &dir.path().join("check")).unwrap();
        let rectified = image::open(&written[0]).unwrap().into_luma8();
        assert_eq!(rectified.dimensions(), (1024, 512));
        // The whole rectified image is the bright bed (edges blend over a few upscaled pixels).
        let dark = rectified
            .enumerate_pixels()
            .filter(|(x, y, p)| *x > 5 && *y > 5 && *x < 1018 && *y < 506 && p.0[0] < 150)
            .count();
        assert_eq!(dark, 0);
    }

    #[test]
    fn without_corners_it_writes_a_grid_to_read_them_from() {
        let dir = tempfile::tempdir().unwrap();
        let frame_path = dir.path().join("frame.png");
        image::GrayImage::from_pixel(250, 120, image::Luma([90]))
            .save(&frame_path)
            .unwrap();
        let config_path = dir.path().join("box.toml");
        std::fs::write(&config_path, "[bed]\nwidth_mm = 250\nheight_mm = 250\n").unwrap();
        let written = calibrate(&config_path, &frame_path, &dir.path().join("check")).unwrap();
        let grid = image::open(&written[0]).unwrap().into_rgb8();
        assert_eq!(grid.get_pixel(100, 50).0, [64, 200, 255]);
        assert_eq!(grid.get_pixel(0, 50).0, [255, 64, 64]);
        assert_eq!(grid.get_pixel(150, 50).0, [90, 90, 90]);
    }
}
