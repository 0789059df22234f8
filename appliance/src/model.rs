//! Loading a model image into a running backend: the appliance is where the `images` format
//! meets the `models` engine.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use images::{ActiveGeneration, Manifest, ModelImage, SelfTestOutcome, Slots};
use models::{Backend, BackendChoice, ClassInfo, InputSpec, ModelSpec};

use crate::config::Config;
use crate::judge::decide::decide;

/// Which of a model image's graphs runs (`[model] precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// INT8 where the execution provider runs it faster than fp32 (TensorRT); fp32 on ONNX
    /// Runtime's CPU and CUDA providers and on tract, where the INT8 graph is slower (measured
    /// in docs/performance.md) and, on tract, judges differently.
    Auto,
    /// The image's INT8 graph, whatever runs it.
    Int8,
    /// The image's fp32 graph.
    Fp32,
}

/// The model image embedded in the binary (trained by `quantize/scripts/build-default-model.sh`).
pub const EMBEDDED_IMAGE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/default.bsimg"));
pub const EMBEDDED_IMAGE_NAME: &str = "embedded default.bsimg";

/// A model ready to run: what the manifest says and the backend that runs its graph.
pub struct LoadedModel {
    /// Where it came from: a file path or the embedded image.
    pub origin: String,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub spec: ModelSpec,
    /// The classes' names in class-index order; shared, so that each layer's result can carry
    /// them to the control loop without copying them.
    pub class_names: Arc<[String]>,
    /// Whether each class is a defect (indexed by class).
    pub defect_classes: Vec<bool>,
    /// The domain check's statistics (model format 1.2); `None` for an image without them.
    pub domain: Option<images::DomainTable>,
    /// Which graph of the image runs: `int8` or `fp32`.
    pub graph_name: String,
    /// Which graph runs and why, for the start-up lines and `bench`: "fp32 (precision auto: ...)".
    pub precision_note: String,
    pub backend: Box<dyn Backend>,
}

impl LoadedModel {
    /// Opens and verifies a model image (`None`: the embedded one) and loads its graph.
    pub fn load(
        path: Option<&Path>,
        choice: BackendChoice,
        precision: Precision,
        engine_cache_dir: Option<&Path>,
    ) -> Result<LoadedModel> {
        let (origin, image) = match path {
            Some(path) => (path.display().to_string(), ModelImage::open(path)?),
            None => (
                EMBEDDED_IMAGE_NAME.to_string(),
                ModelImage::from_bytes(EMBEDDED_IMAGE, EMBEDDED_IMAGE_NAME)?,
            ),
        };
        Self::from_image(origin, &image, choice, precision, engine_cache_dir)
    }

    /// Loads the model image that is active in the slots under `state_dir` (what `bedsight image
    /// install` activated), with TensorRT's engine cache in [`engine_cache_dir`] of the state
    /// folder, where install built it. Returns the model and the [`ActiveGeneration`] it was
    /// loaded from; `None` when no image is installed. A running loop compares
    /// `images::active_generation(state_dir)` with the generation between layers and calls this
    /// again when it differs.
    ///
    /// The slot's archive is verified again as it is read (every sha256) and must be the image
    /// the slot's status names. An interrupted install is cleaned up first.
    pub fn load_active(
        state_dir: &Path,
        choice: BackendChoice,
        precision: Precision,
    ) -> Result<Option<(LoadedModel, ActiveGeneration)>> {
        let slots = Slots::open(state_dir)?;
        let Some((slot, path, status)) = slots.active_image()? else {
            return Ok(None);
        };
        let image = ModelImage::open(&path)?;
        if image.manifest_sha256() != status.manifest_sha256 {
            bail!(
                "model image {}: its manifest sha256 is {}, the slot's status.toml says {}: the slot was changed after install; install the image again or roll back",
                path.display(),
                image.manifest_sha256(),
                status.manifest_sha256
            );
        }
        let origin = format!("slot {slot} ({})", path.display());
        let model = Self::from_image(origin, &image, choice, precision, Some(&engine_cache_dir(state_dir)))?;
        Ok(Some((
            model,
            ActiveGeneration {
                slot,
                manifest_sha256: status.manifest_sha256,
            },
        )))
    }

