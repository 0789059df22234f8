//! What a model needs to be fed and how to read what it returns: the plain-data view of a
//! model image's manifest (the appliance fills it in; this crate never reads the manifest).

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The most ensemble members [`fuse`](crate::fuse()) handles (its per-pixel scratch lives on the
/// stack so that fusion never allocates).
pub const MAX_MEMBERS: usize = 16;
/// The most classes a model may have: the mask stores a class index in a `u8`.
pub const MAX_CLASSES: usize = 256;
/// The most layer-level classes a [`LayerHeadSpec`] may have.
pub const MAX_LAYER_CLASSES: usize = 64;

/// How the graph's input tensor `image` `[1, C, H, W]` is made from a rectified bed image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// `W`: the width the image is resized to, in pixels.
    pub width: u32,
    /// `H`: the height the image is resized to, in pixels.
    pub height: u32,
    /// `C`: 1 (grey, ITU-R 601 luma) or 3 (RGB).
    pub channels: u32,
    /// Per-channel mean on the 0..1 scale: the input is `(x - mean[c]) / std[c]`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation on the 0..1 scale, each > 0.
    pub std: Vec<f32>,
}

impl InputSpec {
    /// Number of `f32` values in the input tensor: `C * H * W`.
    pub fn len(&self) -> usize {
        self.channels as usize * self.pixels()
    }

    /// `H * W`.
    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Whether the tensor is empty (never, for a validated spec).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the input description on its own.
    pub fn validate(&self) -> Result<(), ModelError> {
        let spec_error = |message: String| Err(ModelError::Spec(message));
        if self.width == 0 || self.height == 0 {
            return spec_error(format!("input size {}x{} is empty", self.width, self.height));
        }
        if self.channels != 1 && self.channels != 3 {
            return spec_error(format!(
                "input has {} channels; 1 (grey) or 3 (RGB) are supported",
                self.channels
            ));
        }
        let channels = self.channels as usize;
        if self.mean.len() != channels {
            return spec_error(format!(
                "input has {channels} channels but {} mean values",
                self.mean.len()
            ));
        }
        if self.std.len() != channels {
            return spec_error(format!(
                "input has {channels} channels but {} std values",
                self.std.len()
            ));
        }
        if let Some(mean) = self.mean.iter().find(|m| !m.is_finite()) {
            return spec_error(format!("input mean {mean} is not a finite number"));
        }
        if let Some(std) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return spec_error(format!("input std {std} must be a finite number > 0"));
        }
        Ok(())
    }
}

/// One class of the segmentation, in class-index order (index 0 is background).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Name shown on the dashboard and used in the configuration (`"lattice"`).
    pub name: String,
    /// Colour of the class in drawn masks, RGB.
    pub colour: [u8; 3],
    /// Whether a component of this class is a defect that [`measure`](crate::measure()) reports.
    pub defect: bool,
}

/// The optional layer-level classification head (seed 004: a second head on the shared encoder):
/// the graph's output `layer_logits` `[1, L]` holds one raw logit per layer class, and the
/// classes are independent (multi-label): a layer may be both streaked and unevenly spread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerHeadSpec {
    /// The `L` layer classes, in output order, each a defect the whole layer may carry
    /// (`"streaking"`); a layer none of them reaches is clean.
    pub classes: Vec<String>,
    /// `T`, calibrated on the training tool's validation split: the probability of class `l` is
    /// `sigmoid(z_l / T)` (see [`layer_probabilities`](crate::layer_probabilities)).
    pub temperature: f32,
}

/// Everything this crate needs to know about a model: its input, its ensemble and its classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// How to build the input tensor.
    pub input: InputSpec,
    /// `M`: the number of ensemble members (heads) in the graph's output.
    pub members: usize,
    /// `T_1..T_M`: one temperature per member, each > 0 (seed 000, Eq. 20-21).
    pub temperatures: Vec<f32>,
    /// `K` classes, in class-index order.
    pub classes: Vec<ClassInfo>,
    /// The layer-level classification head, when the graph has one (older models do not).
    #[serde(default)]
    pub layer_head: Option<LayerHeadSpec>,
    /// `D`, the length of the graph's optional `features` output `[1, D]` (what the domain check
    /// compares with the training layers'); `None` when the model has no domain check.
    #[serde(default)]
    pub features: Option<usize>,
}

