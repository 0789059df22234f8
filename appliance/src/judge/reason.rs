//! Which rule decided a layer's verdict, as a name for people and the journal and as a code for
//! the PLC (Modbus register 17, docs/plc.md and docs/tracks.md).
//!
//! A code is `kind * 256 + class index`: the high byte says what kind of rule fired, the low
//! byte which class of the model image it was about (0 when the rule is about no class). For a
//! frame the model did not judge (kinds `Fault` and `FrameReview`) the low byte says which frame
//! check kept it (`judge::frame_check::FrameCheck`; 0: a stage failed).

use crate::judge::frame_check::FrameCheck;

/// The kinds of rule, the high byte of a reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// A per-layer limit of `rules.<class>` (total area, largest defect, count).
    ClassLimit = 1,
    /// The uncertainty gate turned the verdict into REVIEW.
    UncertaintyGate = 2,
    /// More RECOATs of one layer than `recoat.max_retries`: PAUSE.
    RecoatBudget = 3,
    /// A rule asked for RECOAT for a class a recoat cannot fix (`recoat.fixable`): PAUSE.
    NotFixable = 4,
    /// `rules.<class>.track.max_layers`: a track longer than allowed.
    TrackLength = 5,
    /// `rules.<class>.track.max_growth_mm2_per_layer`: a track growing faster than allowed.
    TrackGrowth = 6,
    /// `rules.<class>.track.after_recoat`: the defect is still there after a RECOAT.
    TrackAfterRecoat = 7,
    /// The layer could not be judged (camera, frame check, model): FAULT.
    Fault = 8,
    /// The model's layer classifier called a layer defective where segmentation found nothing:
    /// REVIEW (`layer_classifier.review_threshold`).
    LayerClassifier = 9,
    /// A frame check that asks a person to look (blurred, low contrast, a covered bed): REVIEW.
    FrameReview = 10,
    /// The layer is unlike the model's training data (the domain check): REVIEW.
    Domain = 11,
}

impl RuleKind {
    /// The rule's name after the class, as the journal and stdout show it.
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::ClassLimit => "limit",
            RuleKind::UncertaintyGate => "uncertainty_gate",
            RuleKind::RecoatBudget => "recoat.max_retries",
            RuleKind::NotFixable => "recoat.fixable",
            RuleKind::TrackLength => "track.max_layers",
            RuleKind::TrackGrowth => "track.max_growth_mm2_per_layer",
            RuleKind::TrackAfterRecoat => "track.after_recoat",
            RuleKind::Fault => "fault",
            RuleKind::LayerClassifier => "layer_classifier",
            RuleKind::FrameReview => "frame_check",
            RuleKind::Domain => "domain",
        }
    }
}

/// The rule that decided a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub kind: RuleKind,
    /// The class index of the model image (0: none).
    pub class_index: u8,
    /// The class name (empty: none).
    pub class: String,
    /// What was seen, e.g. `streaking track #3 over layers 12-18 (7 layers > 5): recoater blade damage suspected`.
    pub text: String,
}

impl Reason {
    /// The code the PLC reads.
    pub fn code(&self) -> u16 {
        (self.kind as u16) << 8 | self.class_index as u16
    }

    /// The frame check that kept the layer from the model, for a FAULT or a frame review.
    pub fn frame_check(&self) -> Option<FrameCheck> {
        matches!(self.kind, RuleKind::Fault | RuleKind::FrameReview)
            .then(|| FrameCheck::from_byte(self.class_index))
            .flatten()
    }

    /// The rule's name: `rules.<class>.<rule>` for class rules, the configuration key otherwise.
    pub fn rule(&self) -> String {
        if let Some(check) = self.frame_check().filter(|check| *check != FrameCheck::Stage) {
            format!("frame_check.{}", check.name())
        } else if self.class.is_empty() {
            self.kind.name().to_string()
        } else {
            format!("rules.{}.{}", self.class, self.kind.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kind_then_class() {
        let reason = Reason {
            kind: RuleKind::TrackLength,
            class_index: 4,
            class: "streaking".into(),
            text: String::new(),
        };
        assert_eq!(reason.code(), 0x0504);
        assert_eq!(reason.rule(), "rules.streaking.track.max_layers");
        let gate = Reason {
            kind: RuleKind::UncertaintyGate,
            class_index: 0,
            class: String::new(),
            text: String::new(),
        };
        assert_eq!((gate.code(), gate.rule()), (0x0200, "uncertainty_gate".to_string()));
        let frozen = Reason {
            kind: RuleKind::Fault,
            class_index: 4,
            class: String::new(),
            text: String::new(),
        };
        assert_eq!(
            (frozen.code(), frozen.rule()),
            (0x0804, "frame_check.frozen".to_string())
        );
        let camera = Reason {
            class_index: 0,
            ..frozen
        };
        assert_eq!((camera.code(), camera.rule()), (0x0800, "fault".to_string()));
        let blurred = Reason {
            kind: RuleKind::FrameReview,
            class_index: 6,
            class: String::new(),
            text: String::new(),
        };
        assert_eq!(
            (blurred.code(), blurred.rule()),
            (0x0A06, "frame_check.blurred".to_string())
        );
    }
}
