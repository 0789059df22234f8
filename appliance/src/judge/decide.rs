//! The decision: from the measured defects and the uncertainty map of one layer to a verdict,
//! by the rules of the configuration.

use hal::Verdict;
use models::{Defect, Fused};

use crate::config::Config;
use crate::judge::domain::DomainFinding;
use crate::judge::layer_class::LayerCall;
use crate::judge::reason::{Reason, RuleKind};

/// What was decided and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// One line per rule that fired, e.g. `streaking: total area 12.40 mm² > 5.00 mm²`.
    pub reasons: Vec<String>,
    /// Share of the bed's pixels whose uncertainty passes the gate's pixel threshold (0..1).
    pub uncertainty_score: f64,
    /// Share of the defect-class pixels whose uncertainty passes that threshold (0..1).
    pub defect_uncertain_share: f64,
    /// The rule that gave the verdict (the first of the most severe), none for PASS.
    pub reason: Option<Reason>,
    /// The classes whose per-layer limits were passed.
    pub tripped_classes: Vec<String>,
}

impl Decision {
    /// The verdict becomes REVIEW by a rule about no class (`kind`), which `text` explains.
    fn review(&mut self, kind: RuleKind, text: String) {
        self.reasons.push(text.clone());
        self.verdict = Verdict::Review;
        self.reason = Some(Reason {
            kind,
            class_index: 0,
            class: String::new(),
            text,
        });
    }
}

/// Applies the per-class rules, then the uncertainty gate.
///
/// Per class: a rule trips when the class's total area, largest defect or count passes its
/// limit, and gives the rule's verdict; the most severe tripped verdict wins. Then, when the
/// layer has defects and more than `uncertainty_gate.max_share` of their pixels are uncertain,
/// a milder verdict becomes REVIEW: the model is not sure enough of what it found to act on it.
/// The gate never lowers a verdict: an uncertain PAUSE stays PAUSE, with the gate's finding
/// among the reasons.
pub fn decide(
    config: &Config,
    class_names: &[String],
    defect_classes: &[bool],
    defects: &[Defect],
    fused: &Fused,
) -> Decision {
    let mut verdict = Verdict::Pass;
    let mut reasons = Vec::new();
    let mut reason = None;
    let mut tripped_classes = Vec::new();
    for (class_index, class_name) in class_names.iter().enumerate() {
        let Some(rule) = config.rules.get(class_name) else {
            continue;
        };
        let rule_verdict = rule.layer_verdict();
        let of_class = defects.iter().filter(|d| d.class as usize == class_index);
        let (count, total_mm2, largest_mm2) = of_class.fold((0u32, 0.0f64, 0.0f64), |(n, total, largest), d| {
            (n + 1, total + d.area_mm2, largest.max(d.area_mm2))
        });
        let mut tripped = Vec::new();
        if let Some(limit) = rule.max_total_area_mm2 {
            if total_mm2 > limit {
                tripped.push(format!("total area {total_mm2:.2} mm² > {limit:.2} mm²"));
            }
        }
        if let Some(limit) = rule.max_largest_area_mm2 {
            if largest_mm2 > limit {
                tripped.push(format!("largest defect {largest_mm2:.2} mm² > {limit:.2} mm²"));
            }
        }
        if let Some(limit) = rule.max_count {
            if count > limit {
                tripped.push(format!("{count} defects > {limit}"));
            }
        }
        if !tripped.is_empty() {
            let mut text = format!("{class_name}: {} → {rule_verdict}", tripped.join(", "));
            let (rule_verdict, kind) =
                escalate_unfixable(config, class_name, rule_verdict, RuleKind::ClassLimit, &mut text);
            reasons.push(text.clone());
            tripped_classes.push(class_name.clone());
            if rule_verdict.severity() > verdict.severity() {
                verdict = rule_verdict;
                reason = Some(Reason {
                    kind,
                    class_index: class_index as u8,
                    class: class_name.clone(),
                    text,
                });
            }
        }
    }

    let threshold = config.uncertainty_gate.pixel_threshold;
    let (mut uncertain_pixels, mut defect_pixels, mut uncertain_defect_pixels) = (0usize, 0usize, 0usize);
    for (&class, &uncertainty) in fused.mask.iter().zip(&fused.uncertainty) {
        let uncertain = uncertainty > threshold;
        uncertain_pixels += uncertain as usize;
        if defect_classes.get(class as usize).copied().unwrap_or(false) {
            defect_pixels += 1;
            uncertain_defect_pixels += uncertain as usize;
        }
    }
    let uncertainty_score = uncertain_pixels as f64 / fused.mask.len().max(1) as f64;
    let defect_uncertain_share = if defect_pixels == 0 {
        0.0
    } else {
        uncertain_defect_pixels as f64 / defect_pixels as f64
    };
    if !defects.is_empty() && defect_uncertain_share > config.uncertainty_gate.max_share {
        let share = defect_uncertain_share * 100.0;
        let limit = config.uncertainty_gate.max_share * 100.0;
        // The gate only ever raises a verdict: an uncertain PAUSE stays PAUSE (the rule that
        // decided stays the reason), with the gate's finding said beside it.
        if verdict.severity() < Verdict::Review.severity() {
            reasons.push(format!(
                "uncertainty gate: {share:.0}% of defect pixels are uncertain > {limit:.0}% → REVIEW (was {verdict})"
            ));
            verdict = Verdict::Review;
            reason = Some(Reason {
                kind: RuleKind::UncertaintyGate,
                class_index: 0,
                class: String::new(),
                text: reasons.last().cloned().unwrap_or_default(),
            });
        } else {
            reasons.push(format!(
                "uncertainty gate: {share:.0}% of defect pixels are uncertain > {limit:.0}%; {verdict} stands"
            ));
        }
    }
    Decision {
        verdict,
        reasons,
        uncertainty_score,
        defect_uncertain_share,
        reason,
        tripped_classes,
    }
}

