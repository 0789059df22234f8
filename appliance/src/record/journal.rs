//! The per-layer journal: an append-only file with one record per finished layer, fsynced
//! before the next layer starts, so a power cut loses at most the layer being written.
//!
//! On disk: the 8-byte magic (`BSJRNL03`: [`MAGIC`]), then frames of `u32 LE payload length`, the payload
//! (`postcard`), `u32 LE crc32 of the payload`. A torn or corrupt record is cut at open, with
//! everything before it kept; `read` finds the same thing without touching the file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The first 8 bytes of every journal file: the record format's version is in the last two.
/// Version 2 added the defects' footprints in millimetres, the rule that decided and the
/// recoat outcome (docs/tracks.md); version 3 the layer-level head's call and the domain check.
pub const MAGIC: &[u8; 8] = b"BSJRNL03";
/// The header of a version 2 journal, which is read and, on open for writing, converted.
const MAGIC_V2: &[u8; 8] = b"BSJRNL02";

/// A record larger than this is taken for a corrupt length field (64 defects take ~3 KiB).
const MAX_PAYLOAD_BYTES: u32 = 1 << 20;

/// One measured defect of a layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DefectRecord {
    pub class: String,
    pub area_mm2: f64,
    /// `[x, y, width, height]`, pixels of the rectified bed.
    pub bbox: [u32; 4],
    /// `[x, y, width, height]`, millimetres on the bed from its top-left corner (the footprint
    /// the defect map and the tracks use).
    pub bbox_mm: [f64; 4],
    /// `[x, y]`, pixels of the rectified bed.
    pub centroid: [f64; 2],
    pub mean_uncertainty: f32,
}

/// One finished layer, as the PLC was told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub layer: u32,
    /// When the verdict was sent, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who triggered the layer (`serial`, `modbus`, `timer`, ...).
    pub trigger: String,
    /// The verdict word sent to the PLC (`PASS`, `RECOAT`, ...).
    pub verdict: String,
    pub defects: Vec<DefectRecord>,
    pub uncertainty_score: f64,
    pub model: String,
    pub model_version: String,
    pub backend: String,
    pub total_ms: f64,
    pub infer_ms: f64,
    /// The rule that decided the verdict (`rules.streaking.track.max_layers`, ...; empty: none).
    pub rule: String,
    /// Its code as the PLC read it (Modbus register 17; 0: none).
    pub reason_code: u16,
    /// What the rule saw, e.g. `streaking track #2 over layers 3-9: 7 layers > 5 → REVIEW: recoater blade damage suspected`.
    pub reason: String,
    /// On the re-spread of a layer that got RECOAT: `fixed` or `not fixed`; else empty.
    pub recoat_outcome: String,
    /// On a RECOAT: the classes it was sent for.
    pub recoat_classes: Vec<String>,
    /// The layer-level head's call: `clean` or its most probable class; empty for a model
    /// without a head, a layer it did not judge, or a record of format 2.
    pub layer_class: String,
    /// The call's confidence, 0..1 (0 with no call).
    pub layer_class_confidence: f32,
    /// The domain check's finding; none for a model without one, a layer it did not judge, or a
    /// record of format 2.
    pub domain: Option<DomainRecord>,
}

/// The domain check of one layer (appliance `judge::domain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub score: f64,
    pub threshold: f64,
    pub familiar: bool,
}

/// A record of format 2, as it was written; read and converted to [`LayerRecord`].
#[derive(Serialize, Deserialize)]
struct LayerRecordV2 {
    layer: u32,
    time_ms: u64,
    trigger: String,
    verdict: String,
    defects: Vec<DefectRecord>,
    uncertainty_score: f64,
    model: String,
    model_version: String,
    backend: String,
    total_ms: f64,
    infer_ms: f64,
    rule: String,
    reason_code: u16,
    reason: String,
    recoat_outcome: String,
    recoat_classes: Vec<String>,
}