impl ModelSpec {
    /// `K`.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Number of `f32` values in the graph's `logits` output: `M * K * H * W`.
    pub fn logits_len(&self) -> usize {
        self.members * self.classes.len() * self.input.pixels()
    }

    /// `L`, the number of `f32` values in the graph's `layer_logits` output; 0 without a head.
    pub fn layer_logits_len(&self) -> usize {
        self.layer_head.as_ref().map_or(0, |head| head.classes.len())
    }

    /// `D`, the number of `f32` values in the graph's `features` output; 0 without one.
    pub fn features_len(&self) -> usize {
        self.features.unwrap_or(0)
    }

    /// Checks that the spec is self-consistent; every loader calls this first.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.input.validate()?;
        if self.features == Some(0) {
            return Err(ModelError::Spec("the features output has 0 values".into()));
        }
        let spec_error = |message: String| Err(ModelError::Spec(message));
        if self.members == 0 {
            return spec_error("the ensemble has 0 members".into());
        }
        if self.members > MAX_MEMBERS {
            return spec_error(format!(
                "the ensemble has {} members; at most {MAX_MEMBERS} are supported",
                self.members
            ));
        }
        if self.temperatures.len() != self.members {
            return spec_error(format!(
                "the ensemble has {} members but {} temperatures",
                self.members,
                self.temperatures.len()
            ));
        }
        if let Some((i, t)) = self
            .temperatures
            .iter()
            .enumerate()
            .find(|(_, t)| !(t.is_finite() && **t > 0.0))
        {
            return spec_error(format!("temperature T_{} = {t} must be a finite number > 0", i + 1));
        }
        if self.classes.is_empty() {
            return spec_error("no classes".into());
        }
        if self.classes.len() > MAX_CLASSES {
            return spec_error(format!(
                "{} classes; at most {MAX_CLASSES} are supported",
                self.classes.len()
            ));
        }
        if let Some(head) = &self.layer_head {
            if head.classes.is_empty() || head.classes.len() > MAX_LAYER_CLASSES {
                return spec_error(format!(
                    "the layer head has {} classes; it needs 1..={MAX_LAYER_CLASSES}",
                    head.classes.len()
                ));
            }
            if !(head.temperature.is_finite() && head.temperature > 0.0) {
                return spec_error(format!(
                    "layer head temperature {} must be a finite number > 0",
                    head.temperature
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn test_spec(width: u32, height: u32, members: usize, classes: usize) -> ModelSpec {
    ModelSpec {
        input: InputSpec {
            width,
            height,
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
        },
        members,
        temperatures: vec![1.0; members],
        classes: (0..classes)
            .map(|k| ClassInfo {
                name: format!("class{k}"),
                colour: [k as u8; 3],
                defect: k != 0,
            })
            .collect(),
        layer_head: None,
        features: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_what_disagrees() {
        assert!(test_spec(8, 8, 3, 6).validate().is_ok());

        let mut spec = test_spec(8, 8, 3, 6);
        spec.temperatures.pop();
        let message = spec.validate().unwrap_err().to_string();
        assert!(message.contains("3 members but 2 temperatures"), "{message}");

        let mut spec = test_spec(8, 8, 1, 6);
        spec.temperatures[0] = 0.0;
        assert!(spec.validate().unwrap_err().to_string().contains("T_1"));

        let mut spec = test_spec(8, 8, 1, 6);
        spec.input.std[0] = -1.0;
        assert!(spec.validate().is_err());

        let mut spec = test_spec(8, 8, 1, 6);
        spec.input.channels = 3;
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("3 channels but 1 mean"));

        assert!(test_spec(8, 8, 1, 257).validate().is_err());
        assert_eq!(test_spec(8, 4, 3, 6).logits_len(), 3 * 6 * 32);

        let mut spec = test_spec(8, 8, 1, 6);
        assert_eq!(spec.layer_logits_len(), 0);
        spec.layer_head = Some(LayerHeadSpec {
            classes: vec!["streaking".into(), "incompleteness".into()],
            temperature: 1.5,
        });
        assert!(spec.validate().is_ok());
        assert_eq!(spec.layer_logits_len(), 2);
        spec.layer_head.as_mut().unwrap().temperature = 0.0;
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("layer head temperature 0"));
        spec.layer_head.as_mut().unwrap().classes.clear();
        assert!(spec.validate().unwrap_err().to_string().contains("0 classes"));
    }
}
