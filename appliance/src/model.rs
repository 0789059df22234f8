//! Loading a model image into a running backend: the appliance is where the `images` format
//! meets the `models` engine.

use std::path::Path;

use anyhow::{bail, Context, Result};
use images::ModelImage;
use models::{Backend, BackendChoice, ClassInfo, InputSpec, ModelSpec};

/// The model image embedded in the binary (trained by `quantize/scripts/build-default-model.sh`).
pub const EMBEDDED_IMAGE: &[u8] = include_bytes!("../../assets/default.bsimg");
pub const EMBEDDED_IMAGE_NAME: &str = "embedded default.bsimg";

/// A model ready to run: what the manifest says and the backend that runs its graph.
pub struct LoadedModel {
    /// Where it came from: a file path or the embedded image.
    pub origin: String,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub spec: ModelSpec,
    pub class_names: Vec<String>,
    /// Whether each class is a defect (indexed by class).
    pub defect_classes: Vec<bool>,
    /// Which graph of the image runs: `default` or `fp32`.
    pub graph_name: String,
    pub backend: Box<dyn Backend>,
}

impl LoadedModel {
    /// Opens and verifies a model image (`None`: the embedded one) and loads its graph.
    pub fn load(path: Option<&Path>, choice: BackendChoice, prefer_fp32: bool, engine_cache_dir: Option<&Path>) -> Result<LoadedModel> {
        let (origin, image) = match path {
            Some(path) => (path.display().to_string(), ModelImage::open(path)?),
            None => (EMBEDDED_IMAGE_NAME.to_string(), ModelImage::from_bytes(EMBEDDED_IMAGE, EMBEDDED_IMAGE_NAME)?),
        };
        let manifest = &image.manifest;
        let classes: Vec<ClassInfo> =
            manifest.classes.iter().map(|class| ClassInfo { name: class.name.clone(), colour: class.rgb(), defect: class.defect }).collect();
        let spec = ModelSpec {
            input: InputSpec {
                width: manifest.input.width,
                height: manifest.input.height,
                channels: manifest.input.channels,
                mean: manifest.input.mean.clone(),
                std: manifest.input.std.clone(),
            },
            members: manifest.ensemble.members,
            temperatures: manifest.ensemble.temperatures.clone(),
            classes,
        };
        let (graph_name, graph) = if prefer_fp32 { ("fp32", image.fp32_graph()) } else { ("default", image.default_graph()) };
        let backend = models::load_backend(choice, graph, &spec, engine_cache_dir).with_context(|| format!("model image {origin}"))?;
        Ok(LoadedModel {
            origin,
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            architecture: manifest.architecture.clone(),
            class_names: spec.classes.iter().map(|c| c.name.clone()).collect(),
            defect_classes: spec.classes.iter().map(|c| c.defect).collect(),
            spec,
            graph_name: graph_name.to_string(),
            backend,
        })
    }

    /// "ort (CPU)" or "tract".
    pub fn backend_label(&self) -> String {
        let info = self.backend.info();
        if info.name == info.execution_provider {
            info.name.clone()
        } else {
            format!("{} ({})", info.name, info.execution_provider)
        }
    }

    /// Class indices for a list of class names from the configuration.
    pub fn class_indices(&self, names: &[String]) -> Result<Vec<u8>> {
        names
            .iter()
            .map(|name| match self.class_names.iter().position(|c| c == name) {
                Some(index) => Ok(index as u8),
                None => bail!("model {}: no class {name:?}", self.origin),
            })
            .collect()
    }
}