    /// Loads the graph of a verified model image that `precision` chooses (see [`Precision`]);
    /// `origin` names it in errors.
    pub fn from_image(
        origin: String,
        image: &ModelImage,
        choice: BackendChoice,
        precision: Precision,
        engine_cache_dir: Option<&Path>,
    ) -> Result<LoadedModel> {
        Self::from_graphs(
            origin,
            &image.manifest,
            image.int8_graph(),
            image.fp32_graph(),
            choice,
            precision,
            engine_cache_dir,
        )
    }

    /// [`LoadedModel::from_image`] on graphs given as bytes: the INT8 one if there is one, and the
    /// fp32 one.
    pub fn from_graphs(
        origin: String,
        manifest: &Manifest,
        int8_graph: Option<&[u8]>,
        fp32_graph: &[u8],
        choice: BackendChoice,
        precision: Precision,
        engine_cache_dir: Option<&Path>,
    ) -> Result<LoadedModel> {
        let has_int8 = int8_graph.is_some();
        let load = |name: &str, graph: &[u8]| {
            let file = if name == "fp32" {
                &manifest.graphs.fp32
            } else {
                &manifest.graphs.default
            };
            Self::from_graph(origin.clone(), manifest, name, graph, choice, engine_cache_dir).with_context(
                || match file.is_empty() {
                    true => format!("its {name} graph"),
                    false => format!("its {name} graph ({file})"),
                },
            )
        };
        let fp32 = || load("fp32", fp32_graph);
        let int8 = || load("int8", int8_graph.unwrap_or_default());
        let (mut model, note) = match precision {
            Precision::Fp32 => (fp32()?, "precision = \"fp32\"".to_string()),
            Precision::Int8 if !has_int8 => {
                bail!("model image {origin}: it holds no INT8 graph, and precision = \"int8\" asks for one; use auto or fp32")
            }
            Precision::Int8 => (int8()?, "precision = \"int8\"".to_string()),
            Precision::Auto if !has_int8 => (fp32()?, "precision auto: the image holds no INT8 graph".to_string()),
            Precision::Auto if models::tensorrt_built_in(choice) => {
                let model = int8()?;
                if model.backend.info().execution_provider == "TensorRT" {
                    (model, "precision auto: TensorRT runs INT8 faster than fp32".to_string())
                } else {
                    let provider = model.backend_label();
                    drop(model);
                    let note = format!(
                        "precision auto: TensorRT did not take the session, and on {provider} INT8 is slower than fp32"
                    );
                    (fp32()?, note)
                }
            }
            Precision::Auto => {
                let model = fp32()?;
                let note = format!(
                    "precision auto: on {} the INT8 graph is slower than fp32; INT8 runs on TensorRT",
                    model.backend_label()
                );
                (model, note)
            }
        };
        model.precision_note = format!("{} graph ({note})", model.graph_name);
        Ok(model)
    }

    /// Loads `graph` (ONNX bytes) described by `manifest`; `graph_name` says which of the
    /// image's graphs it is (`int8`, `fp32`). `origin` names it in errors.
    pub fn from_graph(
        origin: String,
        manifest: &Manifest,
        graph_name: &str,
        graph: &[u8],
        choice: BackendChoice,
        engine_cache_dir: Option<&Path>,
    ) -> Result<LoadedModel> {
        let spec = spec_of(manifest);
        let backend = models::load_backend(choice, graph, &spec, engine_cache_dir)
            .with_context(|| format!("model image {origin}"))?;
        Ok(LoadedModel {
            origin,
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            architecture: manifest.architecture.clone(),
            class_names: spec.classes.iter().map(|c| c.name.clone()).collect(),
            defect_classes: spec.classes.iter().map(|c| c.defect).collect(),
            domain: manifest.domain.clone(),
            spec,
            graph_name: graph_name.to_string(),
            precision_note: format!("{graph_name} graph"),
            backend,
        })
    }

