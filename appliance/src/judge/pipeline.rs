//! One layer, start to end: check the frame, rectify, infer, fuse, refine, measure, decide.
//! `Pipeline::run_layer` is the entry point; everything it needs per layer is allocated once
//! in `Pipeline::new`.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hal::Verdict;
use image::{DynamicImage, GrayImage};
use models::{Defect, Fused, MeasureBuffers, RefineBuffers, RefineReport};

use crate::config::Config;
use crate::judge::decide::{apply_domain, apply_layer_call, decide, Decision};
use crate::judge::domain::{DomainCheck, DomainFinding};
use crate::judge::frame_check::{FrameCheck, FrameChecker, Unjudged};
use crate::judge::layer_class::LayerCall;
use crate::model::LoadedModel;

/// Milliseconds spent in each stage of one layer.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimes {
    pub check_ms: f64,
    pub rectify_ms: f64,
    pub preprocess_ms: f64,
    pub infer_ms: f64,
    pub fuse_ms: f64,
    pub refine_ms: f64,
    pub measure_ms: f64,
    pub decide_ms: f64,
    pub total_ms: f64,
}

/// The most defects one layer's outcome lists; past it the smallest are dropped and counted.
/// A layer with this many separate defects is already a PAUSE or REVIEW for any sane rule.
pub const MAX_DEFECTS_PER_LAYER: usize = 64;

/// Sums over every defect measured on a layer, listed or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DefectTotals {
    pub count: u32,
    pub total_area_mm2: f64,
    pub largest_area_mm2: f64,
    /// Area per class index, for the PLC's per-class registers.
    pub class_areas_mm2: [f64; hal::CLASSES_ON_WIRE],
}

impl DefectTotals {
    pub fn of(defects: &[Defect]) -> DefectTotals {
        let mut totals = DefectTotals {
            count: defects.len() as u32,
            ..DefectTotals::default()
        };
        for defect in defects {
            totals.total_area_mm2 += defect.area_mm2;
            totals.largest_area_mm2 = totals.largest_area_mm2.max(defect.area_mm2);
            if let Some(area) = totals.class_areas_mm2.get_mut(defect.class as usize) {
                *area += defect.area_mm2;
            }
        }
        totals
    }
}

/// What one layer came to.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    pub verdict: Verdict,
    /// Why the model did not judge the layer (a frame check, or a stage that failed), when it
    /// did not: the verdict is then this one's (FAULT or REVIEW).
    pub unjudged: Option<Unjudged>,
    pub decision: Option<Decision>,
    /// The defects, largest first, at most MAX_DEFECTS_PER_LAYER of them.
    pub defects: heapless::Vec<Defect, MAX_DEFECTS_PER_LAYER>,
    /// How many smaller defects did not fit in `defects` (they still count in `totals` and in
    /// the decision).
    pub defects_dropped: u32,
    pub totals: DefectTotals,
    pub refine: Option<RefineReport>,
    pub timing: StageTimes,
    /// The classification head's call on the whole layer (models that have a head).
    pub layer_call: Option<LayerCall>,
    /// The domain check's finding (models that carry one).
    pub domain: Option<DomainFinding>,
}

/// The per-layer machinery around one loaded model.
pub struct Pipeline {
    pub config: Config,
    pub model: LoadedModel,
    refine_classes: Vec<u8>,
    /// The bed-corner homography, when the camera sees more than the bed.
    rectifier: Option<models::Rectifier>,
    /// The camera frame in grey, reused across layers.
    grey_frame: GrayImage,
    /// The lighting correction of `[bed] flat_field`, applied to the camera frame.
    flat_field: Option<models::FlatField>,
    /// The checks of `[frame_check]`, with the last judged layer's grain.
    frame_checks: FrameChecker,
    /// The domain check of the model image's `[domain]` table, when it has one.
    domain_check: Option<DomainCheck>,
    input_tensor: Vec<f32>,
    /// The last layer's calibrated layer-class probabilities, in `layer_head.classes` order
    /// (empty for a model without a layer head).
    pub layer_probabilities: Vec<f32>,
    /// The fused result of the last layer (mask, probabilities, uncertainty, confidence).
    pub fused: Fused,
    refine_buffers: RefineBuffers,
    measure_buffers: MeasureBuffers,
    /// Every defect measured on the last layer, in measurement order (before `largest_first`).
    measured: Vec<Defect>,
    /// The last layer's bed, rectified to the model's input size.
    pub bed_image: GrayImage,
    /// Millimetres per pixel of `bed_image`.
    pub bed_mm_per_px: f64,
    /// `[model] min_defect_area_mm2` in pixels of the mask, set once with the pixel pitch.
    min_defect_area_px: u32,
}