impl From<LayerRecordV2> for LayerRecord {
    fn from(old: LayerRecordV2) -> LayerRecord {
        LayerRecord {
            layer: old.layer,
            time_ms: old.time_ms,
            trigger: old.trigger,
            verdict: old.verdict,
            defects: old.defects,
            uncertainty_score: old.uncertainty_score,
            model: old.model,
            model_version: old.model_version,
            backend: old.backend,
            total_ms: old.total_ms,
            infer_ms: old.infer_ms,
            rule: old.rule,
            reason_code: old.reason_code,
            reason: old.reason,
            recoat_outcome: old.recoat_outcome,
            recoat_classes: old.recoat_classes,
            ..LayerRecord::default()
        }
    }
}

/// What opening a journal found.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenReport {
    /// Good records kept.
    pub records: usize,
    /// Bytes cut from the end of the file (a torn or corrupt record and whatever followed it).
    pub cut_bytes: u64,
    /// Why bytes were cut, when they were.
    pub reason: Option<String>,
    /// A journal of an older format converted on open: what was done and where the old file is.
    pub converted: Option<String>,
}

impl std::fmt::Display for OpenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records", self.records)?;
        if let Some(reason) = &self.reason {
            write!(f, ", cut {} bytes: {reason}", self.cut_bytes)?;
        }
        if let Some(converted) = &self.converted {
            write!(f, "; {converted}")?;
        }
        Ok(())
    }
}

/// A journal read without changing it.
#[derive(Debug, Clone)]
pub struct Contents {
    pub records: Vec<LayerRecord>,
    /// End of the last good record: where an open would cut the file.
    pub good_end: u64,
    pub file_len: u64,
    /// Why the bytes past `good_end` are not records, when there are any.
    pub reason: Option<String>,
}

/// The journal open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    records: usize,
}

impl Journal {
    /// Opens the journal at `path`, creating it (and its folder) when missing. A torn or corrupt
    /// record is cut off, with everything after it; the records before it are kept. Every
    /// append goes to the end of the file (O_APPEND).
    pub fn open(path: &Path) -> Result<(Journal, OpenReport)> {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("journal {}: cannot create its folder", path.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("journal {}: cannot open it for writing", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("journal {}: cannot read it", path.display()))?;
        if bytes.is_empty() {
            file.write_all(MAGIC)
                .and_then(|_| file.sync_all())
                .with_context(|| format!("journal {}: cannot write its header", path.display()))?;
            return Ok((
                Journal {
                    path: path.to_path_buf(),
                    file,
                    records: 0,
                },
                OpenReport {
                    records: 0,
                    cut_bytes: 0,
                    reason: None,
                    converted: None,
                },
            ));
        }
        if torn_header(&bytes) {
            // Nothing in it to keep; set aside rather than replaced, so nothing is lost unseen.
            drop(file);
            let aside = set_aside_name(path);
            std::fs::rename(path, &aside).with_context(|| {
                format!(
                    "journal {}: cannot set aside as {} its cut header",
                    path.display(),
                    aside.display()
                )
            })?;
            let (journal, _) = Journal::open(path)?;
            let report = OpenReport {
                records: 0,
                cut_bytes: bytes.len() as u64,
                reason: Some(format!(
                    "its header was cut after {} of {} bytes (a power cut while it was created); set aside as {}",
                    bytes.len(),
                    MAGIC.len(),
                    aside.display()
                )),
                converted: None,
            };
            return Ok((journal, report));
        }
        if bytes.starts_with(MAGIC_V2) {
            drop(file);
            return convert_v2(path, &bytes);
        }
        // `bedsight run` writes here: it says what to do; a reading command only what is wrong.
        let contents =
            scan(path, &bytes).map_err(|e| anyhow::anyhow!("{e:#}; move it away and a new one is started"))?;
        if contents.good_end < contents.file_len {
            file.set_len(contents.good_end)
                .and_then(|_| file.sync_all())
                .with_context(|| {
                    format!(
                        "journal {}: cannot cut the bad tail at byte {}",
                        path.display(),
                        contents.good_end
                    )
                })?;
        }
        file.seek(SeekFrom::Start(contents.good_end))
            .with_context(|| format!("journal {}", path.display()))?;
        let report = OpenReport {
            records: contents.records.len(),
            cut_bytes: contents.file_len - contents.good_end,
            reason: contents.reason,
            converted: None,
        };
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                records: report.records,
            },
            report,
        ))
    }

    /// Appends one record and waits until it is on the disk.
    pub fn append(&mut self, record: &LayerRecord) -> Result<()> {
        let payload = postcard::to_allocvec(record)
            .with_context(|| format!("journal {}: cannot encode layer {}", self.path.display(), record.layer))?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.file
            .write_all(&frame)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("journal {}: cannot append layer {}", self.path.display(), record.layer))?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> usize {
        self.records
    }
}

