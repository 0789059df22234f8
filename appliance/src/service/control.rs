//! The control thread of `bedsight run`: triggers in, verdicts out to every PLC output, the
//! heartbeat, and where each finished layer goes (journal, dashboard, image recorder).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hal::{LoopState, Outputs, Trigger, TriggerError, TriggerSource, Verdict, VerdictMessage};

use super::{log, systemd};
use super::{AnalysisEvent, LayerCounter, LayerJob};
use crate::config::Config;
use crate::judge::decide::RecoatBudget;
use crate::judge::history::BuildHistory;
use crate::judge::reason::{Reason, RuleKind};
use crate::record::journal::{Journal, LayerRecord};
use crate::record::layer_images::{LayerVerdict, VerdictSender};
use crate::web::board::Board;

/// Where each finished layer goes after the PLC has its verdict: the journal, the dashboard
/// and the image recorder.
pub(super) struct LayerNews {
    pub(super) journal: Journal,
    pub(super) board: Arc<Board>,
    pub(super) images: Option<VerdictSender>,
}

/// One layer in flight: its number, who asked, when.
pub(super) struct InFlight {
    layer: u32,
    source: TriggerSource,
    started: Instant,
}

/// The control loop; returns how many layers got a verdict.
// Allowed: each argument is one end the loop is wired to (queue, outputs, the analysis
// thread's two channels, the stop flag, where layers go, the build's memory, the journal read
// at start), all made by `run`; a struct for them would exist only to be unpacked here.
#[allow(clippy::too_many_arguments)]
pub(super) fn control_loop(
    config: &Config,
    queue: &mut hal::TriggerQueue,
    outputs: &mut Vec<Box<dyn Outputs + Send>>,
    jobs: &SyncSender<LayerJob>,
    events: &Receiver<AnalysisEvent>,
    stop: &AtomicBool,
    news: &mut LayerNews,
    history: &mut BuildHistory,
    restored: &[LayerRecord],
) -> Result<u64> {
    let mut seq = 0u64;
    let tick = Duration::from_millis(50);
    let mut next_heartbeat = Instant::now() + Duration::from_secs(1);
    let mut budget = RecoatBudget::default();
    let mut counter = LayerCounter { next: 1 };
    // After a restart the layer numbers and the recoat budget go on from the journal.
    for record in restored {
        let verdict = Verdict::parse(&record.verdict).unwrap_or(Verdict::Fault);
        budget.apply(record.layer, verdict, config.recoat.max_retries);
        counter.after(record.layer, verdict);
    }
    let mut in_flight: Option<InFlight> = None;
    let mut layers = 0u64;
    // systemd restarts a loop that stops turning (board/bedsight.service, WatchdogSec=).
    let mut watchdog = systemd::Watchdog::from_env();
    if let Some(every) = watchdog.interval() {
        tracing::info!("systemd: watchdog pinged every {:.1} s", every.as_secs_f64());
    }
    loop {
        watchdog.tick();
        if Instant::now() >= next_heartbeat {
            report(outputs.heartbeat());
            next_heartbeat += Duration::from_secs(1);
            // After a stall, beat on from now: the missed beats are what tells the PLC.
            if next_heartbeat < Instant::now() {
                next_heartbeat = Instant::now() + Duration::from_secs(1);
            }
        }
        report(outputs.tick());
        match &in_flight {
            None => {
                // Stopping: a trigger the gate already accepted is still answered, then out.
                let stopping = stop.load(Ordering::Relaxed);
                let request = match queue.wait(if stopping { Duration::ZERO } else { tick }) {
                    Ok(Some(request)) => request,
                    Ok(None) if stopping => return Ok(layers),
                    Ok(None) => continue,
                    Err(_) if stopping => return Ok(layers),
                    Err(TriggerError::Closed) => {
                        // Every source is gone (nothing to trigger layers): idle until stopped.
                        std::thread::sleep(tick);
                        continue;
                    }
                    Err(error) => {
                        tracing::error!("trigger: {error}");
                        continue;
                    }
                };
                let layer = request.layer.unwrap_or(counter.next);
                report(outputs.set_state(LoopState::Capturing));
                jobs.send(LayerJob)
                    .map_err(|_| anyhow!("the analysis thread stopped"))?;
                in_flight = Some(InFlight {
                    layer,
                    source: request.source,
                    started: Instant::now(),
                });
            }
            Some(flight) => match events.recv_timeout(tick) {
                Ok(AnalysisEvent::Analysing) => report(outputs.set_state(LoopState::Analysing)),
                Ok(AnalysisEvent::Done(mut result)) => {
                    let assessed = history.assess(
                        config,
                        &result.class_names,
                        flight.layer,
                        &result.defects,
                        result.verdict,
                        result.reason.take(),
                        &result.tripped_classes,
                    );
                    let verdict = budget.apply(flight.layer, assessed.verdict, config.recoat.max_retries);
                    let reason = if verdict != assessed.verdict {
                        let class_index = assessed.reason.as_ref().map(|r| r.class_index).unwrap_or(0);
                        let text = format!(
                            "layer {} spread {} times already (recoat.max_retries) → PAUSE",
                            flight.layer,
                            config.recoat.max_retries + 1
                        );
                        Some(Reason {
                            kind: RuleKind::RecoatBudget,
                            class_index,
                            class: String::new(),
                            text,
                        })
                    } else {
                        assessed.reason.clone().filter(|_| verdict != Verdict::Pass)
                    };
                    let message = VerdictMessage {
                        layer: flight.layer,
                        verdict,
                        defect_count: result.defect_count,
                        total_defect_area_mm2: result.total_defect_area_mm2,
                        largest_defect_area_mm2: result.largest_defect_area_mm2,
                        class_areas_mm2: result.class_areas_mm2,
                        uncertainty_score: result.uncertainty_score,
                        reason_code: reason.as_ref().map(Reason::code).unwrap_or(0),
                    };
                    // Free the gate first: a PLC that triggers the moment it sees this verdict
                    // must not be told BUSY. A trigger that slips in between waits in the
                    // one-slot queue until this iteration is over.
                    queue.layer_done();
                    report(outputs.publish(&message));
                    // A camera that gave no frame is a standing fault until a layer captures again.
                    report(outputs.set_state(if result.camera_failed {
                        LoopState::Fault
                    } else {
                        LoopState::Ready
                    }));
                    counter.after(flight.layer, verdict);
                    layers += 1;
                    let budget_note = if verdict != assessed.verdict {
                        format!(" ({} past recoat.max_retries)", assessed.verdict)
                    } else {
                        String::new()
                    };
                    log::verdict_line(
                        verdict,
                        &format!(
                            "layer {} {}{budget_note} defects {} area {:.2} mm2 uncertainty {:.3} [{}] {:.0} ms model {} {} {}",
                            flight.layer,
                            verdict,
                            result.defect_count,
                            result.total_defect_area_mm2,
                            result.uncertainty_score,
                            flight.source.as_str(),
                            flight.started.elapsed().as_secs_f64() * 1e3,
                            if result.model.is_empty() { "-" } else { &result.model },
                            result.frame_source,
                            result.detail
                        ),
                    );
                    for hit in &assessed.hits {
                        log::verdict_line(verdict, &format!("track: {}", hit.reason.text));
                    }
                    if let Some(reason) = &reason {
                        log::verdict_line(
                            verdict,
                            &format!("rule: {} (code {}): {}", reason.rule(), reason.code(), reason.text),
                        );
                    }
                    let recoat_outcome = match assessed.recoat_fixed {
                        Some(fixed) => {
                            let word = if fixed { "fixed" } else { "not fixed" };
                            let counts = history.recoats;
                            tracing::info!(
                                "recoat: layer {} {word} ({} of {} re-spread layers fixed)",
                                flight.layer,
                                counts.fixed,
                                counts.fixed + counts.not_fixed
                            );
                            word.to_string()
                        }
                        None => String::new(),
                    };
                    let recoat_classes = if verdict == Verdict::Recoat {
                        BuildHistory::recoat_classes(&result.tripped_classes, &assessed.hits)
                    } else {
                        Vec::new()
                    };
                    history.record_verdict(flight.layer, verdict, recoat_classes.clone());
                    // After the PLC has its verdict: a journal that cannot be written is
                    // reported and the build goes on.
                    let record = LayerRecord {
                        layer: flight.layer,
                        time_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|t| t.as_millis() as u64)
                            .unwrap_or(0),
                        trigger: flight.source.as_str().to_string(),
                        verdict: verdict.as_str().to_string(),
                        defects: result.defects,
                        uncertainty_score: result.uncertainty_score,
                        model: result.model_name,
                        model_version: result.model_version,
                        backend: result.backend,
                        total_ms: result.total_ms,
                        infer_ms: result.infer_ms,
                        rule: reason.as_ref().map(Reason::rule).unwrap_or_default(),
                        reason_code: reason.as_ref().map(Reason::code).unwrap_or(0),
                        reason: reason.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
                        recoat_outcome,
                        recoat_classes,
                        layer_class: result.layer_class,
                        layer_class_confidence: result.layer_class_confidence,
                        domain: result.domain,
                    };
                    if let Err(error) = news.journal.append(&record) {
                        tracing::error!("{error:#}");
                    }
                    seq += 1;
                    let (board, index) = (&news.board, news.board.next_index());
                    let model_error = result
                        .detail
                        .starts_with("inference failed")
                        .then(|| result.detail.clone());
                    board.metrics.layer(
                        verdict,
                        result.timing.as_ref(),
                        flight.started.elapsed().as_secs_f64(),
                        result.camera_failed,
                        model_error.is_some(),
                        reason.as_ref().and_then(Reason::frame_check),
                    );
                    // A frozen or moved camera is down as much as one that gives no frame.
                    let camera_down = reason
                        .as_ref()
                        .and_then(Reason::frame_check)
                        .is_some_and(|check| check.camera_down());
                    let camera_error = (result.camera_failed || camera_down)
                        .then(|| result.detail.trim_start_matches("camera: ").to_string());
                    let verdict_word = record.verdict.clone();
                    board.add_record(record, camera_error, model_error);
                    // After the dashboard has the record: the recorder's "images written" news
                    // must find it there.
                    if let Some(images) = &news.images {
                        images.send(LayerVerdict {
                            seq,
                            index,
                            layer: flight.layer,
                            verdict: verdict_word,
                        });
                    }
                    in_flight = None;
                }
                Ok(AnalysisEvent::Started(_)) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the analysis thread stopped during layer {}", flight.layer)
                }
            },
        }
    }
}

/// An output that fails is reported and the loop goes on: the other outputs still work.
fn report(result: Result<(), hal::PlcError>) {
    crate::web::metrics::PLC.note(result.is_ok());
    if let Err(error) = result {
        tracing::error!("plc: {error}");
    }
}