impl Pipeline {
    /// Configuration (the file, else the embedded one), then the model (the command line's,
    /// else the configuration's, else the embedded one), on the backend asked for (else the
    /// configuration's).
    pub fn load(
        config_path: Option<&Path>,
        model_path: Option<&Path>,
        backend: Option<&str>,
        precision: Option<&str>,
    ) -> Result<Pipeline> {
        let (config, origin) = match config_path {
            Some(path) => (Config::load(path)?, path.display().to_string()),
            None => (Config::embedded(), "embedded bedsight.toml".to_string()),
        };
        let choice = match backend {
            Some(word) => crate::config::parse_backend(word).context("--backend")?,
            None => config.backend_choice(),
        };
        let model_path = model_path.map(Path::to_path_buf).or_else(|| config.model.image.clone());
        let precision = match precision {
            Some(word) => crate::config::parse_precision(word).context("--precision")?,
            None => config.model.precision(),
        };
        let model = LoadedModel::load(model_path.as_deref(), choice, precision, None)?;
        Pipeline::new(config, model, &origin)
    }

    pub fn new(config: Config, model: LoadedModel, config_origin: &str) -> Result<Pipeline> {
        let defect: Vec<bool> = model.spec.classes.iter().map(|class| class.defect).collect();
        config.check_against_classes(&model.class_names, &defect, config_origin)?;
        let input = &model.spec.input;
        if input.channels != 1 {
            bail!(
                "model {}: the appliance feeds grey bed images, the model wants {} channels",
                model.origin,
                input.channels
            );
        }
        let (width, height) = (input.width as usize, input.height as usize);
        let classes = model.spec.classes.len();
        let bed_mm_per_px = pixel_pitch_mm(&config, input.width, input.height);
        let rectifier = match &config.bed.corners_px {
            Some(corners) => Some(
                models::Rectifier::new(*corners, input.width, input.height)
                    .map_err(|e| anyhow::anyhow!("configuration {config_origin}: bed.corners_px: {e}"))?,
            ),
            None => None,
        };
        let flat_field = match &config.bed.flat_field {
            Some(path) => Some(
                crate::record::flat_field::read(path)
                    .with_context(|| format!("configuration {config_origin}: bed.flat_field"))?,
            ),
            None => None,
        };
        let frame_checks = FrameChecker::new(&config).with_context(|| format!("configuration {config_origin}"))?;
        Ok(Pipeline {
            frame_checks,
            domain_check: model.domain.as_ref().map(DomainCheck::new),
            refine_classes: model.class_indices(&config.refine.classes)?,
            rectifier,
            grey_frame: GrayImage::new(1, 1),
            flat_field,
            input_tensor: vec![0.0; width * height],
            layer_probabilities: vec![0.0; model.spec.layer_logits_len()],
            fused: Fused::new(width, height, classes),
            refine_buffers: RefineBuffers::for_pixels(width * height),
            measure_buffers: MeasureBuffers::for_pixels(width * height),
            measured: Vec::with_capacity(RESERVED_DEFECTS),
            bed_image: GrayImage::new(input.width, input.height),
            bed_mm_per_px,
            min_defect_area_px: config.model.min_defect_area_px(bed_mm_per_px),
            config,
            model,
        })
    }

