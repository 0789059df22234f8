//! What the dashboard shows, kept up to date by `bedsight run`: every journal record of the
//! build (restored from the journal at start) as a compact entry, the newest records in full
//! (older ones are read back from the journal), which of them have images, the operator's
//! annotations, the health of camera, model and PLC link, and the pages listening for news.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use hal::plc::Verdict;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::layers::{Layer, Layers};
use crate::record::journal::LayerRecord;
use crate::record::layer_images::dir_name;
use crate::web::metrics::{Metrics, PLC};

/// A page that listens for news gets at most this many unsent events queued; past that it
/// misses them (and reloads its state when it reconnects).
const SUBSCRIBER_QUEUE: usize = 64;
/// Pages listening at once.
pub const MAX_SUBSCRIBERS: usize = 32;
/// Records kept in full for `/api/records/<i>` (about 1 KB each): the ones an operator clicks
/// most. An older one is read back from the journal; every record has its compact entry.
pub const RECENT_RECORDS: usize = 256;

/// What an operator may record about a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A REVIEW was looked at.
    Acknowledge,
    /// A layer that was not PASS showed no real defect: label it later.
    FalseAlarm,
}

impl Action {
    pub fn parse(word: &str) -> Option<Action> {
        match word {
            "acknowledge" => Some(Action::Acknowledge),
            "false-alarm" => Some(Action::FalseAlarm),
            _ => None,
        }
    }
}

/// One operator annotation, a line of `annotations.jsonl` beside the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// The record's position in the journal.
    pub index: u64,
    pub layer: u32,
    pub action: Action,
    pub time_ms: u64,
    #[serde(default)]
    pub note: String,
}

/// Reads `annotations.jsonl`; a torn last line (a crash mid-write) is skipped with a warning,
/// any other bad line is an error naming the file and the line.
pub fn read_annotations(path: &Path) -> Result<Vec<Annotation>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("annotations {}: cannot read it", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut annotations = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(annotation) => annotations.push(annotation),
            Err(_) if number + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!("annotations {}: a torn last line is skipped", path.display())
            }
            Err(error) => bail!("annotations {}: line {}: {error}", path.display(), number + 1),
        }
    }
    Ok(annotations)
}

/// The link states `/healthz` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub model: String,
    pub backend: String,
    pub camera: String,
    pub trigger: String,
    pub plc: String,
    pub camera_up: bool,
    /// Why the camera is down, when it is.
    pub camera_error: Option<String>,
    pub model_up: bool,
    pub model_error: Option<String>,
}

impl Status {
    /// `model_label`: "name version on backend", as `bedsight run` prints it.
    pub fn new(model_label: &str, camera: &str, trigger: &str, plc: &str) -> Status {
        let (model, backend) = model_label.split_once(" on ").unwrap_or((model_label, ""));
        Status {
            model: model.into(),
            backend: backend.into(),
            camera: camera.into(),
            trigger: trigger.into(),
            plc: plc.into(),
            camera_up: true,
            camera_error: None,
            model_up: true,
            model_error: None,
        }
    }
}

struct State {
    /// Every record of the build, compact, in journal order.
    layers: Layers,
    /// The newest `RECENT_RECORDS` records in full; the first is record `layers.len() - recent.len()`.
    recent: VecDeque<LayerRecord>,
    /// Whether the images of each record are in the image folder.
    images: Vec<bool>,
    annotations: Vec<Annotation>,
    status: Status,
    subscribers: Vec<SyncSender<String>>,
}

/// The dashboard's state, shared by the control loop, the image recorder and the web server.
pub struct Board {
    state: Mutex<State>,
    pub metrics: Metrics,
    pub images_folder: Option<PathBuf>,
    /// Where records older than the recent ones are read back from.
    journal_path: PathBuf,
    annotations_path: PathBuf,
    /// The loop's configuration: the bed's size and the track settings for the defect map
    /// and the tracks list.
    pub config: std::sync::OnceLock<crate::config::Config>,
}