/// The closed loop's first rule: RECOAT only for a class a recoat can fix (`recoat.fixable`);
/// for any other class the rule gives PAUSE (a re-spread would only come back to the same
/// defect, and a part standing proud can hit the blade). Returns the verdict and the rule kind
/// that gave it, and says so in `text`.
pub fn escalate_unfixable(
    config: &Config,
    class: &str,
    verdict: Verdict,
    kind: RuleKind,
    text: &mut String,
) -> (Verdict, RuleKind) {
    if verdict == Verdict::Recoat && !config.recoat.can_fix(class) {
        text.push_str(&format!(", but a recoat cannot fix {class} (recoat.fixable) → PAUSE"));
        return (Verdict::Pause, RuleKind::NotFixable);
    }
    (verdict, kind)
}

/// The domain check: a layer unlike the model's training data is REVIEW, whatever the model made
/// of it, since the model is outside its ground; a more severe verdict (PAUSE) stands, with the
/// finding beside it, as the uncertainty gate's does: a person is asked either way, and a PAUSE
/// never becomes milder.
pub fn apply_domain(finding: &DomainFinding, decision: &mut Decision) {
    if finding.familiar {
        return;
    }
    let seen = format!(
        "domain check: image unlike the model's training data (score {:.2} > {:.2})",
        finding.score, finding.threshold
    );
    if decision.verdict.severity() < Verdict::Review.severity() {
        let text = format!("{seen} → REVIEW (was {})", decision.verdict);
        decision.review(RuleKind::Domain, text);
    } else {
        decision.reasons.push(format!("{seen}; {} stands", decision.verdict));
    }
}

/// The layer classifier's gate (models with a layer-level head): when the segmentation found no
/// defect and the verdict is PASS, but the head calls the layer defective (its most probable class
/// reaches `layer_classifier.review_threshold`), the verdict becomes REVIEW: something is wrong
/// somewhere on the layer that the masks do not show. `class_name` names the head's top class.
pub fn apply_layer_call(call: Option<&LayerCall>, class_name: &str, defects: &[Defect], decision: &mut Decision) {
    let Some(call) = call else { return };
    if call.defective && defects.is_empty() && decision.verdict == Verdict::Pass {
        let text = format!(
            "layer classifier: {class_name} p = {:.2} but segmentation found no defect → REVIEW",
            call.top_probability
        );
        decision.review(RuleKind::LayerClassifier, text);
    }
}