    /// Runs one layer's frame through every stage. A frame the model must not judge comes back
    /// as FAULT with the reason; it never reaches the model.
    pub fn run_layer(&mut self, frame: &DynamicImage) -> LayerOutcome {
        let started = Instant::now();
        let mut timing = StageTimes::default();
        let mut stage = Instant::now();
        let mut lap = |slot: &mut f64| {
            *slot = stage.elapsed().as_secs_f64() * 1e3;
            stage = Instant::now();
        };

        if let Err(reason) = self.check_frame(frame) {
            lap(&mut timing.check_ms);
            return self.unjudged_outcome(Unjudged::fault(FrameCheck::Format, reason), timing, started);
        }
        grey_into(frame, &mut self.grey_frame);
        if let Err(unjudged) = self.frame_checks.check_camera_frame(&self.grey_frame) {
            lap(&mut timing.check_ms);
            return self.unjudged_outcome(unjudged, timing, started);
        }
        lap(&mut timing.check_ms);

        let input = &self.model.spec.input;
        // The lighting correction is timed with rectification: both map camera pixels to the bed.
        if let Some(flat_field) = &self.flat_field {
            if let Err(error) = flat_field.apply(&mut self.grey_frame) {
                lap(&mut timing.rectify_ms);
                return self.fault_outcome(format!("flat field: {error}"), timing, started);
            }
        }
        let rectified = match &self.rectifier {
            Some(rectifier) => rectifier.rectify_into(&self.grey_frame, &mut self.bed_image),
            // A frame of the model's size is the bed already: copied into the kept buffer
            // (what `resize` would return, without a new image per layer).
            None if self.grey_frame.dimensions() == (input.width, input.height) => {
                self.bed_image.clone_from(&self.grey_frame);
                Ok(())
            }
            None => {
                self.bed_image = image::imageops::resize(
                    &self.grey_frame,
                    input.width,
                    input.height,
                    image::imageops::FilterType::Triangle,
                );
                Ok(())
            }
        };
        lap(&mut timing.rectify_ms);
        if let Err(error) = rectified {
            return self.fault_outcome(format!("rectification failed: {error}"), timing, started);
        }
        // A dark bar is looked for on the bed itself, lit evenly (timed with the frame checks).
        let camera_checks_ms = timing.check_ms;
        let bed_check = self.frame_checks.check_bed(&self.bed_image, self.bed_mm_per_px_xy());
        lap(&mut timing.check_ms);
        timing.check_ms += camera_checks_ms;
        if let Err(unjudged) = bed_check {
            return self.unjudged_outcome(unjudged, timing, started);
        }

        let prepared = models::preprocess_gray(&self.bed_image, input, &mut self.input_tensor);
        lap(&mut timing.preprocess_ms);
        if let Err(error) = prepared {
            return self.fault_outcome(format!("pre-processing failed: {error}"), timing, started);
        }

        // The logits stay where the backend wrote them; fusion reads them there.
        let logits = match self.model.backend.infer(&self.input_tensor) {
            Ok(logits) => logits,
            Err(error) => {
                lap(&mut timing.infer_ms);
                return self.fault_outcome(format!("inference failed: {error}"), timing, started);
            }
        };
        lap(&mut timing.infer_ms);

        models::fuse(
            logits,
            self.model.spec.members,
            &self.model.spec.temperatures,
            &mut self.fused,
        );
        lap(&mut timing.fuse_ms);

        let refine = models::refine_with(&mut self.fused, &self.refine_classes, &mut self.refine_buffers);
        lap(&mut timing.refine_ms);

        models::measure_into(
            &self.fused,
            &self.model.spec.classes,
            self.bed_mm_per_px,
            self.min_defect_area_px,
            &mut self.measure_buffers,
            &mut self.measured,
        );
        lap(&mut timing.measure_ms);

        let mut decision = decide(
            &self.config,
            &self.model.class_names,
            &self.model.defect_classes,
            &self.measured,
            &self.fused,
        );
        let layer_call = self.model.spec.layer_head.as_ref().and_then(|head| {
            LayerCall::from_logits(
                head,
                self.model.backend.layer_logits(),
                self.config.layer_classifier.review_threshold,
                &mut self.layer_probabilities,
            )
        });
        if let (Some(call), Some(head)) = (&layer_call, &self.model.spec.layer_head) {
            apply_layer_call(Some(call), &head.classes[call.top_class], &self.measured, &mut decision);
        }
        let domain = self
            .domain_check
            .as_mut()
            .map(|check| check.assess(self.model.backend.features()));
        if let Some(finding) = &domain {
            apply_domain(finding, &mut decision);
        }
        lap(&mut timing.decide_ms);
        self.frame_checks.judged();
        timing.total_ms = started.elapsed().as_secs_f64() * 1e3;
        let totals = DefectTotals::of(&self.measured);
        let (defects, defects_dropped) = largest_first(&self.measured);
        LayerOutcome {
            verdict: decision.verdict,
            unjudged: None,
            decision: Some(decision),
            defects,
            defects_dropped,
            totals,
            refine: Some(refine),
            timing,
            layer_call,
            domain,
        }
    }