impl Board {
    /// The build so far: the records of the journal at `journal_path` and the annotations beside it.
    pub fn new(
        records: Vec<LayerRecord>,
        journal_path: PathBuf,
        images_folder: Option<PathBuf>,
        annotations_path: PathBuf,
        status: Status,
    ) -> Result<Board> {
        let annotations = read_annotations(&annotations_path)?;
        let images = records
            .iter()
            .enumerate()
            .map(|(index, r)| {
                images_folder
                    .as_ref()
                    .is_some_and(|folder| folder.join(dir_name(index as u64, r.layer, &r.verdict)).is_dir())
            })
            .collect();
        let layers = Layers::from_records(&records);
        let mut recent: VecDeque<LayerRecord> = records.into();
        recent.drain(..recent.len().saturating_sub(RECENT_RECORDS));
        Ok(Board {
            state: Mutex::new(State {
                layers,
                recent,
                images,
                annotations,
                status,
                subscribers: Vec::new(),
            }),
            metrics: Metrics::default(),
            images_folder,
            journal_path,
            annotations_path,
            config: std::sync::OnceLock::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the loop runs on, once it has started.
    pub fn set_status(&self, status: Status) {
        let mut state = self.lock();
        state.status = status;
        let event = json!({ "status": self.status_json(&state.status) });
        broadcast(&mut state, "status", &event);
    }

    /// The index the next record gets.
    pub fn next_index(&self) -> u64 {
        self.lock().layers.len() as u64
    }

    /// A layer's record is in the journal: show it.
    pub fn add_record(&self, record: LayerRecord, camera_error: Option<String>, model_error: Option<String>) {
        let mut state = self.lock();
        let index = state.layers.len() as u64;
        state.status.camera_up = camera_error.is_none();
        state.status.camera_error = camera_error;
        state.status.model_up = model_error.is_none();
        state.status.model_error = model_error;
        // The loop follows the active model slot between layers: show what judged this layer.
        if !record.model.is_empty() {
            state.status.model = format!("{} {}", record.model, record.model_version);
            state.status.backend = record.backend.clone();
        }
        let event = json!({ "record": record_json(index, &record, &[]), "status": self.status_json(&state.status) });
        state.layers.push(&record);
        if state.recent.len() == RECENT_RECORDS {
            state.recent.pop_front();
        }
        state.recent.push_back(record);
        state.images.push(false);
        broadcast(&mut state, "layer", &event);
    }

    /// The recorder has written record `index`'s images, and deleted those of `deleted`.
    pub fn images_written(&self, index: u64, deleted: &[u64]) {
        let mut state = self.lock();
        if let Some(flag) = state.images.get_mut(index as usize) {
            *flag = true;
        }
        for &gone in deleted {
            if let Some(flag) = state.images.get_mut(gone as usize) {
                *flag = false;
            }
        }
        broadcast(&mut state, "images", &json!({ "index": index, "deleted": deleted }));
    }

    /// Records an operator's annotation durably (fsynced) and shows it. The error is what the
    /// operator is told (HTTP 404 or 409 by its kind).
    pub fn annotate(&self, index: u64, action: Action, note: &str) -> Result<Annotation, AnnotateError> {
        let mut state = self.lock();
        let Some(record) = state.layers.get(index as usize) else {
            return Err(AnnotateError::NoSuchRecord(format!(
                "there is no record {index}: the build has {} records",
                state.layers.len()
            )));
        };
        match action {
            Action::Acknowledge if record.verdict != Verdict::Review => {
                return Err(AnnotateError::Conflict(format!(
                    "record {index} (layer {}) is {}, not REVIEW: only a REVIEW is acknowledged",
                    record.layer,
                    record.verdict.as_str()
                )))
            }
            Action::FalseAlarm if record.verdict == Verdict::Pass => {
                return Err(AnnotateError::Conflict(format!(
                    "record {index} (layer {}) is PASS: only a layer that was not PASS can be a false alarm",
                    record.layer
                )))
            }
            _ => {}
        }
        if state.annotations.iter().any(|a| a.index == index && a.action == action) {
            return Err(AnnotateError::Conflict(format!(
                "record {index} is already marked {}",
                action_word(action)
            )));
        }
        let annotation = Annotation {
            index,
            layer: record.layer,
            action,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.as_millis() as u64)
                .unwrap_or(0),
            note: note.chars().take(500).collect(),
        };
        let line = serde_json::to_string(&annotation).expect("plain data") + "\n";
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.annotations_path)
            .and_then(|mut file| file.write_all(line.as_bytes()).and_then(|_| file.sync_data()));
        if let Err(error) = written {
            return Err(AnnotateError::Storage(format!(
                "annotations {}: cannot append: {error}",
                self.annotations_path.display()
            )));
        }
        state.annotations.push(annotation.clone());
        broadcast(&mut state, "annotation", &json!(annotation));
        Ok(annotation)
    }

    /// Subscribes a page to the news; `None` when too many are listening.
    pub fn subscribe(&self) -> Option<Receiver<String>> {
        let mut state = self.lock();
        state
            .subscribers
            .retain(|s| !matches!(s.try_send(": ping\n\n".into()), Err(TrySendError::Disconnected(_))));
        if state.subscribers.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (sender, receiver) = sync_channel(SUBSCRIBER_QUEUE);
        state.subscribers.push(sender);
        Some(receiver)
    }

    /// `/api/state`: status and every record's summary (no defect lists).
    pub fn state_json(&self) -> Value {
        let state = self.lock();
        let records: Vec<Value> = state
            .layers
            .iter()
            .enumerate()
            .map(|(i, r)| summary_json(i as u64, &state.layers, r, state.images[i]))
            .collect();
        json!({ "status": self.status_json(&state.status), "records": records, "annotations": state.annotations })
    }

    /// `/api/records/<index>`: one record in full with its annotations; `None` when there is no
    /// such record. A record older than the recent ones is read back from the journal.
    pub fn record_json(&self, index: u64) -> Result<Option<Value>> {
        {
            let state = self.lock();
            if index as usize >= state.layers.len() {
                return Ok(None);
            }
            let first_recent = state.layers.len() - state.recent.len();
            if let Some(position) = (index as usize).checked_sub(first_recent) {
                return Ok(Some(self.full_json(&state, index, &state.recent[position])));
            }
        }
        // Read without the lock: the loop goes on adding records meanwhile.
        let record = self.read_back(index)?;
        let state = self.lock();
        Ok(Some(self.full_json(&state, index, &record)))
    }

    fn full_json(&self, state: &State, index: u64, record: &LayerRecord) -> Value {
        let annotations: Vec<Annotation> = state.annotations.iter().filter(|a| a.index == index).cloned().collect();
        let mut value = record_json(index, record, &annotations);
        value["images"] = json!(state.images[index as usize]);
        value
    }

    /// Record `index` as the journal holds it.
    fn read_back(&self, index: u64) -> Result<LayerRecord> {
        let contents = crate::record::journal::read(&self.journal_path)?;
        let count = contents.records.len();
        contents.records.into_iter().nth(index as usize).with_context(|| {
            format!(
                "journal {}: record {index} is not there ({count} records): was the journal replaced while running?",
                self.journal_path.display()
            )
        })
    }

    /// The image folder's name for record `index`, when its images are there.
    pub fn images_dir(&self, index: u64) -> Option<String> {
        let state = self.lock();
        let record = state.layers.get(index as usize)?;
        state.images[index as usize].then(|| dir_name(index, record.layer, record.verdict.as_str()))
    }

    /// The newest record whose images are kept (judged layers have a rectified bed).
    pub fn latest_with_images(&self) -> Option<u64> {
        let state = self.lock();
        state
            .layers
            .iter()
            .enumerate()
            .rev()
            .find(|(i, r)| state.images[*i] && r.verdict != Verdict::Fault)
            .map(|(i, _)| i as u64)
    }

    pub fn record_count(&self) -> usize {
        self.lock().layers.len()
    }

    /// Runs `view` on the build's compact entries under the lock (the chart, the map, the
    /// tracks): nothing is copied, and the loop waits only while the view is drawn.
    pub fn with_layers<T>(&self, view: impl FnOnce(&Layers) -> T) -> T {
        view(&self.lock().layers)
    }

    /// The status as the page shows it: the PLC is up while the outputs go through and, with
    /// Modbus, while a PLC is talking (`plc_link` says what was last heard).
    fn status_json(&self, status: &Status) -> Value {
        let mut value = json!(status);
        let link = self.metrics.plc_link();
        let outputs_ok = PLC.last_ok.load(std::sync::atomic::Ordering::Relaxed);
        value["plc_up"] = json!(outputs_ok && link.as_ref().is_none_or(|l| l.up));
        value["plc_link"] = json!(link.map(|l| l.detail));
        value
    }

    /// `None` when camera, model and PLC link are up; else what is down and why.
    pub fn down(&self) -> Option<Vec<String>> {
        let state = self.lock();
        let mut down = Vec::new();
        if !state.status.camera_up {
            down.push(format!(
                "camera: {}",
                state.status.camera_error.as_deref().unwrap_or("down")
            ));
        }
        if !state.status.model_up {
            down.push(format!(
                "model: {}",
                state.status.model_error.as_deref().unwrap_or("down")
            ));
        }
        if !PLC.last_ok.load(std::sync::atomic::Ordering::Relaxed) {
            down.push("plc: the last output to the PLC failed".into());
        }
        if let Some(link) = self.metrics.plc_link().filter(|link| !link.up) {
            down.push(format!("plc: {}", link.detail));
        }
        (!down.is_empty()).then_some(down)
    }
}

/// Why an annotation was refused.
#[derive(Debug)]
pub enum AnnotateError {
    NoSuchRecord(String),
    Conflict(String),
    Storage(String),
}

fn action_word(action: Action) -> &'static str {
    match action {
        Action::Acknowledge => "acknowledged",
        Action::FalseAlarm => "a false alarm",
    }
}

