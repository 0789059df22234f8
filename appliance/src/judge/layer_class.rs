//! The layer-level call of a model with a classification head (seed 004: one shared encoder, a
//! segmentation and a classification head): which class the whole layer carries and how sure the
//! model is, from the head's logits and the manifest's temperature.

use models::LayerHeadSpec;

/// What the classification head says about one layer. Plain `Copy` data: the probabilities
/// themselves stay in the pipeline's buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerCall {
    /// Index of the most probable layer class in the manifest's `layer_head.classes`.
    pub top_class: usize,
    /// Its calibrated probability `sigmoid(z / T)`.
    pub top_probability: f32,
    /// Whether `top_probability` reaches `layer_classifier.review_threshold`: the classifier
    /// calls the layer defective.
    pub defective: bool,
}

impl LayerCall {
    /// Reads `logits` (one per class of `head`) into calibrated `probabilities` (same length) and
    /// calls the layer defective when the most probable class reaches `threshold`. `None` for a
    /// head without classes (a validated spec has at least one).
    pub fn from_logits(
        head: &LayerHeadSpec,
        logits: &[f32],
        threshold: f32,
        probabilities: &mut [f32],
    ) -> Option<LayerCall> {
        models::layer_probabilities(logits, head.temperature, probabilities);
        let (top_class, top_probability) = models::most_probable(probabilities)?;
        Some(LayerCall {
            top_class,
            top_probability,
            defective: top_probability >= threshold,
        })
    }

    /// The class shown for the layer: the top class when the layer is called defective, else
    /// `"clean"`.
    pub fn label<'a>(&self, head: &'a LayerHeadSpec) -> &'a str {
        if self.defective {
            head.classes.get(self.top_class).map_or("?", String::as_str)
        } else {
            "clean"
        }
    }

    /// How sure the head is of [`LayerCall::label`]: the top class's probability when defective,
    /// else the probability that even the most likely class is absent, `1 - p_top`.
    pub fn confidence(&self) -> f32 {
        if self.defective {
            self.top_probability
        } else {
            1.0 - self.top_probability
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_class_calls_the_layer_at_the_threshold() {
        let head = LayerHeadSpec {
            classes: vec!["incompleteness".into(), "streaking".into()],
            temperature: 2.0,
        };
        let mut p = [0.0f32; 2];
        // z / T = [-1, 1]: p = [0.2689, 0.7311].
        let call = LayerCall::from_logits(&head, &[-2.0, 2.0], 0.7, &mut p).unwrap();
        assert_eq!((call.top_class, call.defective), (1, true));
        assert!((call.top_probability - 0.731_058_6).abs() < 1e-6);
        assert_eq!(call.label(&head), "streaking");
        assert!((call.confidence() - 0.731_058_6).abs() < 1e-6);

        let call = LayerCall::from_logits(&head, &[-2.0, 2.0], 0.75, &mut p).unwrap();
        assert!(!call.defective);
        assert_eq!(call.label(&head), "clean");
        assert!((call.confidence() - 0.268_941_4).abs() < 1e-6);
    }
}
