//! The per-layer images of `bedsight run`: raw frame, rectified bed, overlay, class mask and
//! uncertainty, one folder per journal record, written by a recorder thread after the PLC has
//! its verdict, with a size limit that deletes the oldest PASS layers first and never a layer
//! that was not PASS.
//!
//! Hand-off: the analysis thread copies the pipeline's buffers into a pooled `LayerSnapshot`
//! after it has reported the layer (so the copy never delays the verdict) and the control thread
//! sends the final verdict and the record's index; the recorder pairs the two by the layer's
//! sequence number. No snapshot free (the recorder is behind): the layer's images are dropped
//! and counted, the loop never waits.
//!
//! On disk: `<folder>/<index:06>-L<layer:05>-<VERDICT>/{raw,rectified,overlay,mask,uncertainty}.png`
//! plus `uncertainty.tiff` (the real values) and `<folder>/bed.json` (the bed's size in
//! pixels and the class colours, for the dashboard and `bedsight report`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{Context, Result};
use image::{DynamicImage, GrayImage};
use models::{ClassInfo, Defect, Fused};
use serde::{Deserialize, Serialize};

use crate::record::layer_files::{heatmap, tinted_bed, write_float_tiff};

/// The images of one layer, as served under `/images/<index>/<kind>.png`.
pub const KINDS: [&str; 5] = ["raw", "rectified", "overlay", "mask", "uncertainty"];

/// Snapshots in circulation: one being written, one waiting. More would only hide a recorder
/// that cannot keep up.
const POOL: usize = 2;

/// The folder of record `index` (layer `layer`, verdict word `verdict`).
pub fn dir_name(index: u64, layer: u32, verdict: &str) -> String {
    format!("{index:06}-L{layer:05}-{verdict}")
}

/// `(index, layer, verdict)` of a folder name written by `dir_name`.
fn parse_dir_name(name: &str) -> Option<(u64, u32, String)> {
    let mut parts = name.splitn(3, '-');
    let index = parts.next()?.parse().ok()?;
    let layer = parts.next()?.strip_prefix('L')?.parse().ok()?;
    let verdict = parts.next()?;
    (!verdict.is_empty() && verdict.chars().all(|c| c.is_ascii_uppercase()))
        .then(|| (index, layer, verdict.to_string()))
}

/// `<folder>/bed.json`: what a reader needs to draw on the layer images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BedInfo {
    pub width: u32,
    pub height: u32,
    pub mm_per_px: f64,
    /// Class names and colours, in class-index order (0 is background).
    pub classes: Vec<ClassInfo>,
}

impl BedInfo {
    pub fn read(folder: &Path) -> Option<BedInfo> {
        serde_json::from_slice(&std::fs::read(folder.join("bed.json")).ok()?).ok()
    }
}

/// Where a judged layer's pixels are, right after the pipeline ran it.
pub struct JudgedLayer<'a> {
    pub bed: &'a GrayImage,
    pub fused: &'a Fused,
    pub defects: &'a [Defect],
    pub classes: &'a [ClassInfo],
    pub mm_per_px: f64,
}

/// One layer's pixels, copied out of the pipeline; reused from layer to layer.
pub struct LayerSnapshot {
    /// Which layer of this run (the analysis thread's count), to pair it with its verdict.
    pub seq: u64,
    /// The camera frame in grey.
    pub raw: GrayImage,
    /// false: a FAULT frame the model never saw (only `raw` holds anything).
    pub judged: bool,
    pub bed: GrayImage,
    pub mask: Vec<u8>,
    pub uncertainty: Vec<f32>,
    pub defects: Vec<Defect>,
    pub info: BedInfo,
}

impl LayerSnapshot {
    /// A snapshot with no buffers yet; `fill` grows them once and reuses them after.
    pub fn empty() -> LayerSnapshot {
        LayerSnapshot {
            seq: 0,
            raw: GrayImage::new(0, 0),
            judged: false,
            bed: GrayImage::new(0, 0),
            mask: Vec::new(),
            uncertainty: Vec::new(),
            defects: Vec::new(),
            info: BedInfo {
                width: 0,
                height: 0,
                mm_per_px: 0.0,
                classes: Vec::new(),
            },
        }
    }