    /// A stage that failed after the checks (flat field, rectification, the model): FAULT.
    fn fault_outcome(&self, reason: String, timing: StageTimes, started: Instant) -> LayerOutcome {
        self.unjudged_outcome(Unjudged::fault(FrameCheck::Stage, reason), timing, started)
    }

    fn unjudged_outcome(&self, unjudged: Unjudged, mut timing: StageTimes, started: Instant) -> LayerOutcome {
        timing.total_ms = started.elapsed().as_secs_f64() * 1e3;
        LayerOutcome {
            verdict: unjudged.verdict,
            unjudged: Some(unjudged),
            decision: None,
            defects: heapless::Vec::new(),
            defects_dropped: 0,
            totals: DefectTotals::default(),
            refine: None,
            timing,
            layer_call: None,
            domain: None,
        }
    }

    /// Millimetres per pixel of `bed_image` along x and along y (a bed that is not square has
    /// two pitches): what turns a pixel bounding box into a footprint on the bed.
    pub fn bed_mm_per_px_xy(&self) -> [f64; 2] {
        let input = &self.model.spec.input;
        [
            self.config.bed.width_mm / input.width as f64,
            self.config.bed.height_mm / input.height as f64,
        ]
    }

    /// Refuses frames that are not a bed camera's: a pixel format the camera path does not
    /// carry, a bed of the wrong shape or size (the rest of the checks are `frame_checks`').
    fn check_frame(&self, frame: &DynamicImage) -> Result<(), String> {
        check_pixel_format(frame)?;
        if self.config.bed.corners_px.is_none() {
            let frame_aspect = frame.width() as f64 / frame.height() as f64;
            let bed_aspect = self.config.bed.width_mm / self.config.bed.height_mm;
            if (frame_aspect / bed_aspect - 1.0).abs() > 0.02 {
                return Err(format!(
                    "image is {}x{} px (aspect {frame_aspect:.2}) but the bed is {}x{} mm (aspect {bed_aspect:.2}); \
                     crop it to the bed or set bed.corners_px",
                    frame.width(),
                    frame.height(),
                    self.config.bed.width_mm,
                    self.config.bed.height_mm
                ));
            }
        }
        let min_side = self.model.spec.input.width.min(self.model.spec.input.height) / 4;
        if frame.width() < min_side || frame.height() < min_side {
            return Err(format!(
                "image is {}x{} px, too small for a {}x{} model",
                frame.width(),
                frame.height(),
                self.model.spec.input.width,
                self.model.spec.input.height
            ));
        }
        Ok(())
    }
}

/// Defects [`Pipeline::new`] makes room for up front; a layer with more grows the list once.
const RESERVED_DEFECTS: usize = 4096;