/// A journal of format 2, opened for writing: its good records are written again in format 3 to a
/// new file beside it, which replaces it once on the disk; the old file is kept beside it
/// (`<path>.format-2`), so a box's history is never lost to an upgrade. A bad tail is left in the
/// old file and said.
fn convert_v2(path: &Path, bytes: &[u8]) -> Result<(Journal, OpenReport)> {
    let contents = scan(path, bytes)?;
    let staging = PathBuf::from(format!("{}.format-3", path.display()));
    let kept = PathBuf::from(format!("{}.format-2", path.display()));
    if kept.exists() {
        bail!(
            "journal {} is of format 2 and {} exists already: move one of them away",
            path.display(),
            kept.display()
        );
    }
    let _ = std::fs::remove_file(&staging);
    {
        let (mut converted, _) = Journal::open(&staging)?;
        for record in &contents.records {
            converted.append(record)?;
        }
    }
    std::fs::rename(path, &kept)
        .and_then(|_| std::fs::rename(&staging, path))
        .with_context(|| format!("journal {}: cannot put its format 3 copy in place", path.display()))?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(folder).and_then(|dir| dir.sync_all()).ok();
    }
    let (journal, mut report) = Journal::open(path)?;
    report.converted = Some(format!(
        "converted {} records from format 2 (the old file is kept as {}{})",
        contents.records.len(),
        kept.display(),
        contents
            .reason
            .map(|why| format!("; not converted: {why}"))
            .unwrap_or_default()
    ));
    Ok((journal, report))
}

/// Reads every good record of the journal at `path`; changes nothing.
pub fn read(path: &Path) -> Result<Contents> {
    let bytes = std::fs::read(path).with_context(|| format!("journal {}: cannot read it", path.display()))?;
    scan(path, &bytes)
}

/// Walks the frames of a journal file's bytes up to the first one that is not a good record;
/// `path` only names the file in messages. What `read` and the open-time repair use (and the
/// journal fuzz target).
/// Whether `bytes` are the start of a journal's header and no more (a creation cut short).
fn torn_header(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes)
}

/// `<path>.torn-header`, or `.torn-header.N` for the first N not taken.
fn set_aside_name(path: &Path) -> PathBuf {
    let base = format!("{}.torn-header", path.display());
    (1..)
        .map(|n| {
            if n == 1 {
                PathBuf::from(&base)
            } else {
                PathBuf::from(format!("{base}.{n}"))
            }
        })
        .find(|candidate| !candidate.exists())
        .expect("a free name")
}

