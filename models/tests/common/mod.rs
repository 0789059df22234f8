//! Shared by the integration tests: the project's default model and its manifest.

#![allow(dead_code)]

use std::path::PathBuf;

use models::{ClassInfo, InputSpec, LayerHeadSpec, ModelSpec};

/// The default trained model: `assets/default-model/` at the workspace root (`model.onnx` and
/// `manifest.toml`, written by `quantize/scripts/build-default-model.sh`).
/// `BEDSIGHT_DEFAULT_MODEL_DIR` points the tests at another folder of the same layout.
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os("BEDSIGHT_DEFAULT_MODEL_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/default-model"),
    }
}

/// The default model's fp32 graph and its spec, read from its manifest. Panics with what to do
/// when the model is not there: these tests never skip silently.
pub fn default_model() -> (Vec<u8>, ModelSpec) {
    let dir = default_model_dir();
    let graph_path = dir.join("model.onnx");
    let manifest_path = dir.join("manifest.toml");
    let graph = std::fs::read(&graph_path).unwrap_or_else(|e| {
        panic!(
            "the default model {} is missing ({e}); build it with quantize/scripts/build-default-model.sh \
             (or set BEDSIGHT_DEFAULT_MODEL_DIR to a folder holding model.onnx and manifest.toml)",
            graph_path.display()
        )
    });
    let text = std::fs::read_to_string(&manifest_path).unwrap_or_else(|e| {
        panic!(
            "the default model's manifest {} is missing ({e})",
            manifest_path.display()
        )
    });
    (graph, spec_from_manifest(&text))
}

/// A model image with a layer-level head (tests/data/layer-head-256.bsimg: the 256 x 256 default
/// image before the real-bed model, which has none): its fp32 graph and its spec.
pub fn layer_head_model() -> (Vec<u8>, ModelSpec) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/layer-head-256.bsimg");
    let image = images::ModelImage::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8(image.manifest_bytes.clone()).expect("manifest.toml is UTF-8");
    (image.fp32_graph().to_vec(), spec_from_manifest(&text))
}

/// The parts of a manifest (docs/model-image.md) that make a [`ModelSpec`].
pub fn spec_from_manifest(text: &str) -> ModelSpec {
    let manifest: toml::Table = text.parse().expect("manifest.toml is not valid TOML");
    let input = manifest["input"].as_table().expect("[input]");
    let ensemble = manifest["ensemble"].as_table().expect("[ensemble]");
    let floats = |value: &toml::Value| -> Vec<f32> {
        value
            .as_array()
            .expect("an array")
            .iter()
            .map(|v| v.as_float().or(v.as_integer().map(|i| i as f64)).unwrap() as f32)
            .collect()
    };
    let integer = |table: &toml::Table, key: &str| {
        table[key]
            .as_integer()
            .unwrap_or_else(|| panic!("{key} is not an integer"))
    };
    let classes = manifest["classes"]
        .as_array()
        .expect("[[classes]]")
        .iter()
        .map(|class| {
            let class = class.as_table().unwrap();
            let colour = class.get("colour").and_then(|c| c.as_str()).unwrap_or("#000000");
            let rgb = u32::from_str_radix(colour.trim_start_matches('#'), 16).unwrap_or(0);
            ClassInfo {
                name: class["name"].as_str().unwrap().to_string(),
                colour: [(rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8],
                defect: class.get("defect").and_then(|d| d.as_bool()).unwrap_or(false),
            }
        })
        .collect();
    ModelSpec {
        input: InputSpec {
            width: integer(input, "width") as u32,
            height: integer(input, "height") as u32,
            channels: integer(input, "channels") as u32,
            mean: floats(&input["mean"]),
            std: floats(&input["std"]),
        },
        members: integer(ensemble, "members") as usize,
        temperatures: floats(&ensemble["temperatures"]),
        classes,
        features: manifest
            .get("domain")
            .map(|domain| domain["feature_size"].as_integer().expect("domain.feature_size") as usize),
        layer_head: manifest.get("layer_head").map(|head| LayerHeadSpec {
            classes: head["classes"]
                .as_array()
                .expect("layer_head.classes")
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect(),
            temperature: head["temperature"].as_float().unwrap() as f32,
        }),
    }
}

/// A synthetic powder bed: a grey ramp with a bright blob, a dark streak and some texture, so
/// that the model has something to segment.
pub fn synthetic_bed(width: u32, height: u32) -> image::GrayImage {
    image::GrayImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let mut value = 110.0 + 30.0 * fx + 10.0 * ((x * 7 + y * 13) % 5) as f32;
        if (fx - 0.3).powi(2) + (fy - 0.4).powi(2) < 0.01 {
            value = 235.0;
        }
        if (fy - 0.7).abs() < 0.02 {
            value = 40.0;
        }
        image::Luma([value.min(255.0) as u8])
    })
}