    /// Copies a judged layer's buffers in (the vectors keep their capacity across layers).
    pub fn fill(&mut self, seq: u64, frame: &DynamicImage, layer: &JudgedLayer) {
        self.seq = seq;
        copy_grey(frame, &mut self.raw);
        self.judged = true;
        self.bed.clone_from(layer.bed);
        self.mask.clone_from(&layer.fused.mask);
        self.uncertainty.clone_from(&layer.fused.uncertainty);
        self.defects.clear();
        self.defects.extend_from_slice(layer.defects);
        let bed = layer.bed;
        if self.info.classes != layer.classes || self.info.width != bed.width() || self.info.height != bed.height() {
            self.info = BedInfo {
                width: bed.width(),
                height: bed.height(),
                mm_per_px: layer.mm_per_px,
                classes: layer.classes.to_vec(),
            };
        }
    }

    /// A frame the model did not judge: only the raw frame is kept.
    pub fn fill_unjudged(&mut self, seq: u64, frame: &DynamicImage) {
        self.seq = seq;
        copy_grey(frame, &mut self.raw);
        self.judged = false;
        self.defects.clear();
    }
}

fn copy_grey(frame: &DynamicImage, into: &mut GrayImage) {
    match frame {
        DynamicImage::ImageLuma8(grey) => into.clone_from(grey),
        other => *into = other.to_luma8(),
    }
}

/// The final word on a layer, from the control thread.
#[derive(Debug, Clone)]
pub struct LayerVerdict {
    pub seq: u64,
    /// The layer's position in the journal.
    pub index: u64,
    pub layer: u32,
    pub verdict: String,
}

enum Message {
    Pixels(Box<LayerSnapshot>),
    Verdict(LayerVerdict),
}

/// Counters of the recorder, shared with `/metrics`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub written: AtomicU64,
    /// Layers whose images were not written because the recorder was behind.
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    /// Layers deleted by the size limit.
    pub deleted: AtomicU64,
    pub bytes: AtomicU64,
}

/// The analysis thread's end: takes a free snapshot, or counts a drop.
pub struct SnapshotSender {
    free: Receiver<Box<LayerSnapshot>>,
    to_recorder: SyncSender<Message>,
    stats: Arc<RecorderStats>,
}

