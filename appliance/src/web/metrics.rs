//! The counters of `bedsight run` and their Prometheus text exposition (format 0.0.4) for
//! `/metrics`: layers, verdicts, stage latencies as histograms, camera, backend, PLC and image
//! recorder errors. Lock-free counters; the histograms take a short lock per layer.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use hal::Verdict;

use hal::modbus::RegisterBank;

use crate::judge::frame_check::FrameCheck;
use crate::judge::pipeline::StageTimes;
use crate::record::layer_images::RecorderStats;

/// Upper bounds of the latency histograms' buckets, seconds (a layer takes ~10 ms to ~10 s).
const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The stages of `StageTimes`, by their label.
pub const STAGES: [&str; 9] = [
    "check",
    "rectify",
    "preprocess",
    "infer",
    "fuse",
    "refine",
    "measure",
    "decide",
    "total",
];

const VERDICTS: [Verdict; 5] = [
    Verdict::Pass,
    Verdict::Recoat,
    Verdict::Review,
    Verdict::Pause,
    Verdict::Fault,
];

/// Errors of the PLC outputs, counted where every output call is reported (`run::report`).
pub static PLC: PlcHealth = PlcHealth {
    errors: AtomicU64::new(0),
    last_ok: AtomicBool::new(true),
};

pub struct PlcHealth {
    pub errors: AtomicU64,
    /// Whether the last output call (heartbeat, state, verdict) went through.
    pub last_ok: AtomicBool,
}