pub fn scan(path: &Path, bytes: &[u8]) -> Result<Contents> {
    let v2 = bytes.starts_with(MAGIC_V2);
    if !v2 && bytes.len() >= MAGIC.len() && bytes[..6] == MAGIC[..6] && bytes[..MAGIC.len()] != MAGIC[..] {
        bail!(
            "journal {}: written in format {} by another bedsight version, this one writes {}",
            path.display(),
            String::from_utf8_lossy(&bytes[6..8]),
            String::from_utf8_lossy(&MAGIC[6..])
        );
    }
    if torn_header(bytes) {
        bail!(
            "journal {}: its header is cut after {} of {} bytes (a power cut while it was created): it holds no record",
            path.display(),
            bytes.len(),
            MAGIC.len()
        );
    }
    if !v2 && (bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC) {
        bail!(
            "journal {}: not a bedsight journal (it does not start with {:?})",
            path.display(),
            std::str::from_utf8(MAGIC).unwrap_or_default()
        );
    }
    let file_len = bytes.len() as u64;
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    let mut reason = None;
    while pos < bytes.len() {
        let rest = bytes.len() - pos;
        let frame_end = |payload_len: usize| pos + 4 + payload_len + 4;
        let problem = if rest < 4 {
            Err(format!("torn record at byte {pos}: {rest} bytes of its 4-byte length"))
        } else {
            let payload_len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
            if payload_len > MAX_PAYLOAD_BYTES {
                Err(format!(
                    "corrupt record at byte {pos}: length {payload_len} is implausible"
                ))
            } else if frame_end(payload_len as usize) > bytes.len() {
                Err(format!(
                    "torn record at byte {pos}: it needs {} bytes, {rest} are there",
                    payload_len as usize + 8
                ))
            } else {
                let payload = &bytes[pos + 4..pos + 4 + payload_len as usize];
                let end = frame_end(payload_len as usize);
                let stored_crc = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
                if crc32fast::hash(payload) != stored_crc {
                    Err(format!("corrupt record at byte {pos}: bad CRC"))
                } else {
                    let decoded = if v2 {
                        postcard::from_bytes::<LayerRecordV2>(payload).map(LayerRecord::from)
                    } else {
                        postcard::from_bytes::<LayerRecord>(payload)
                    };
                    match decoded {
                        Ok(record) => Ok((record, end)),
                        Err(error) => Err(format!("corrupt record at byte {pos}: cannot decode it ({error})")),
                    }
                }
            }
        };
        match problem {
            Ok((record, end)) => {
                records.push(record);
                pos = end;
            }
            Err(mut why) => {
                // A bad frame whose declared end is short of the file's end is not a torn
                // append: say that good-looking data after it goes too.
                let declared_end = if rest >= 4 {
                    frame_end(u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize)
                } else {
                    bytes.len()
                };
                if declared_end < bytes.len() {
                    why.push_str(&format!(
                        " in the middle of the file, {} more bytes after it are cut with it",
                        bytes.len() - declared_end
                    ));
                } else if records.is_empty() {
                    why.push_str(" (the first record)");
                } else {
                    why.push_str(" (the last record)");
                }
                reason = Some(why);
                break;
            }
        }
    }
    Ok(Contents {
        records,
        good_end: pos as u64,
        file_len,
        reason,
    })
}

/// `bedsight journal check FILE`: count, layers, and whether an open would cut a bad tail.
pub fn check(path: &Path) -> Result<()> {
    let contents = read(path)?;
    let layers = match (contents.records.first(), contents.records.last()) {
        (Some(first), Some(last)) => format!(", layers {} to {}", first.layer, last.layer),
        _ => String::new(),
    };
    println!("journal {}: {} records{layers}", path.display(), contents.records.len());
    match &contents.reason {
        Some(reason) => println!(
            "bad tail: {} bytes would be cut on the next open: {reason}",
            contents.file_len - contents.good_end
        ),
        None => println!("no bad tail"),
    }
    Ok(())
}

/// A time of the journal (milliseconds since 1970, UTC) as a calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub millis: u64,
}

impl UtcTime {
    /// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    pub fn from_ms(time_ms: u64) -> UtcTime {
        let seconds = time_ms / 1000;
        let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcTime {
            year: yoe + era * 400 + (month <= 2) as i64,
            month,
            day,
            hour: rest / 3600,
            minute: rest % 3600 / 60,
            second: rest % 60,
            millis: time_ms % 1000,
        }
    }
}