/// Bounds how often one layer is spread again: past `max_retries` RECOATs of the same layer
/// the verdict becomes PAUSE (DESIGN.md, "Verdicts").
#[derive(Debug, Default)]
pub struct RecoatBudget {
    layer: Option<u32>,
    recoats: u32,
}

impl RecoatBudget {
    /// Returns the verdict to send for `layer`, turning a RECOAT past the limit into PAUSE.
    pub fn apply(&mut self, layer: u32, verdict: Verdict, max_retries: u32) -> Verdict {
        if self.layer != Some(layer) {
            self.layer = Some(layer);
            self.recoats = 0;
        }
        if verdict != Verdict::Recoat {
            return verdict;
        }
        if self.recoats >= max_retries {
            return Verdict::Pause;
        }
        self.recoats += 1;
        Verdict::Recoat
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::class_names as names;
    use models::Ellipse;

    fn defect_classes() -> Vec<bool> {
        vec![false, true, true, true, true, false]
    }

    fn defect(class: u8, area_mm2: f64) -> Defect {
        Defect {
            class,
            area_px: 10,
            area_mm2,
            bbox: [0, 0, 1, 1],
            centroid: [0.0, 0.0],
            equivalent_diameter_mm: 1.0,
            ellipse: Ellipse {
                theta_deg: 0.0,
                semi_major_px: 1.0,
                semi_minor_px: 1.0,
            },
            mean_uncertainty: 0.0,
            max_uncertainty: 0.0,
        }
    }

    /// A 10x10 layer whose first `defect_pixels` pixels are class 2, of which the first
    /// `uncertain_pixels` carry uncertainty 0.2.
    fn layer(defect_pixels: usize, uncertain_pixels: usize) -> Fused {
        let mut fused = Fused::new(10, 10, 6);
        for i in 0..defect_pixels {
            fused.mask[i] = 2;
        }
        for i in 0..uncertain_pixels {
            fused.uncertainty[i] = 0.2;
        }
        fused
    }

    fn config(extra: &str) -> Config {
        Config::parse(&format!("[bed]\nwidth_mm = 100\nheight_mm = 100\n{extra}"), "test.toml").unwrap()
    }

    #[test]
    fn no_defects_pass() {
        let decision = decide(&config(""), &names(), &defect_classes(), &[], &layer(0, 0));
        assert_eq!(decision.verdict, Verdict::Pass);
        assert!(decision.reasons.is_empty());
        assert_eq!(decision.uncertainty_score, 0.0);
    }

    #[test]
    fn the_most_severe_tripped_rule_wins_and_is_named() {
        let config = config(
            "[rules.incompleteness]\nmax_total_area_mm2 = 5.0\nverdict = \"RECOAT\"\n\
             [rules.super-elevation]\nmax_count = 0\nverdict = \"PAUSE\"\n",
        );
        let defects = [defect(2, 3.0), defect(2, 3.0), defect(1, 0.5)];
        let decision = decide(&config, &names(), &defect_classes(), &defects, &layer(20, 0));
        assert_eq!(decision.verdict, Verdict::Pause);
        assert_eq!(decision.reasons.len(), 2);
        assert!(
            decision
                .reasons
                .iter()
                .any(|r| r.starts_with("incompleteness: total area 6.00 mm² > 5.00 mm²")),
            "{:?}",
            decision.reasons
        );
        assert!(
            decision
                .reasons
                .iter()
                .any(|r| r.starts_with("super-elevation: 1 defects > 0")),
            "{:?}",
            decision.reasons
        );
    }

    #[test]
    fn a_defect_under_every_limit_passes() {
        let config = config("[rules.streaking]\nmax_total_area_mm2 = 5.0\nmax_largest_area_mm2 = 4.0\nmax_count = 2\nverdict = \"RECOAT\"\n");
        let decision = decide(&config, &names(), &defect_classes(), &[defect(4, 3.9)], &layer(10, 0));
        assert_eq!(decision.verdict, Verdict::Pass);
    }

    #[test]
    fn uncertain_defects_turn_the_verdict_into_review() {
        let config = config("[rules.incompleteness]\nmax_count = 0\nverdict = \"RECOAT\"\n[uncertainty_gate]\npixel_threshold = 0.1\nmax_share = 0.5\n");
        // 20 defect pixels, 12 of them uncertain: 60% > 50%.
        let decision = decide(&config, &names(), &defect_classes(), &[defect(2, 1.0)], &layer(20, 12));
        assert_eq!(decision.verdict, Verdict::Review);
        assert!((decision.defect_uncertain_share - 0.6).abs() < 1e-12);
        assert!((decision.uncertainty_score - 0.12).abs() < 1e-12);
        // 8 of 20 uncertain: 40%, the rule's RECOAT stands.
        let decision = decide(&config, &names(), &defect_classes(), &[defect(2, 1.0)], &layer(20, 8));
        assert_eq!(decision.verdict, Verdict::Recoat);
    }

    #[test]
    fn the_uncertainty_gate_never_lowers_a_pause() {
        let config = config("[rules.incompleteness]\nmax_count = 0\nverdict = \"PAUSE\"\n[uncertainty_gate]\npixel_threshold = 0.1\nmax_share = 0.5\n");
        // 20 defect pixels, 12 of them uncertain: 60% > 50%, but the rule said PAUSE.
        let decision = decide(&config, &names(), &defect_classes(), &[defect(2, 1.0)], &layer(20, 12));
        assert_eq!(decision.verdict, Verdict::Pause);
        assert_eq!(decision.reason.as_ref().map(|r| r.kind), Some(RuleKind::ClassLimit));
        assert_eq!(
            decision.reasons.last().map(String::as_str),
            Some("uncertainty gate: 60% of defect pixels are uncertain > 50%; PAUSE stands")
        );
    }

    #[test]
    fn a_layer_the_classifier_calls_defective_without_segmented_defects_is_review() {
        let config = config("[layer_classifier]\nreview_threshold = 0.6\n");
        let head = models::LayerHeadSpec {
            classes: vec!["incompleteness".into(), "streaking".into()],
            temperature: 1.0,
        };
        let mut p = [0.0f32; 2];
        // sigmoid(1.0) = 0.731 >= 0.6: defective; sigmoid(0.2) = 0.550 < 0.6: not.
        let defective = LayerCall::from_logits(&head, &[-3.0, 1.0], config.layer_classifier.review_threshold, &mut p);
        let unsure = LayerCall::from_logits(&head, &[0.2, -3.0], config.layer_classifier.review_threshold, &mut p);

        let mut decision = decide(&config, &names(), &defect_classes(), &[], &layer(0, 0));
        apply_layer_call(defective.as_ref(), "streaking", &[], &mut decision);
        assert_eq!(decision.verdict, Verdict::Review);
        assert_eq!(
            decision.reasons,
            ["layer classifier: streaking p = 0.73 but segmentation found no defect → REVIEW"]
        );

        let mut decision = decide(&config, &names(), &defect_classes(), &[], &layer(0, 0));
        apply_layer_call(unsure.as_ref(), "incompleteness", &[], &mut decision);
        assert_eq!(decision.verdict, Verdict::Pass);
        // A model without a head: nothing changes.
        apply_layer_call(None, "", &[], &mut decision);
        assert_eq!(decision.verdict, Verdict::Pass);

        // Segmentation found a defect (under every limit): its own rules judge it, PASS stands.
        let defects = [defect(4, 0.5)];
        let mut decision = decide(&config, &names(), &defect_classes(), &defects, &layer(10, 0));
        apply_layer_call(defective.as_ref(), "streaking", &defects, &mut decision);
        assert_eq!(decision.verdict, Verdict::Pass);
    }

    #[test]
    fn a_layer_unlike_the_training_data_is_review_and_a_pause_stands() {
        let unfamiliar = DomainFinding {
            score: 2.25,
            threshold: 1.5,
            familiar: false,
        };
        let mut passed = decide(&config(""), &names(), &defect_classes(), &[], &layer(0, 0));
        apply_domain(&unfamiliar, &mut passed);
        assert_eq!(passed.verdict, Verdict::Review);
        assert_eq!(
            passed.reasons,
            ["domain check: image unlike the model's training data (score 2.25 > 1.50) → REVIEW (was PASS)"]
        );
        let reason = passed.reason.as_ref().unwrap();
        assert_eq!((reason.code(), reason.rule().as_str()), (0x0B00, "domain"));

        let config = config("[rules.super-elevation]\nmax_count = 0\nverdict = \"PAUSE\"\n");
        let mut paused = decide(&config, &names(), &defect_classes(), &[defect(1, 0.5)], &layer(20, 0));
        let before = paused.reason.clone();
        apply_domain(&unfamiliar, &mut paused);
        assert_eq!((paused.verdict, &paused.reason), (Verdict::Pause, &before));
        assert!(paused
            .reasons
            .last()
            .unwrap()
            .ends_with("(score 2.25 > 1.50); PAUSE stands"));

        // a familiar layer changes nothing
        let mut familiar = decide(&config, &names(), &defect_classes(), &[], &layer(0, 0));
        let unchanged = familiar.clone();
        apply_domain(
            &DomainFinding {
                familiar: true,
                ..unfamiliar
            },
            &mut familiar,
        );
        assert_eq!(familiar, unchanged);
    }

    #[test]
    fn recoat_for_a_class_a_recoat_cannot_fix_becomes_pause_and_is_named() {
        let config = config("[rules.super-elevation]\nmax_count = 0\nverdict = \"RECOAT\"\n[rules.streaking]\nmax_count = 0\nverdict = \"RECOAT\"\n");
        let decision = decide(&config, &names(), &defect_classes(), &[defect(4, 1.0)], &layer(10, 0));
        assert_eq!(decision.verdict, Verdict::Recoat);
        assert_eq!(decision.reason.as_ref().unwrap().code(), 0x0104);
        let decision = decide(
            &config,
            &names(),
            &defect_classes(),
            &[defect(1, 1.0), defect(4, 1.0)],
            &layer(10, 0),
        );
        assert_eq!(decision.verdict, Verdict::Pause);
        let reason = decision.reason.unwrap();
        assert_eq!(
            (reason.code(), reason.rule().as_str()),
            (0x0401, "rules.super-elevation.recoat.fixable")
        );
        assert!(
            reason.text.contains("a recoat cannot fix super-elevation"),
            "{}",
            reason.text
        );
        assert_eq!(
            decision.tripped_classes,
            vec!["super-elevation".to_string(), "streaking".to_string()]
        );
        // Listed as fixable, it stays a RECOAT.
        let mut config = config;
        config.recoat.fixable = Some(vec!["super-elevation".to_string()]);
        assert_eq!(
            decide(&config, &names(), &defect_classes(), &[defect(1, 1.0)], &layer(10, 0)).verdict,
            Verdict::Recoat
        );
    }

    #[test]
    fn recoat_is_bounded_per_layer_then_pauses() {
        let mut budget = RecoatBudget::default();
        assert_eq!(budget.apply(7, Verdict::Recoat, 2), Verdict::Recoat);
        assert_eq!(budget.apply(7, Verdict::Recoat, 2), Verdict::Recoat);
        assert_eq!(budget.apply(7, Verdict::Recoat, 2), Verdict::Pause);
        assert_eq!(budget.apply(8, Verdict::Recoat, 2), Verdict::Recoat);
        assert_eq!(budget.apply(9, Verdict::Pass, 2), Verdict::Pass);
    }
}