/// The largest MAX_DEFECTS_PER_LAYER defects, largest first (equal areas in measurement order,
/// as a stable sort leaves them), and how many were dropped. An insertion into the short list,
/// so no sort buffer is allocated.
fn largest_first(measured: &[Defect]) -> (heapless::Vec<Defect, MAX_DEFECTS_PER_LAYER>, u32) {
    let mut kept: heapless::Vec<Defect, MAX_DEFECTS_PER_LAYER> = heapless::Vec::new();
    for defect in measured {
        // After every kept defect at least as large: equal areas keep their order.
        let position = kept
            .iter()
            .position(|k| k.area_px < defect.area_px)
            .unwrap_or(kept.len());
        if position == MAX_DEFECTS_PER_LAYER {
            continue;
        }
        if kept.is_full() {
            kept.pop();
        }
        kept.insert(position, defect.clone()).expect("room was made");
    }
    (kept, measured.len().saturating_sub(MAX_DEFECTS_PER_LAYER) as u32)
}

/// The frame in 8-bit grey (ITU-R 601 luma for colour, the high byte for 16 bit), into `grey`,
/// which keeps its buffer when the frame size does not change.
fn grey_into(frame: &DynamicImage, grey: &mut GrayImage) {
    match frame {
        DynamicImage::ImageLuma8(image) => grey.clone_from(image),
        other => *grey = other.to_luma8(),
    }
}

/// The bed's millimetres per pixel once rectified to the model's input size. A bed that is not
/// square has two pitches; areas use their product, lengths the mean.
pub(crate) fn pixel_pitch_mm(config: &Config, width: u32, height: u32) -> f64 {
    let along_x = config.bed.width_mm / width as f64;
    let along_y = config.bed.height_mm / height as f64;
    (along_x * along_y).sqrt()
}

/// Grey or colour, 8 or 16 bit; anything with alpha or floats is not what a bed camera sends.
pub fn check_pixel_format(frame: &DynamicImage) -> Result<(), String> {
    match frame {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgb16(_) => Ok(()),
        other => Err(format!(
            "pixel format {:?} with {} channels is not a bed camera frame: use grey or RGB, 8 or 16 bit, without alpha",
            other.color(),
            other.color().channel_count()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_maximum_the_smallest_defects_are_dropped_and_counted_but_still_summed() {
        let defect = |class: u8, area_px: u32| Defect {
            class,
            area_px,
            area_mm2: area_px as f64 * 0.25,
            bbox: [0, 0, 1, 1],
            centroid: [0.0, 0.0],
            equivalent_diameter_mm: 1.0,
            ellipse: models::Ellipse {
                theta_deg: 0.0,
                semi_major_px: 1.0,
                semi_minor_px: 1.0,
            },
            mean_uncertainty: 0.0,
            max_uncertainty: 0.0,
        };
        let measured: Vec<Defect> = (1..=70)
            .map(|area| defect(if area % 2 == 0 { 2 } else { 4 }, area))
            .collect();
        let totals = DefectTotals::of(&measured);
        assert_eq!(totals.count, 70);
        assert_eq!(totals.total_area_mm2, (70.0 * 71.0 / 2.0) * 0.25);
        assert_eq!(totals.largest_area_mm2, 70.0 * 0.25);
        assert_eq!(
            totals.class_areas_mm2[2],
            (2..=70).step_by(2).sum::<u32>() as f64 * 0.25
        );
        let (kept, dropped) = largest_first(&measured);
        assert_eq!((kept.len(), dropped), (64, 6));
        assert_eq!(kept[0].area_px, 70);
        assert_eq!(kept[63].area_px, 7);
    }

    #[test]
    fn frames_with_alpha_are_refused_with_the_channel_count() {
        let frame = DynamicImage::ImageRgba8(image::RgbaImage::new(4, 4));
        let reason = check_pixel_format(&frame).unwrap_err();
        assert!(reason.contains("4 channels"), "{reason}");
        assert!(check_pixel_format(&DynamicImage::ImageLuma16(image::ImageBuffer::new(4, 4))).is_ok());
    }
}
