//! What the images fuzz targets do with one input; shared with the stable suite's replay
//! (images/tests/fuzz_regressions.rs).

/// A model image archive (.bsimg) as it arrives on the box, through the reader `bedsight image
/// verify/install` use: a verified image or one error, never a panic.
pub fn model_image(data: &[u8]) {
    let _ = images::ModelImage::from_bytes(data, "fuzz.bsimg");
}

/// A model image's manifest.toml through the parser and its checks: a manifest or one error.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = images::Manifest::parse(text, "fuzz/manifest.toml");
    }
}
