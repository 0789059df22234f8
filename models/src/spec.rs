//! What a model needs to be fed and how to read what it returns: the plain-data view of a
//! model image's manifest (the appliance fills it in; this crate never reads the manifest).

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The most ensemble members [`fuse`](crate::fuse()) handles (its per-pixel scratch lives on the
/// stack so that fusion never allocates).
pub const MAX_MEMBERS: usize = 16;
/// The most classes a model may have: the mask stores a class index in a `u8`.
pub const MAX_CLASSES: usize = 256;

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
            return spec_error(format!(
                "input size {}x{} is empty",
                self.width, self.height
            ));
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

    /// Checks that the spec is self-consistent; every loader calls this first.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.input.validate()?;
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
            return spec_error(format!(
                "temperature T_{} = {t} must be a finite number > 0",
                i + 1
            ));
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
        assert!(
            message.contains("3 members but 2 temperatures"),
            "{message}"
        );

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
    }
}
