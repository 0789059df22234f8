//! The flat-field reference file (`bedsight calibrate --flat-field`): the bed's lighting in camera
//! pixels, one 32-bit float TIFF channel, read back and checked when the pipeline starts.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::GrayImage;
use models::FlatField;

use crate::record::layer_files::write_float_tiff;

/// Writes the lighting reference of `frame` (a frame of an evenly spread, empty bed) to `path`.
pub fn write(path: &Path, frame: &GrayImage) -> Result<FlatField> {
    let reference = models::lighting_reference(frame);
    let field = FlatField::from_reference(frame.width(), frame.height(), &reference)
        .map_err(|e| anyhow::anyhow!("frame for the flat field: {e}"))?;
    write_float_tiff(path, frame.width(), frame.height(), &reference)?;
    Ok(field)
}

/// Reads a reference that `write` wrote, as the correction for its camera.
pub fn read(path: &Path) -> Result<FlatField> {
    let file = std::fs::File::open(path).with_context(|| format!("flat field {}: cannot read it", path.display()))?;
    let not_ours = |why: String| {
        anyhow::anyhow!(
            "flat field {}: {why}; write it with `bedsight calibrate --flat-field`",
            path.display()
        )
    };
    let mut decoder = tiff::decoder::Decoder::new(std::io::BufReader::new(file))
        .map_err(|e| not_ours(format!("not a TIFF ({e})")))?;
    let (width, height) = decoder.dimensions().map_err(|e| not_ours(e.to_string()))?;
    match decoder.colortype().map_err(|e| not_ours(e.to_string()))? {
        tiff::ColorType::Gray(32) => {}
        other => return Err(not_ours(format!("{other:?} pixels, not one 32-bit float channel"))),
    }
    let values = match decoder.read_image().map_err(|e| not_ours(e.to_string()))? {
        tiff::decoder::DecodingResult::F32(values) => values,
        _ => return Err(not_ours("integer pixels, not 32-bit floats".into())),
    };
    if values.len() != width as usize * height as usize {
        bail!(
            "flat field {}: {} values for {width}x{height} pixels",
            path.display(),
            values.len()
        );
    }
    FlatField::from_reference(width, height, &values).map_err(|e| anyhow::anyhow!("flat field {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn a_reference_written_is_read_back_as_the_same_correction() {
        let dir = tempfile::tempdir().unwrap();
        let frame = GrayImage::from_fn(64, 48, |x, _| Luma([(60 + x) as u8]));
        let written = write(&dir.path().join("flat.tiff"), &frame).unwrap();
        let read_back = read(&dir.path().join("flat.tiff")).unwrap();
        assert_eq!(written, read_back);
        assert_eq!((read_back.width, read_back.height), (64, 48));
    }

    #[test]
    fn a_file_that_is_not_a_reference_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("flat.tiff");
        GrayImage::new(8, 8)
            .save_with_format(&png, image::ImageFormat::Png)
            .unwrap();
        let message = format!("{:#}", read(&png).unwrap_err());
        assert!(message.contains("flat.tiff: not a TIFF"), "{message}");
        let grey8 = dir.path().join("grey8.tiff");
        GrayImage::from_pixel(8, 8, Luma([100])).save(&grey8).unwrap();
        let message = format!("{:#}", read(&grey8).unwrap_err());
        assert!(
            message.contains("grey8.tiff: Gray(8) pixels, not one 32-bit float channel"),
            "{message}"
        );
        let missing = format!("{:#}", read(&dir.path().join("none.tiff")).unwrap_err());
        assert!(missing.contains("none.tiff: cannot read it"), "{missing}");
    }
}