impl std::fmt::Display for UtcTime {
    /// ISO 8601, e.g. `2024-02-29T12:34:56.000Z`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// `bedsight journal export FILE --format csv|jsonl`, to stdout. The CSV has a row per record:
/// its index (the image folder's number), the time in ISO 8601 and in milliseconds, the area of
/// each class found anywhere in the journal, the rule and reason, and the folder its images
/// are kept under (inside the image folder, while `record.max_gb` keeps them).
pub fn export(path: &Path, format: &str) -> Result<()> {
    let contents = read(path)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        "csv" => {
            let mut classes: Vec<&str> = Vec::new();
            for defect in contents.records.iter().flat_map(|r| &r.defects) {
                if !classes.contains(&defect.class.as_str()) {
                    classes.push(&defect.class);
                }
            }
            let class_columns: String = classes.iter().map(|c| format!(",area_{}_mm2", csv_field(c))).collect();
            writeln!(out, "record,layer,time,time_ms,trigger,verdict,defects,total_area_mm2{class_columns},uncertainty,model,version,backend,total_ms,rule,reason_code,reason,recoat_outcome,layer_class,layer_class_confidence,domain_score,domain_familiar,images")?;
            for (index, r) in contents.records.iter().enumerate() {
                let area = r.defects.iter().fold(0.0, |sum, d| sum + d.area_mm2);
                let class_areas: String = classes
                    .iter()
                    .map(|c| {
                        let area = r
                            .defects
                            .iter()
                            .filter(|d| d.class == *c)
                            .fold(0.0, |sum, d| sum + d.area_mm2);
                        format!(",{area:.3}")
                    })
                    .collect();
                writeln!(
                    out,
                    "{index},{},{},{},{},{},{},{area:.3}{class_areas},{:.6},{},{},{},{:.1},{},{},{},{},{},{},{},{},{}",
                    r.layer,
                    UtcTime::from_ms(r.time_ms),
                    r.time_ms,
                    csv_field(&r.trigger),
                    csv_field(&r.verdict),
                    r.defects.len(),
                    r.uncertainty_score,
                    csv_field(&r.model),
                    csv_field(&r.model_version),
                    csv_field(&r.backend),
                    r.total_ms,
                    csv_field(&r.rule),
                    r.reason_code,
                    csv_field(&r.reason),
                    csv_field(&r.recoat_outcome),
                    csv_field(&r.layer_class),
                    if r.layer_class.is_empty() {
                        String::new()
                    } else {
                        format!("{:.3}", r.layer_class_confidence)
                    },
                    r.domain.map(|d| format!("{:.3}", d.score)).unwrap_or_default(),
                    r.domain.map(|d| d.familiar.to_string()).unwrap_or_default(),
                    crate::record::layer_images::dir_name(index as u64, r.layer, &r.verdict)
                )?;
            }
        }
        "jsonl" => {
            for r in &contents.records {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        other => bail!("--format {other:?}: use csv or jsonl"),
    }
    if let Some(reason) = &contents.reason {
        eprintln!(
            "journal {}: {} bytes after the last good record are not exported: {reason}",
            path.display(),
            contents.file_len - contents.good_end
        );
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_iso_8601_in_utc() {
        assert_eq!(UtcTime::from_ms(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 12:34:56.789 UTC, a leap day
        assert_eq!(
            UtcTime::from_ms(1_709_210_096_789).to_string(),
            "2024-02-29T12:34:56.789Z"
        );
    }

    fn record(layer: u32) -> LayerRecord {
        LayerRecord {
            layer,
            time_ms: 1_764_000_000_000 + layer as u64,
            trigger: "serial".into(),
            verdict: if layer.is_multiple_of(2) {
                "RECOAT".into()
            } else {
                "PASS".into()
            },
            defects: (0..layer)
                .map(|i| DefectRecord {
                    class: "streaking".into(),
                    area_mm2: 1.5 * i as f64,
                    bbox: [i, 2, 30, 4],
                    bbox_mm: [i as f64 * 0.5, 1.0, 15.0, 2.0],
                    centroid: [15.5, 4.25],
                    mean_uncertainty: 0.125,
                })
                .collect(),
            uncertainty_score: 0.031,
            model: "amsegnet".into(),
            model_version: "1.0.0".into(),
            backend: "tract (CPU)".into(),
            total_ms: 41.5,
            infer_ms: 30.25,
            rule: "rules.streaking.limit".into(),
            reason_code: 0x0104,
            reason: "streaking: total area 21.00 mm² > 20.00 mm² → RECOAT".into(),
            recoat_outcome: String::new(),
            recoat_classes: vec!["streaking".into()],
            layer_class: "streaking".into(),
            layer_class_confidence: 0.875,
            domain: Some(DomainRecord {
                score: 0.75,
                threshold: 1.5,
                familiar: true,
            }),
        }
    }

    fn write(path: &Path, layers: &[u32]) {
        let (mut journal, _) = Journal::open(path).unwrap();
        for &layer in layers {
            journal.append(&record(layer)).unwrap();
        }
    }

    #[test]
    fn records_come_back_as_written() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("journal/layers.bsj");
        write(&path, &[1, 2, 3]);
        let (journal, report) = Journal::open(&path).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 3,
                cut_bytes: 0,
                reason: None,
                converted: None,
            }
        );
        assert_eq!(journal.records(), 3);
        assert_eq!(read(&path).unwrap().records, vec![record(1), record(2), record(3)]);
    }

    #[test]
    fn a_last_record_torn_at_any_byte_is_cut_and_the_rest_kept() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        write(&path, &[1, 2]);
        let two_records = std::fs::metadata(&path).unwrap().len();
        write(&path, &[3]);
        let whole = std::fs::read(&path).unwrap();
        for cut_at in two_records..whole.len() as u64 {
            std::fs::write(&path, &whole[..cut_at as usize]).unwrap();
            let (mut journal, report) = Journal::open(&path).unwrap();
            assert_eq!(report.records, 2, "cut at byte {cut_at}");
            assert_eq!(report.cut_bytes, cut_at - two_records, "cut at byte {cut_at}");
            assert_eq!(report.reason.is_some(), cut_at > two_records, "cut at byte {cut_at}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                two_records,
                "cut at byte {cut_at}"
            );
            journal.append(&record(4)).unwrap();
            drop(journal);
            let contents = read(&path).unwrap();
            assert_eq!(
                contents.records,
                vec![record(1), record(2), record(4)],
                "cut at byte {cut_at}"
            );
            assert_eq!(contents.reason, None);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_payload_fails_the_crc_and_is_cut() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        write(&path, &[1, 2]);
        let two_records = std::fs::metadata(&path).unwrap().len();
        write(&path, &[3]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[two_records as usize + 4 + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let contents = read(&path).unwrap();
        assert!(
            contents.reason.as_deref().unwrap().contains("bad CRC"),
            "{:?}",
            contents.reason
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            bytes.len() as u64,
            "read must not change the file"
        );

        let (_, report) = Journal::open(&path).unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(report.cut_bytes, bytes.len() as u64 - two_records);
        assert!(report.reason.unwrap().contains("bad CRC (the last record)"));
        assert_eq!(read(&path).unwrap().records, vec![record(1), record(2)]);
    }

    #[test]
    fn a_bad_record_in_the_middle_is_cut_with_what_follows_and_said_so() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        write(&path, &[1]);
        let one_record = std::fs::metadata(&path).unwrap().len();
        write(&path, &[2, 3]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[one_record as usize + 5] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (_, report) = Journal::open(&path).unwrap();
        assert_eq!(report.records, 1);
        assert!(report.reason.unwrap().contains("in the middle of the file"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), one_record);
    }

    #[test]
    fn a_journal_of_another_format_version_is_an_error_saying_so() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        std::fs::write(&path, b"BSJRNL01\x00\x00\x00\x00").unwrap();
        let error = format!("{:#}", Journal::open(&path).err().unwrap());
        assert!(
            error.contains("layers.bsj") && error.contains("format 01") && error.contains("writes 03"),
            "{error}"
        );
    }

    /// A box upgraded from format 2 keeps its history: the loop converts the journal on open and
    /// keeps the old file; reading commands read format 2 as it is.
    #[test]
    fn a_format_2_journal_is_read_and_converted_on_open_keeping_the_old_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        let old: Vec<LayerRecord> = (1..=3)
            .map(|layer| LayerRecord {
                layer_class: String::new(),
                layer_class_confidence: 0.0,
                domain: None,
                ..record(layer)
            })
            .collect();
        let mut bytes = MAGIC_V2.to_vec();
        for r in &old {
            let v2 = LayerRecordV2 {
                layer: r.layer,
                time_ms: r.time_ms,
                trigger: r.trigger.clone(),
                verdict: r.verdict.clone(),
                defects: r.defects.clone(),
                uncertainty_score: r.uncertainty_score,
                model: r.model.clone(),
                model_version: r.model_version.clone(),
                backend: r.backend.clone(),
                total_ms: r.total_ms,
                infer_ms: r.infer_ms,
                rule: r.rule.clone(),
                reason_code: r.reason_code,
                reason: r.reason.clone(),
                recoat_outcome: r.recoat_outcome.clone(),
                recoat_classes: r.recoat_classes.clone(),
            };
            let payload = postcard::to_allocvec(&v2).unwrap();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&payload);
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().records, old);

        let (mut journal, report) = Journal::open(&path).unwrap();
        let kept = folder.path().join("layers.bsj.format-2");
        assert_eq!(
            report.to_string(),
            format!(
                "3 records; converted 3 records from format 2 (the old file is kept as {})",
                kept.display()
            )
        );
        assert_eq!(std::fs::read(&kept).unwrap(), bytes);
        assert!(std::fs::read(&path).unwrap().starts_with(MAGIC));
        journal.append(&record(4)).unwrap();
        let mut expected = old;
        expected.push(record(4));
        assert_eq!(read(&path).unwrap().records, expected);
    }

    #[test]
    fn a_header_cut_at_creation_is_set_aside_with_the_reason_and_a_new_journal_started() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("layers.bsj");
        std::fs::write(&path, b"BSJR").unwrap();
        // a reading command says what is wrong and moves nothing
        let error = format!("{:#}", read(&path).err().unwrap());
        assert!(error.contains("its header is cut after 4 of 8 bytes"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"BSJR");
        // the loop sets it aside, says so, and starts a new one
        let (mut journal, report) = Journal::open(&path).unwrap();
        let aside = folder.path().join("layers.bsj.torn-header");
        assert_eq!(
            report.to_string(),
            format!(
                "0 records, cut 4 bytes: its header was cut after 4 of 8 bytes (a power cut while it was created); set aside as {}",
                aside.display()
            )
        );
        assert_eq!(std::fs::read(&aside).unwrap(), b"BSJR");
        journal.append(&LayerRecord::default()).unwrap();
        assert_eq!(read(&path).unwrap().records.len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_an_error_naming_it() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("notes.txt");
        std::fs::write(&path, b"hello, this is not a journal").unwrap();
        let error = format!("{:#}", Journal::open(&path).err().unwrap());
        assert_eq!(
            error,
            format!(
                "journal {}: not a bedsight journal (it does not start with \"BSJRNL03\"); move it away and a new one is started",
                path.display()
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"hello, this is not a journal");
        // A reading command (journal check, export, report) moves nothing: it says what is wrong.
        let error = format!("{:#}", read(&path).err().unwrap());
        assert_eq!(
            error,
            format!(
                "journal {}: not a bedsight journal (it does not start with \"BSJRNL03\")",
                path.display()
            )
        );
    }
}
