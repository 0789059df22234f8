//! The files a person or a labelling tool reads back for one layer: the class mask, the
//! uncertainty map and the overlay of defects on the bed.

use std::path::Path;

use anyhow::{Context, Result};
use image::{GrayImage, Rgb, RgbImage, Rgba, RgbaImage};
use imageproc::drawing::draw_hollow_rect_mut;
use imageproc::rect::Rect;
use models::{ClassInfo, Defect, Fused};

/// Heat-layer colour for uncertain pixels (orange: none of the class colours).
const HEAT_RGB: [f32; 3] = [255.0, 149.0, 0.0];
/// The uncertainty (seed 000 Eq. 13, summed over classes) at which the heat layer is fully on.
const HEAT_FULL_SCALE: f32 = 0.25;

/// Writes `<stem>.mask.png`, `<stem>.uncertainty.tiff` and `<stem>.overlay.png` into `dir`.
pub fn write_layer_files(
    dir: &Path,
    stem: &str,
    bed: &GrayImage,
    fused: &Fused,
    classes: &[ClassInfo],
    defects: &[Defect],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("output folder {}: cannot create it", dir.display()))?;
    let (width, height) = (fused.width as u32, fused.height as u32);

    let mask_path = dir.join(format!("{stem}.mask.png"));
    GrayImage::from_raw(width, height, fused.mask.clone())
        .expect("mask is width x height")
        .save(&mask_path)
        .with_context(|| format!("cannot write {}", mask_path.display()))?;

    let uncertainty_path = dir.join(format!("{stem}.uncertainty.tiff"));
    write_float_tiff(&uncertainty_path, width, height, &fused.uncertainty)?;

    let overlay_path = dir.join(format!("{stem}.overlay.png"));
    overlay(bed, fused, classes, defects)
        .save(&overlay_path)
        .with_context(|| format!("cannot write {}", overlay_path.display()))?;
    Ok(())
}

/// A 32-bit float, single-channel TIFF: the uncertainty map with its real values.
pub fn write_float_tiff(path: &Path, width: u32, height: u32, values: &[f32]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(file))?;
    encoder
        .write_image::<tiff::encoder::colortype::Gray32Float>(width, height, values)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The bed in grey, every non-background class tinted in its colour, uncertainty as an orange
/// heat layer on top, and a box around each measured defect.
pub fn overlay(bed: &GrayImage, fused: &Fused, classes: &[ClassInfo], defects: &[Defect]) -> RgbImage {
    tinted_bed(bed, &fused.mask, Some(&fused.uncertainty), classes, defects)
}

/// The bed in grey with each class of `mask` tinted in its colour, the heat layer of
/// `uncertainty` when given, and a box around each defect.
pub fn tinted_bed(
    bed: &GrayImage,
    mask: &[u8],
    uncertainty: Option<&[f32]>,
    classes: &[ClassInfo],
    defects: &[Defect],
) -> RgbImage {
    let mut picture = RgbImage::new(bed.width(), bed.height());
    for (index, (pixel, grey)) in picture.pixels_mut().zip(bed.pixels()).enumerate() {
        let grey = grey.0[0] as f32;
        let mut rgb = [grey; 3];
        let class = mask[index] as usize;
        if class != 0 {
            if let Some(info) = classes.get(class) {
                for (channel, value) in rgb.iter_mut().enumerate() {
                    *value = 0.45 * *value + 0.55 * info.colour[channel] as f32;
                }
            }
        }
        if let Some(uncertainty) = uncertainty {
            let heat = heat_share(uncertainty[index]);
            for (channel, value) in rgb.iter_mut().enumerate() {
                *value = (1.0 - heat) * *value + heat * HEAT_RGB[channel];
            }
        }
        *pixel = Rgb(rgb.map(|v| v.round().clamp(0.0, 255.0) as u8));
    }
    for defect in defects {
        let [x, y, w, h] = defect.bbox;
        let colour = classes
            .get(defect.class as usize)
            .map(|c| c.colour)
            .unwrap_or([255, 255, 255]);
        let outer = Rect::at(x as i32 - 2, y as i32 - 2).of_size(w + 4, h + 4);
        draw_hollow_rect_mut(&mut picture, outer, Rgb(colour));
    }
    picture
}

/// The heat layer alone: orange, as opaque as the pixel is uncertain (0.7 at full scale), for
/// a page to lay over the bed.
pub fn heatmap(width: u32, height: u32, uncertainty: &[f32]) -> RgbaImage {
    let rgb = HEAT_RGB.map(|v| v as u8);
    RgbaImage::from_fn(width, height, |x, y| {
        let alpha = heat_share(uncertainty[(y * width + x) as usize]);
        Rgba([rgb[0], rgb[1], rgb[2], (alpha * 255.0).round() as u8])
    })
}

fn heat_share(uncertainty: f32) -> f32 {
    (uncertainty / HEAT_FULL_SCALE).clamp(0.0, 1.0) * 0.7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_three_files_with_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut fused = Fused::new(4, 2, 2);
        fused.mask[5] = 1;
        fused.uncertainty[5] = 0.125;
        let classes = vec![
            ClassInfo {
                name: "background".into(),
                colour: [0, 0, 0],
                defect: false,
            },
            ClassInfo {
                name: "streaking".into(),
                colour: [0, 255, 0],
                defect: true,
            },
        ];
        let bed = GrayImage::from_pixel(4, 2, image::Luma([100]));
        write_layer_files(dir.path(), "layer", &bed, &fused, &classes, &[]).unwrap();

        let mask = image::open(dir.path().join("layer.mask.png")).unwrap().into_luma8();
        assert_eq!(mask.get_pixel(1, 1).0[0], 1);
        assert_eq!(mask.get_pixel(0, 0).0[0], 0);

        let mut decoder =
            tiff::decoder::Decoder::new(std::fs::File::open(dir.path().join("layer.uncertainty.tiff")).unwrap())
                .unwrap();
        assert_eq!(decoder.dimensions().unwrap(), (4, 2));
        match decoder.read_image().unwrap() {
            tiff::decoder::DecodingResult::F32(values) => assert_eq!(values[5], 0.125),
            other => panic!(
                "uncertainty TIFF is not 32-bit float: {:?}",
                std::mem::discriminant(&other)
            ),
        }

        let overlay = image::open(dir.path().join("layer.overlay.png")).unwrap().into_rgb8();
        assert_eq!(overlay.get_pixel(0, 0).0, [100, 100, 100]);
        // Pixel (1,1): class tint 0.45*100 + 0.55*[0,255,0] = [45, 185.25, 45], then heat 0.35 of orange.
        let expected = [45.0 * 0.65 + 0.35 * 255.0, 185.25 * 0.65 + 0.35 * 149.0, 45.0 * 0.65];
        let got = overlay.get_pixel(1, 1).0;
        for channel in 0..3 {
            assert!(
                (got[channel] as f32 - expected[channel]).abs() <= 1.0,
                "{got:?} vs {expected:?}"
            );
        }
    }
}