impl SnapshotSender {
    /// Fills a free snapshot with `fill` and hands it to the recorder; without a free one the
    /// layer's images are dropped and counted.
    pub fn offer(&self, fill: impl FnOnce(&mut LayerSnapshot)) {
        match self.free.try_recv() {
            Ok(mut snapshot) => {
                fill(&mut snapshot);
                if self.to_recorder.try_send(Message::Pixels(snapshot)).is_err() {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The control thread's end: the verdict and index of each layer.
#[derive(Clone)]
pub struct VerdictSender {
    to_recorder: SyncSender<Message>,
}

impl VerdictSender {
    pub fn send(&self, verdict: LayerVerdict) {
        // A full queue means the recorder is far behind; the pixels of that layer wait for
        // nothing and are dropped when the next layer's arrive.
        if let Err(TrySendError::Full(_)) = self.to_recorder.try_send(Message::Verdict(verdict)) {
            tracing::warn!("record: the image recorder is behind; a layer's images are dropped");
        }
    }
}

/// The image folder with its size limit.
pub struct ImageStore {
    pub folder: PathBuf,
    max_bytes: u64,
    /// Every layer folder on disk: index -> (folder name, bytes, verdict was PASS).
    layers: BTreeMap<u64, (String, u64, bool)>,
}

impl ImageStore {
    /// Opens (creates) the folder and takes stock of the layers already in it; half-written
    /// folders from a crash (`.tmp-*`) are removed.
    pub fn open(folder: &Path, max_bytes: u64) -> Result<ImageStore> {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("record.folder {}: cannot create it", folder.display()))?;
        let mut layers = BTreeMap::new();
        for entry in
            std::fs::read_dir(folder).with_context(|| format!("record.folder {}: cannot list it", folder.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                std::fs::remove_dir_all(entry.path()).ok();
            } else if let Some((index, _, verdict)) = parse_dir_name(&name) {
                layers.insert(index, (name, folder_bytes(&entry.path()), verdict == "PASS"));
            }
        }
        Ok(ImageStore {
            folder: folder.to_path_buf(),
            max_bytes,
            layers,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.layers.values().map(|(_, bytes, _)| bytes).sum()
    }

    /// Writes one layer's images (into a temporary folder renamed into place, so a reader never
    /// sees half a layer), then applies the size limit. Returns the folder's name.
    pub fn write(&mut self, snapshot: &LayerSnapshot, verdict: &LayerVerdict) -> Result<String> {
        let name = dir_name(verdict.index, verdict.layer, &verdict.verdict);
        let temp = self.folder.join(format!(".tmp-{name}"));
        std::fs::create_dir_all(&temp).with_context(|| format!("record: cannot create {}", temp.display()))?;
        let save = |image_name: &str, result: image::ImageResult<()>| {
            result.with_context(|| format!("record: cannot write {}", temp.join(image_name).display()))
        };
        save("raw.png", snapshot.raw.save(temp.join("raw.png")))?;
        if snapshot.judged {
            let info = &snapshot.info;
            save("rectified.png", snapshot.bed.save(temp.join("rectified.png")))?;
            let overlay = tinted_bed(&snapshot.bed, &snapshot.mask, None, &info.classes, &snapshot.defects);
            save("overlay.png", overlay.save(temp.join("overlay.png")))?;
            let mask =
                GrayImage::from_raw(info.width, info.height, snapshot.mask.clone()).context("record: mask size")?;
            save("mask.png", mask.save(temp.join("mask.png")))?;
            save(
                "uncertainty.png",
                heatmap(info.width, info.height, &snapshot.uncertainty).save(temp.join("uncertainty.png")),
            )?;
            write_float_tiff(
                &temp.join("uncertainty.tiff"),
                info.width,
                info.height,
                &snapshot.uncertainty,
            )?;
            if BedInfo::read(&self.folder).as_ref() != Some(info) {
                std::fs::write(self.folder.join("bed.json"), serde_json::to_vec_pretty(info)?)
                    .context("record: cannot write bed.json")?;
            }
        }
        // A record index written again (a journal that could not be appended) replaces the old one.
        if let Some((old, _, _)) = self.layers.remove(&verdict.index) {
            std::fs::remove_dir_all(self.folder.join(old)).ok();
        }
        let target = self.folder.join(&name);
        std::fs::rename(&temp, &target)
            .with_context(|| format!("record: cannot move {} into place", target.display()))?;
        self.layers.insert(
            verdict.index,
            (name.clone(), folder_bytes(&target), verdict.verdict == "PASS"),
        );
        Ok(name)
    }

    /// Deletes the oldest PASS layers until the folder is within its limit; layers that were
    /// not PASS are kept even past it. Returns the indices of the records deleted.
    pub fn enforce_limit(&mut self) -> Vec<u64> {
        let mut total = self.bytes();
        let mut deleted = Vec::new();
        while total > self.max_bytes {
            let Some((&index, _)) = self.layers.iter().find(|(_, (_, _, pass))| *pass) else {
                break;
            };
            let (name, bytes, _) = self.layers.remove(&index).expect("found");
            if let Err(error) = std::fs::remove_dir_all(self.folder.join(&name)) {
                tracing::error!("record: cannot delete {}: {error}", self.folder.join(&name).display());
            }
            total -= bytes;
            deleted.push(index);
        }
        deleted
    }
}

fn folder_bytes(folder: &Path) -> u64 {
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Starts the recorder thread. `on_written(index, deleted)` runs after each layer's images are
/// in place, with the records whose images the size limit deleted to make room.
pub fn spawn_recorder(
    mut store: ImageStore,
    on_written: impl Fn(u64, &[u64]) + Send + 'static,
) -> Result<(
    SnapshotSender,
    VerdictSender,
    Arc<RecorderStats>,
    std::thread::JoinHandle<()>,
)> {
    let (to_recorder, messages) = sync_channel::<Message>(POOL + 4);
    let (free_sender, free) = sync_channel::<Box<LayerSnapshot>>(POOL);
    for _ in 0..POOL {
        free_sender
            .send(Box::new(LayerSnapshot::empty()))
            .expect("room for the pool");
    }
    let stats = Arc::new(RecorderStats::default());
    stats.bytes.store(store.bytes(), Ordering::Relaxed);
    let thread_stats = stats.clone();
    let handle = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            lower_priority();
            let mut pixels: VecDeque<Box<LayerSnapshot>> = VecDeque::new();
            let mut verdicts: VecDeque<LayerVerdict> = VecDeque::new();
            for message in messages {
                match message {
                    Message::Pixels(snapshot) => pixels.push_back(snapshot),
                    Message::Verdict(verdict) => verdicts.push_back(verdict),
                }
                while let Some((snapshot, verdict)) = next_pair(&mut pixels, &mut verdicts, &free_sender) {
                    match store.write(&snapshot, &verdict) {
                        Ok(_) => {
                            let deleted = store.enforce_limit();
                            // News first, counters after: whoever sees the count sees the news.
                            on_written(verdict.index, &deleted);
                            thread_stats.deleted.fetch_add(deleted.len() as u64, Ordering::Relaxed);
                            thread_stats.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            thread_stats.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("{error:#}");
                        }
                    }
                    thread_stats.bytes.store(store.bytes(), Ordering::Relaxed);
                    free_sender.try_send(snapshot).ok();
                }
            }
        })
        .context("cannot start the image recorder thread")?;
    Ok((
        SnapshotSender {
            free,
            to_recorder: to_recorder.clone(),
            stats: stats.clone(),
        },
        VerdictSender { to_recorder },
        stats,
        handle,
    ))
}

/// PNG encoding is CPU work that must not slow the next layer's analysis on a box with few
/// cores: the recorder runs at nice 10. On Linux `setpriority(PRIO_PROCESS, 0, ...)` applies
/// to the calling thread only. A refusal changes nothing but the priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// The oldest snapshot and verdict of the same layer, once both are in. Older halves without
/// a partner (a camera that gave no frame, a dropped snapshot) are let go.
fn next_pair(
    pixels: &mut VecDeque<Box<LayerSnapshot>>,
    verdicts: &mut VecDeque<LayerVerdict>,
    free: &SyncSender<Box<LayerSnapshot>>,
) -> Option<(Box<LayerSnapshot>, LayerVerdict)> {
    loop {
        let (snapshot, verdict) = (pixels.front()?, verdicts.front()?);
        if snapshot.seq < verdict.seq {
            free.try_send(pixels.pop_front().expect("front")).ok();
        } else if verdict.seq < snapshot.seq {
            verdicts.pop_front();
        } else {
            return Some((pixels.pop_front().expect("front"), verdicts.pop_front().expect("front")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(seq: u64) -> LayerSnapshot {
        let mut snapshot = LayerSnapshot::empty();
        let frame = DynamicImage::ImageLuma8(GrayImage::from_pixel(8, 8, image::Luma([90])));
        let mut fused = Fused::new(8, 8, 2);
        fused.mask[9] = 1;
        fused.uncertainty[9] = 0.25;
        let classes = vec![
            ClassInfo {
                name: "powder".into(),
                colour: [0, 0, 0],
                defect: false,
            },
            ClassInfo {
                name: "streaking".into(),
                colour: [255, 0, 0],
                defect: true,
            },
        ];
        let bed = GrayImage::from_pixel(8, 8, image::Luma([100]));
        snapshot.fill(
            seq,
            &frame,
            &JudgedLayer {
                bed: &bed,
                fused: &fused,
                defects: &[],
                classes: &classes,
                mm_per_px: 1.0,
            },
        );
        snapshot
    }

    fn verdict(seq: u64, index: u64, verdict: &str) -> LayerVerdict {
        LayerVerdict {
            seq,
            index,
            layer: index as u32 + 1,
            verdict: verdict.into(),
        }
    }

    #[test]
    fn folder_names_round_trip() {
        assert_eq!(dir_name(7, 12, "RECOAT"), "000007-L00012-RECOAT");
        assert_eq!(parse_dir_name("000007-L00012-RECOAT"), Some((7, 12, "RECOAT".into())));
        assert_eq!(parse_dir_name(".tmp-000007-L00012-RECOAT"), None);
        assert_eq!(parse_dir_name("bed.json"), None);
    }

    #[test]
    fn a_layer_has_every_image_and_the_heat_layer_is_as_opaque_as_the_pixel_is_unsure() {
        let folder = tempfile::tempdir().unwrap();
        let mut store = ImageStore::open(folder.path(), u64::MAX).unwrap();
        let name = store.write(&snapshot(1), &verdict(1, 0, "PASS")).unwrap();
        for kind in KINDS {
            assert!(
                folder.path().join(&name).join(format!("{kind}.png")).is_file(),
                "{kind}"
            );
        }
        let heat = image::open(folder.path().join(&name).join("uncertainty.png"))
            .unwrap()
            .into_rgba8();
        // 0.25 is the full scale: alpha 0.7 of 255.
        assert_eq!(heat.get_pixel(1, 1).0[3], 179);
        assert_eq!(heat.get_pixel(0, 0).0[3], 0);
        let mask = image::open(folder.path().join(&name).join("mask.png"))
            .unwrap()
            .into_luma8();
        assert_eq!((mask.get_pixel(1, 1).0[0], mask.get_pixel(0, 0).0[0]), (1, 0));
        assert_eq!(BedInfo::read(folder.path()).unwrap().width, 8);
    }

    #[test]
    fn the_limit_deletes_the_oldest_pass_layers_and_keeps_the_others() {
        let folder = tempfile::tempdir().unwrap();
        let mut store = ImageStore::open(folder.path(), u64::MAX).unwrap();
        let verdicts = ["PASS", "RECOAT", "PASS", "PASS", "REVIEW", "PASS"];
        for (index, word) in verdicts.iter().enumerate() {
            store
                .write(&snapshot(index as u64), &verdict(index as u64, index as u64, word))
                .unwrap();
        }
        let one_layer = store.bytes() / verdicts.len() as u64;
        // Room for about three layers: the two oldest PASS layers (0 and 2) and then 3 must go.
        let mut store = ImageStore::open(folder.path(), one_layer * 3 + one_layer / 2).unwrap();
        assert_eq!(store.enforce_limit(), [0, 2, 3]);
        let mut left: Vec<String> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "000001-L00002-RECOAT",
                "000004-L00005-REVIEW",
                "000005-L00006-PASS",
                "bed.json"
            ]
        );
        // Past the limit with only non-PASS layers left: they stay.
        let mut tight = ImageStore::open(folder.path(), 1).unwrap();
        assert_eq!(tight.enforce_limit(), [5]);
        assert!(
            folder.path().join("000001-L00002-RECOAT").is_dir() && folder.path().join("000004-L00005-REVIEW").is_dir()
        );
    }

    #[test]
    fn the_recorder_pairs_pixels_with_their_verdict_and_skips_halves_without_a_partner() {
        let folder = tempfile::tempdir().unwrap();
        let store = ImageStore::open(folder.path(), u64::MAX).unwrap();
        let (written_sender, written) = std::sync::mpsc::channel();
        let (pixels, verdicts, stats, handle) =
            spawn_recorder(store, move |index, _| written_sender.send(index).unwrap()).unwrap();
        // Layer seq 1: the camera gave no frame, only a verdict comes. Seq 2: both.
        verdicts.send(verdict(1, 0, "FAULT"));
        pixels.offer(|s| *s = snapshot(2));
        verdicts.send(verdict(2, 1, "PASS"));
        assert_eq!(written.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), 1);
        drop((pixels, verdicts));
        handle.join().unwrap();
        assert_eq!(stats.written.load(Ordering::Relaxed), 1);
        assert!(folder.path().join("000001-L00002-PASS/overlay.png").is_file());
        assert!(!folder.path().join("000000-L00001-FAULT").exists());
    }
}