impl PlcHealth {
    pub fn note(&self, ok: bool) {
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.last_ok.store(ok, Ordering::Relaxed);
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [u64; BUCKETS_S.len() + 1],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS_S
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS_S.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (slot, bound) in BUCKETS_S
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .enumerate()
        {
            cumulative += self.buckets[slot];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything `/metrics` shows.
#[derive(Default)]
pub struct Metrics {
    layers: AtomicU64,
    verdicts: [AtomicU64; VERDICTS.len()],
    camera_errors: AtomicU64,
    backend_errors: AtomicU64,
    /// Layers kept from the model, by the frame check that kept them (FrameCheck::ALL's order).
    frame_checks: [AtomicU64; FrameCheck::ALL.len()],
    stages: Mutex<[Histogram; STAGES.len()]>,
    /// Trigger to verdict, as the PLC waits for it.
    layer_latency: Mutex<Histogram>,
    recorder: OnceLock<std::sync::Arc<RecorderStats>>,
    /// The Modbus server's register bank, whose counters say whether a PLC is talking.
    modbus: OnceLock<std::sync::Arc<Mutex<RegisterBank>>>,
}

/// A Modbus PLC polls: one silent this long is gone (power cut, cable, program stopped).
pub const PLC_SILENT_AFTER_S: f64 = 30.0;

/// Whether the PLC is talking to the box, and what was last heard.
#[derive(Debug, Clone, PartialEq)]
pub struct PlcLink {
    pub up: bool,
    pub detail: String,
}

impl Metrics {
    /// Counts one finished layer. `timing`: the pipeline's stages (none when the camera gave
    /// no frame); `latency_s`: trigger to verdict; `frame_check`: the check that kept the frame
    /// from the model, if one did.
    pub fn layer(
        &self,
        verdict: Verdict,
        timing: Option<&StageTimes>,
        latency_s: f64,
        camera_failed: bool,
        backend_failed: bool,
        frame_check: Option<FrameCheck>,
    ) {
        self.layers.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = frame_check.and_then(|check| FrameCheck::ALL.iter().position(|c| *c == check)) {
            self.frame_checks[slot].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = VERDICTS.iter().position(|v| *v == verdict) {
            self.verdicts[slot].fetch_add(1, Ordering::Relaxed);
        }
        if camera_failed {
            self.camera_errors.fetch_add(1, Ordering::Relaxed);
        }
        if backend_failed {
            self.backend_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(t) = timing {
            let values = [
                t.check_ms,
                t.rectify_ms,
                t.preprocess_ms,
                t.infer_ms,
                t.fuse_ms,
                t.refine_ms,
                t.measure_ms,
                t.decide_ms,
                t.total_ms,
            ];
            let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
            for (histogram, ms) in stages.iter_mut().zip(values) {
                histogram.observe(ms / 1e3);
            }
        }
        self.layer_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(latency_s);
    }

    pub fn watch_recorder(&self, stats: std::sync::Arc<RecorderStats>) {
        self.recorder.set(stats).ok();
    }

    pub fn watch_modbus(&self, bank: std::sync::Arc<Mutex<RegisterBank>>) {
        self.modbus.set(bank).ok();
    }

    /// The Modbus PLC's link, when the box serves Modbus: down until a PLC has made a request
    /// and after PLC_SILENT_AFTER_S without one.
    pub fn plc_link(&self) -> Option<PlcLink> {
        let bank = self.modbus.get()?;
        let counters = bank.lock().unwrap_or_else(|p| p.into_inner()).counters;
        Some(plc_link(&counters, std::time::SystemTime::now()))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            &mut out,
            "bedsight_layers_total",
            "Layers that got a verdict.",
            self.layers.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP bedsight_verdicts_total Verdicts sent to the PLC, by verdict.\n# TYPE bedsight_verdicts_total counter");
        for (verdict, count) in VERDICTS.iter().zip(&self.verdicts) {
            let _ = writeln!(
                out,
                "bedsight_verdicts_total{{verdict=\"{}\"}} {}",
                verdict.as_str(),
                count.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "bedsight_camera_errors_total",
            "Layers the camera gave no frame for.",
            self.camera_errors.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bedsight_backend_errors_total",
            "Layers whose inference failed.",
            self.backend_errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP bedsight_frame_checks_total Layers the model did not judge, by the frame check that kept them (stage: a stage failed).\n# TYPE bedsight_frame_checks_total counter");
        for (check, count) in FrameCheck::ALL.iter().zip(&self.frame_checks) {
            let _ = writeln!(
                out,
                "bedsight_frame_checks_total{{check=\"{}\"}} {}",
                check.name(),
                count.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "bedsight_plc_errors_total",
            "PLC output calls that failed.",
            PLC.errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP bedsight_stage_seconds Time spent in each pipeline stage per layer.\n# TYPE bedsight_stage_seconds histogram");
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (stage, histogram) in STAGES.iter().zip(stages.iter()) {
            histogram.render(&mut out, "bedsight_stage_seconds", &format!("stage=\"{stage}\""));
        }
        let _ = writeln!(
            out,
            "# HELP bedsight_layer_seconds Trigger to verdict.\n# TYPE bedsight_layer_seconds histogram"
        );
        self.layer_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .render(&mut out, "bedsight_layer_seconds", "");
        if let Some(bank) = self.modbus.get() {
            let counters = bank.lock().unwrap_or_else(|p| p.into_inner()).counters;
            counter(
                &mut out,
                "bedsight_plc_requests_total",
                "Modbus requests answered, normally or with an exception.",
                counters.requests,
            );
            counter(
                &mut out,
                "bedsight_plc_exceptions_total",
                "Modbus requests answered with an exception.",
                counters.exceptions,
            );
            let last = counters
                .last_request
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(
                out,
                "# HELP bedsight_plc_connections Modbus TCP clients connected now.\n# TYPE bedsight_plc_connections gauge\nbedsight_plc_connections {}\n\
                 # HELP bedsight_plc_last_request_timestamp_seconds When the last Modbus request was answered (Unix time; 0: never).\n\
                 # TYPE bedsight_plc_last_request_timestamp_seconds gauge\nbedsight_plc_last_request_timestamp_seconds {last:.3}",
                counters.connections
            );
        }
        if let Some(stats) = self.recorder.get() {
            counter(
                &mut out,
                "bedsight_layer_images_written_total",
                "Layers whose images were written.",
                stats.written.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "bedsight_layer_images_dropped_total",
                "Layers whose images were dropped: the recorder was behind.",
                stats.dropped.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "bedsight_layer_images_failed_total",
                "Layers whose images could not be written.",
                stats.failed.load(Ordering::Relaxed),
            );
            counter(
                &mut out,
                "bedsight_layer_images_deleted_total",
                "Layers deleted by record.max_gb.",
                stats.deleted.load(Ordering::Relaxed),
            );
            let _ = writeln!(
                out,
                "# HELP bedsight_layer_images_bytes Bytes in the image folder.\n# TYPE bedsight_layer_images_bytes gauge\nbedsight_layer_images_bytes {}",
                stats.bytes.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// The link `counters` describe at `now`.
fn plc_link(counters: &hal::modbus::ModbusCounters, now: std::time::SystemTime) -> PlcLink {
    let Some(last) = counters.last_request else {
        return PlcLink {
            up: false,
            detail: "no PLC has made a request yet".into(),
        };
    };
    let age = now.duration_since(last).map_or(0.0, |d| d.as_secs_f64());
    if age > PLC_SILENT_AFTER_S {
        return PlcLink {
            up: false,
            detail: format!(
                "no request for {age:.0} s (> {PLC_SILENT_AFTER_S:.0} s; {} answered before)",
                counters.requests
            ),
        };
    }
    PlcLink {
        up: true,
        detail: format!(
            "{} connected, last request {age:.1} s ago, {} answered",
            counters.connections, counters.requests
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plc_link_is_down_before_the_first_request_and_after_a_silence() {
        let now = std::time::SystemTime::now();
        let mut counters = hal::modbus::ModbusCounters::default();
        assert_eq!(
            plc_link(&counters, now),
            PlcLink {
                up: false,
                detail: "no PLC has made a request yet".into()
            }
        );
        counters.requests = 12;
        counters.connections = 1;
        counters.last_request = Some(now - std::time::Duration::from_millis(2500));
        assert_eq!(
            plc_link(&counters, now),
            PlcLink {
                up: true,
                detail: "1 connected, last request 2.5 s ago, 12 answered".into()
            }
        );
        counters.last_request = Some(now - std::time::Duration::from_secs(31));
        assert_eq!(
            plc_link(&counters, now).detail,
            "no request for 31 s (> 30 s; 12 answered before)"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::default();
        let timing = StageTimes {
            infer_ms: 3.0,
            total_ms: 40.0,
            ..StageTimes::default()
        };
        metrics.layer(Verdict::Pass, Some(&timing), 0.05, false, false, None);
        metrics.layer(Verdict::Recoat, Some(&timing), 0.2, false, false, None);
        metrics.layer(Verdict::Fault, None, 0.001, true, false, Some(FrameCheck::Stage));
        metrics.layer(Verdict::Fault, None, 0.01, false, false, Some(FrameCheck::Frozen));
        let text = metrics.render();
        assert!(
            text.contains("bedsight_frame_checks_total{check=\"frozen\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bedsight_frame_checks_total{check=\"blurred\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("bedsight_layers_total 4\n"), "{text}");
        assert!(text.contains("bedsight_verdicts_total{verdict=\"RECOAT\"} 1\n"));
        assert!(text.contains("bedsight_camera_errors_total 1\n"));
        // infer took 3 ms twice: not in the 2.5 ms bucket, in the 5 ms one and every one above.
        assert!(text.contains("bedsight_stage_seconds_bucket{stage=\"infer\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("bedsight_stage_seconds_bucket{stage=\"infer\",le=\"0.005\"} 2\n"));
        assert!(text.contains("bedsight_stage_seconds_bucket{stage=\"infer\",le=\"+Inf\"} 2\n"));
        assert!(
            text.contains("bedsight_stage_seconds_sum{stage=\"infer\"} 0.006\n"),
            "{text}"
        );
        assert!(text.contains("bedsight_layer_seconds_bucket{le=\"0.05\"} 3\n"));
        assert!(text.contains("bedsight_layer_seconds_count 4\n"));
    }
}
