//! The analysis thread of `bedsight run`: owns the camera and the pipeline, takes one layer job
//! at a time, watches for a newly installed model image between layers.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hal::video_trigger::RecoatDetector;
use hal::{Camera, TriggerSource};
use images::ActiveGeneration;

use super::{AnalysisEvent, LayerJob, LayerResult};
use crate::config::Config;
use crate::judge::frame_check::FrameCheck;
use crate::judge::pipeline::{LayerOutcome, Pipeline};
use crate::model::LoadedModel;
use crate::record::layer_images::{JudgedLayer, SnapshotSender};
use crate::record::layer_report::{defect_records, defect_summary, domain_record, layer_class_record};

/// The video trigger: preview frames between layers go through the recoat detector.
pub(super) struct VideoWatch {
    pub(super) detector: RecoatDetector,
    pub(super) interval: Duration,
    pub(super) gate: hal::TriggerGate,
}

/// Waits for the next job; with a video trigger, watches the bed meanwhile. `None`: the
/// control thread is gone.
fn next_job(
    jobs: &Receiver<LayerJob>,
    camera: &mut Box<dyn Camera + Send>,
    video: &mut Option<VideoWatch>,
) -> Option<LayerJob> {
    let Some(watch) = video else { return jobs.recv().ok() };
    loop {
        match jobs.recv_timeout(watch.interval) {
            Ok(job) => return Some(job),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if watch.gate.is_busy() {
            continue;
        }
        // A preview frame that cannot be had is skipped; the layer's own capture reports it.
        if let Ok(frame) = camera.preview() {
            if watch.detector.push(&frame.image, Instant::now()) {
                let _ = watch.gate.request(None, TriggerSource::Video);
            }
        }
    }
}

fn occluded(outcome: &LayerOutcome) -> bool {
    outcome
        .unjudged
        .as_ref()
        .is_some_and(|unjudged| unjudged.check == FrameCheck::Occluded)
}

/// The loop's model: the configuration's fixed `[model] image` when set; otherwise the image
/// active in the slots under `state_dir` (what `bedsight image install` activated), and the
/// embedded one on a box where nothing is installed yet.
fn load_pipeline(
    config_path: &Path,
    backend: Option<&str>,
    state_dir: &Path,
) -> Result<(Pipeline, Option<ActiveGeneration>)> {
    let config = Config::load(config_path)?;
    if config.model.image.is_none() && matches!(images::active_generation(state_dir), Ok(Some(_))) {
        let choice = match backend {
            Some(word) => crate::config::parse_backend(word).context("--backend")?,
            None => config.backend_choice(),
        };
        if let Some((model, generation)) = LoadedModel::load_active(state_dir, choice, config.model.precision())? {
            return Ok((
                Pipeline::new(config, model, &config_path.display().to_string())?,
                Some(generation),
            ));
        }
    }
    Ok((Pipeline::load(Some(config_path), None, backend, None)?, None))
}

/// Between layers: when a new image has been activated in the slots, load it and run the next
/// layer on it. An image that does not load leaves the running model in place.
fn follow_active_image(
    pipeline: &mut Pipeline,
    generation: &mut Option<ActiveGeneration>,
    config_path: &Path,
    backend: Option<&str>,
    state_dir: &Path,
) {
    let Ok(Some(active)) = images::active_generation(state_dir) else {
        return;
    };
    if generation.as_ref() == Some(&active) {
        return;
    }
    match load_pipeline(config_path, backend, state_dir) {
        Ok((next, next_generation)) => {
            tracing::info!(
                "model: now {} {} from slot {} on {}, {}",
                next.model.name,
                next.model.version,
                active.slot,
                next.model.backend_label(),
                next.model.precision_note
            );
            *pipeline = next;
            *generation = next_generation;
        }
        Err(error) => {
            tracing::error!(
                "model: the newly active image in {} did not load; still running {} {}: {error:#}",
                state_dir.display(),
                pipeline.model.name,
                pipeline.model.version
            );
            *generation = Some(active);
        }
    }
}

/// Builds the pipeline on this thread (the model's backend stays where it was made), then
/// analyses one layer per job until the job queue closes.
pub(super) fn analysis_thread(
    config_path: PathBuf,
    backend: Option<String>,
    state_dir: PathBuf,
    mut camera: Box<dyn Camera + Send>,
    mut video: Option<VideoWatch>,
    jobs: Receiver<LayerJob>,
    (events, snapshots): (SyncSender<AnalysisEvent>, Option<SnapshotSender>),
) {
    let mut seq = 0u64;
    let (mut pipeline, mut generation) = match load_pipeline(&config_path, backend.as_deref(), &state_dir) {
        Ok(loaded) => loaded,
        Err(error) => {
            events.send(AnalysisEvent::Started(Err(format!("{error:#}")))).ok();
            return;
        }
    };
    let label = format!(
        "{} {} on {}, {}, {}",
        pipeline.model.name,
        pipeline.model.version,
        pipeline.model.backend_label(),
        pipeline.model.precision_note,
        pipeline.model.domain_note()
    );
    if events.send(AnalysisEvent::Started(Ok(label))).is_err() {
        return;
    }
    while let Some(LayerJob) = next_job(&jobs, &mut camera, &mut video) {
        seq += 1;
        if pipeline.config.model.image.is_none() {
            follow_active_image(
                &mut pipeline,
                &mut generation,
                &config_path,
                backend.as_deref(),
                &state_dir,
            );
        }
        let mut frame = match camera.capture() {
            Ok(frame) => frame,
            Err(error) => {
                let mut result = LayerResult::fault(format!("camera: {error}"));
                result.camera_failed = true;
                result.model = format!("{} {}", pipeline.model.name, pipeline.model.version);
                result.model_name = pipeline.model.name.clone();
                result.model_version = pipeline.model.version.clone();
                result.backend = pipeline.model.backend_label();
                if events.send(AnalysisEvent::Done(Box::new(result))).is_err() {
                    return;
                }
                continue;
            }
        };
        if events.send(AnalysisEvent::Analysing).is_err() {
            return;
        }
        let mut outcome = pipeline.run_layer(&frame.image);
        // With a video trigger the recoater or the plume may still be passing: look again until
        // the bed is clear, for at most `frame_check.occlusion_wait_ms`, then judge what is there.
        if let Some(watch) = &video {
            let deadline = Instant::now() + Duration::from_millis(pipeline.config.frame_check.occlusion_wait_ms);
            while occluded(&outcome) && Instant::now() + watch.interval <= deadline {
                std::thread::sleep(watch.interval);
                let Ok(again) = camera.capture() else { break };
                frame = again;
                outcome = pipeline.run_layer(&frame.image);
            }
        }
        let detail = match &outcome.unjudged {
            Some(unjudged) => unjudged.text.clone(),
            None => defect_summary(&outcome, &pipeline.model.class_names),
        };
        let (layer_class, layer_class_confidence) = layer_class_record(&outcome, &pipeline);
        let result = LayerResult {
            layer_class,
            layer_class_confidence,
            domain: domain_record(&outcome),
            verdict: outcome.verdict,
            defect_count: outcome.totals.count,
            total_defect_area_mm2: outcome.totals.total_area_mm2,
            largest_defect_area_mm2: outcome.totals.largest_area_mm2,
            class_areas_mm2: outcome.totals.class_areas_mm2,
            uncertainty_score: outcome.decision.as_ref().map(|d| d.uncertainty_score).unwrap_or(0.0),
            detail,
            frame_source: frame.source,
            camera_failed: false,
            model: format!("{} {}", pipeline.model.name, pipeline.model.version),
            model_name: pipeline.model.name.clone(),
            model_version: pipeline.model.version.clone(),
            backend: pipeline.model.backend_label(),
            defects: defect_records(&outcome, &pipeline),
            total_ms: outcome.timing.total_ms,
            infer_ms: outcome.timing.infer_ms,
            timing: Some(outcome.timing),
            reason: match &outcome.unjudged {
                Some(unjudged) => Some(unjudged.reason()),
                None => outcome.decision.as_ref().and_then(|d| d.reason.clone()),
            },
            tripped_classes: outcome
                .decision
                .as_ref()
                .map(|d| d.tripped_classes.clone())
                .unwrap_or_default(),
            class_names: pipeline.model.class_names.clone(),
        };
        if events.send(AnalysisEvent::Done(Box::new(result))).is_err() {
            return;
        }
        // The PLC has its verdict on the way: now copy the layer's pixels for the recorder.
        if let Some(snapshots) = &snapshots {
            snapshots.offer(|snapshot| match outcome.unjudged {
                None => snapshot.fill(
                    seq,
                    &frame.image,
                    &JudgedLayer {
                        bed: &pipeline.bed_image,
                        fused: &pipeline.fused,
                        defects: &outcome.defects,
                        classes: &pipeline.model.spec.classes,
                        mm_per_px: pipeline.bed_mm_per_px,
                    },
                ),
                Some(_) => snapshot.fill_unjudged(seq, &frame.image),
            });
        }
    }
}