fn broadcast(state: &mut State, event: &str, data: &Value) {
    let message = format!("event: {event}\ndata: {data}\n\n");
    state
        .subscribers
        .retain(|subscriber| !matches!(subscriber.try_send(message.clone()), Err(TrySendError::Disconnected(_))));
}

fn summary_json(index: u64, layers: &Layers, record: &Layer, images: bool) -> Value {
    let areas: serde_json::Map<String, Value> = layers
        .class_areas(record)
        .into_iter()
        .map(|(class, area)| (class, json!(area)))
        .collect();
    json!({
        "index": index,
        "layer": record.layer,
        "time_ms": record.time_ms,
        "verdict": record.verdict.as_str(),
        "defects": record.defects.len(),
        "class_areas_mm2": areas,
        "uncertainty": record.uncertainty,
        "images": images,
    })
}

fn record_json(index: u64, record: &LayerRecord, annotations: &[Annotation]) -> Value {
    let layers = Layers::from_records(std::slice::from_ref(record));
    let mut value = summary_json(index, &layers, layers.get(0).expect("one"), false);
    value["record"] = json!(record);
    value["annotations"] = json!(annotations);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::journal::DefectRecord;

    fn record(layer: u32, verdict: &str) -> LayerRecord {
        LayerRecord {
            layer,
            time_ms: 0,
            trigger: "timer".into(),
            verdict: verdict.into(),
            defects: vec![DefectRecord {
                class: "hopping".into(),
                area_mm2: 2.5,
                bbox: [1, 1, 2, 2],
                centroid: [2.0, 2.0],
                mean_uncertainty: 0.0,
                ..Default::default()
            }],
            uncertainty_score: 0.1,
            model: "m".into(),
            model_version: "1".into(),
            backend: "tract".into(),
            total_ms: 1.0,
            infer_ms: 1.0,
            ..Default::default()
        }
    }

    fn status() -> Status {
        Status::new("m 1 on tract", "replay", "timer", "none")
    }

    #[test]
    fn annotations_are_checked_kept_and_read_back() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("annotations.jsonl");
        let board = Board::new(
            vec![record(1, "PASS"), record(2, "REVIEW")],
            folder.path().join("journal.bsj"),
            None,
            path.clone(),
            status(),
        )
        .unwrap();
        assert!(matches!(
            board.annotate(0, Action::Acknowledge, ""),
            Err(AnnotateError::Conflict(_))
        ));
        assert!(matches!(
            board.annotate(0, Action::FalseAlarm, ""),
            Err(AnnotateError::Conflict(_))
        ));
        assert!(matches!(
            board.annotate(7, Action::FalseAlarm, ""),
            Err(AnnotateError::NoSuchRecord(_))
        ));
        assert!(!path.exists(), "a refused annotation writes nothing");
        board.annotate(1, Action::Acknowledge, "looked fine").unwrap();
        board.annotate(1, Action::FalseAlarm, "").unwrap();
        assert!(matches!(
            board.annotate(1, Action::Acknowledge, ""),
            Err(AnnotateError::Conflict(_))
        ));
        let back = read_annotations(&path).unwrap();
        assert_eq!(
            back.iter().map(|a| (a.index, a.action)).collect::<Vec<_>>(),
            [(1, Action::Acknowledge), (1, Action::FalseAlarm)]
        );
        assert_eq!(back[0].note, "looked fine");
        // A torn last line is skipped; a bad line in the middle is an error naming it.
        std::fs::write(
            &path,
            format!("{}\n{{\"index\":", serde_json::to_string(&back[0]).unwrap()),
        )
        .unwrap();
        assert_eq!(read_annotations(&path).unwrap().len(), 1);
        std::fs::write(&path, "nonsense\n{}\n").unwrap();
        assert!(format!("{:#}", read_annotations(&path).unwrap_err()).contains("line 1"));
    }

    #[test]
    fn the_status_follows_the_model_of_the_latest_layer_and_the_camera() {
        let folder = tempfile::tempdir().unwrap();
        let board = Board::new(
            Vec::new(),
            folder.path().join("journal.bsj"),
            None,
            folder.path().join("a.jsonl"),
            status(),
        )
        .unwrap();
        let mut next = record(1, "PASS");
        next.model = "m2".into();
        next.model_version = "2.0".into();
        next.backend = "ort (CPU)".into();
        board.add_record(next, None, None);
        assert_eq!(
            (
                board.state_json()["status"]["model"].as_str(),
                board.state_json()["status"]["backend"].as_str()
            ),
            (Some("m2 2.0"), Some("ort (CPU)"))
        );
        assert_eq!(board.down(), None);
        board.add_record(record(2, "FAULT"), Some("no more frames".into()), None);
        assert_eq!(board.down(), Some(vec!["camera: no more frames".to_string()]));
    }

    #[test]
    fn an_old_record_is_read_back_from_the_journal_as_it_was() {
        let folder = tempfile::tempdir().unwrap();
        let journal_path = folder.path().join("journal.bsj");
        let (mut journal, _) = crate::record::journal::Journal::open(&journal_path).unwrap();
        let verdicts = ["PASS", "RECOAT", "REVIEW"];
        let records: Vec<LayerRecord> = (0..RECENT_RECORDS as u32 + 10)
            .map(|i| LayerRecord {
                reason: format!("reason of layer {i}"),
                ..record(i + 1, verdicts[i as usize % 3])
            })
            .collect();
        for r in &records {
            journal.append(r).unwrap();
        }
        // Restored with all but the last record; the last comes live from the loop.
        let board = Board::new(
            records[..records.len() - 1].to_vec(),
            journal_path,
            None,
            folder.path().join("a.jsonl"),
            status(),
        )
        .unwrap();
        board.add_record(records.last().unwrap().clone(), None, None);
        assert_eq!(
            board.lock().recent.len(),
            RECENT_RECORDS,
            "only the newest records are kept in full"
        );
        board.annotate(1, Action::FalseAlarm, "dust").unwrap();
        for index in [0, 1, 9, 10, records.len() - 1] {
            let value = board.record_json(index as u64).unwrap().unwrap();
            let back: LayerRecord = serde_json::from_value(value["record"].clone()).unwrap();
            assert_eq!(back, records[index], "record {index}");
            assert_eq!(value["index"], json!(index));
            assert_eq!(value["verdict"], json!(records[index].verdict));
            assert_eq!(value["class_areas_mm2"], json!({ "hopping": 2.5 }));
        }
        assert_eq!(
            board.record_json(1).unwrap().unwrap()["annotations"][0]["note"],
            json!("dust")
        );
        assert_eq!(board.record_json(records.len() as u64).unwrap(), None);
        // The state's summaries come from the compact entries and match the records.
        let state = board.state_json();
        assert_eq!(state["records"].as_array().unwrap().len(), records.len());
        assert_eq!(state["records"][0], summary_of(0, &records[0]));
    }

    fn summary_of(index: u64, record: &LayerRecord) -> Value {
        json!({ "index": index, "layer": record.layer, "time_ms": record.time_ms, "verdict": record.verdict, "defects": 1,
                "class_areas_mm2": { "hopping": 2.5 }, "uncertainty": record.uncertainty_score, "images": false })
    }

    #[test]
    fn class_areas_sum_per_class() {
        let mut r = record(1, "RECOAT");
        r.defects.push(DefectRecord {
            class: "hopping".into(),
            area_mm2: 1.0,
            bbox: [0; 4],
            centroid: [0.0; 2],
            mean_uncertainty: 0.0,
            ..Default::default()
        });
        r.defects.push(DefectRecord {
            class: "streaking".into(),
            area_mm2: 4.0,
            bbox: [0; 4],
            centroid: [0.0; 2],
            mean_uncertainty: 0.0,
            ..Default::default()
        });
        let layers = Layers::from_records(&[r]);
        assert_eq!(
            layers.class_areas(layers.get(0).unwrap()),
            vec![("hopping".to_string(), 3.5), ("streaking".to_string(), 4.0)]
        );
    }
}