    /// Runs an image's golden self-test through the real pipeline maths: the input layer
    /// (`selftest/input.png`) through `models::preprocess_gray` (or `preprocess` for colour
    /// models), this model's backend and `models::fuse`, then compares the argmax mask with
    /// `selftest/expected_mask.png`: the share of pixels that agree, the IoU of each defect class
    /// (the caller, `images::Slots::install`, decides whether they are enough), and the verdict
    /// that `config`'s rules give on each mask, which must be the same (an error otherwise).
    pub fn selftest(&mut self, image: &ModelImage, config: &Config) -> Result<SelfTestOutcome> {
        let (input_png, expected_png) = image
            .selftest()
            .with_context(|| format!("model image {}: it holds no self-test sample", image.path.display()))?;
        let origin = image.path.display();
        let input_image = image::load_from_memory_with_format(input_png, image::ImageFormat::Png)
            .with_context(|| format!("model image {origin}: selftest/input.png is not a readable PNG"))?;
        let expected = image::load_from_memory_with_format(expected_png, image::ImageFormat::Png)
            .with_context(|| format!("model image {origin}: selftest/expected_mask.png is not a readable PNG"))?
            .to_luma8();
        let input = &self.spec.input;
        if expected.dimensions() != (input.width, input.height) {
            bail!(
                "model image {origin}: selftest/expected_mask.png is {}x{} px, the model's output is {}x{}",
                expected.width(),
                expected.height(),
                input.width,
                input.height
            );
        }
        let mut tensor = vec![0.0f32; input.len()];
        if input.channels == 1 {
            models::preprocess_gray(&input_image.to_luma8(), input, &mut tensor)
        } else {
            models::preprocess(&input_image, input, &mut tensor)
        }
        .with_context(|| format!("model image {origin}: selftest/input.png"))?;
        let mut fused = models::Fused::new(input.width as usize, input.height as usize, self.spec.classes.len());
        let logits = self
            .backend
            .infer(&tensor)
            .with_context(|| format!("model image {origin}: running the self-test input"))?;
        models::fuse(logits, self.spec.members, &self.spec.temperatures, &mut fused);
        let want = expected.as_raw();
        let agreeing = fused.mask.iter().zip(want).filter(|(got, want)| got == want).count();
        let pixels = fused.mask.len();

        let class_iou = self
            .spec
            .classes
            .iter()
            .enumerate()
            .filter(|(_, class)| class.defect)
            .filter_map(|(index, _)| {
                let class = index as u8;
                let (mut got, mut wanted, mut both) = (0u64, 0u64, 0u64);
                for (g, w) in fused.mask.iter().zip(want) {
                    got += u64::from(*g == class);
                    wanted += u64::from(*w == class);
                    both += u64::from(*g == class && *w == class);
                }
                (got.max(wanted) >= images::SELFTEST_CLASS_MIN_PIXELS).then(|| {
                    (
                        self.class_names[index].clone(),
                        both as f64 / (got + wanted - both) as f64,
                    )
                })
            })
            .collect();

        let outcome = SelfTestOutcome {
            agreement: agreeing as f64 / pixels.max(1) as f64,
            pixels: pixels as u64,
            backend: self.backend_label(),
            graph: self.graph_name.clone(),
            class_iou,
        };
        if outcome.failure().is_some() {
            // The pixels already disagree; the caller refuses with the figures.
            return Ok(outcome);
        }

        // The verdict by the rules on either mask, with the same uncertainty map.
        let mut expected_fused = fused.clone();
        expected_fused.mask.copy_from_slice(want);
        let got_decision = self.decide_on(&fused, config);
        let expected_decision = self.decide_on(&expected_fused, config);
        if got_decision.verdict != expected_decision.verdict {
            bail!(
                "model image {origin}: the self-test input is judged {} ({}) where selftest/expected_mask.png gives {} ({}), by the rules of the configuration",
                got_decision.verdict,
                reasons_or_none(&got_decision.reasons),
                expected_decision.verdict,
                reasons_or_none(&expected_decision.reasons)
            );
        }
        Ok(outcome)
    }

    /// The rules' decision on a fused mask (measured as the pipeline measures a layer).
    fn decide_on(&self, fused: &models::Fused, config: &Config) -> crate::judge::decide::Decision {
        let input = &self.spec.input;
        let mm_per_px = crate::judge::pipeline::pixel_pitch_mm(config, input.width, input.height);
        let mut buffers = models::MeasureBuffers::for_pixels(fused.mask.len());
        let mut defects = Vec::new();
        models::measure_into(
            fused,
            &self.spec.classes,
            mm_per_px,
            config.model.min_defect_area_px(mm_per_px),
            &mut buffers,
            &mut defects,
        );
        decide(config, &self.class_names, &self.defect_classes, &defects, fused)
    }

    /// Whether layers are checked against the training data, for the start-up lines.
    pub fn domain_note(&self) -> String {
        match &self.domain {
            Some(domain) => format!(
                "domain check on (threshold {:.2}: the {:.0}% quantile of {} validation layers' scores)",
                domain.threshold,
                domain.threshold_quantile * 100.0,
                domain.validation_layers
            ),
            None => "no domain check (the image has no [domain] table: format 1.2 added it)".to_string(),
        }
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

fn reasons_or_none(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "no rule fired".to_string()
    } else {
        reasons.join("; ")
    }
}

/// What the backends and the pipeline need to know of a model, from its manifest.
pub fn spec_of(manifest: &Manifest) -> ModelSpec {
    let classes: Vec<ClassInfo> = manifest
        .classes
        .iter()
        .map(|class| ClassInfo {
            name: class.name.clone(),
            colour: class.rgb(),
            defect: class.defect,
        })
        .collect();
    ModelSpec {
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
        features: manifest.domain.as_ref().map(|domain| domain.feature_size),
        layer_head: manifest.layer_head.as_ref().map(|head| models::LayerHeadSpec {
            classes: head.classes.clone(),
            temperature: head.temperature,
        }),
    }
}

/// Where TensorRT keeps the engines it builds for the images in a state folder: built when an
/// image is installed (its self-test loads the graph), reused when the loop loads it.
pub fn engine_cache_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("engine-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded image installed into a slot (self-test through the real maths on tract), then
    /// loaded back as the active model, with the generation a running loop compares.
    #[test]
    fn an_installed_image_self_tests_and_loads_as_the_active_model() {
        let state = tempfile::tempdir().unwrap();
        assert!(
            LoadedModel::load_active(state.path(), BackendChoice::Tract, Precision::Auto)
                .unwrap()
                .is_none()
        );
        let archive = state.path().join("default.bsimg");
        std::fs::write(&archive, EMBEDDED_IMAGE).unwrap();
        let image = ModelImage::open(&archive).unwrap();
        let mut slots = Slots::open(state.path()).unwrap();
        let report = slots
            .install(&image, None, |staged, staged_image| {
                let mut model = LoadedModel::from_image(
                    staged.display().to_string(),
                    staged_image,
                    BackendChoice::Tract,
                    Precision::Auto,
                    None,
                )
                .map_err(|e| format!("{e:#}"))?;
                model
                    .selftest(staged_image, &Config::embedded())
                    .map_err(|e| format!("{e:#}"))
            })
            .unwrap();
        assert!(
            report.status.selftest_agreement >= images::SELFTEST_MIN_AGREEMENT,
            "{:?}",
            report.status
        );
        assert_eq!(report.status.backend, "tract");

        let (model, generation) = LoadedModel::load_active(state.path(), BackendChoice::Tract, Precision::Auto)
            .unwrap()
            .unwrap();
        assert_eq!(generation, images::active_generation(state.path()).unwrap().unwrap());
        assert_eq!(generation.manifest_sha256, image.manifest_sha256());
        assert_eq!(
            (model.name.as_str(), model.version.as_str()),
            (image.manifest.name.as_str(), image.manifest.version.as_str())
        );
        assert!(model.origin.starts_with("slot a"), "{}", model.origin);
    }
}
