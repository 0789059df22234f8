//! The site's own pixel labels, as the dashboard's labelling page saves them (issue 15): a
//! folder beside the layer images with two files per labelled layer, named after the layer's
//! image folder (`NNNNNN-LNNNNN-VERDICT`):
//!
//! - `NAME.mask.png`: 8-bit grey, the bed's size, each pixel its class index (the label,
//!   whatever drew it: polygons, the brush, the eraser);
//! - `NAME.labels.json`: `{"format": "bedsight-labels 1", "image", "width", "height",
//!   "classes", "polygons": [{"class", "points": [[x, y], ...]}], "labelled_by",
//!   "labelled_at"}`.
//!
//! The format is the training tool's label store (quantize/bedsight_train/labels.py), which
//! reads this folder as it is and exports it for CVAT or labelme. Every save is checked whole
//! before anything is written; the mask and the labels file are each written to a temporary
//! file and renamed, the mask first, so a labels file is never beside a half-written mask.
//!
//! A second save of a layer (another person, or the same one later) wins, and the labels it
//! replaces are kept: moved to `revisions/NAME.N.mask.png` and `revisions/NAME.N.labels.json`,
//! N counting from 1. The dashboard serves requests one at a time, so two saves never interleave.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::record::journal::UtcTime;

pub const FORMAT: &str = "bedsight-labels 1";
/// The longest name a labeller may give.
const MAX_NAME: usize = 100;

/// What the labelling page sends: who, the polygons drawn, and the mask as the bed's class
/// indices (row-major bytes, base64).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsUpload {
    pub labelled_by: String,
    #[serde(default)]
    pub polygons: Vec<Polygon>,
    pub mask: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Polygon {
    pub class: String,
    pub points: Vec<[f64; 2]>,
}

/// A checked upload: its mask decoded.
pub struct Labels {
    pub labelled_by: String,
    pub polygons: Vec<Polygon>,
    pub mask: Vec<u8>,
}

/// The label store of the layer images in `images_folder`: `labels/` beside it.
pub fn folder_for(images_folder: &Path) -> PathBuf {
    images_folder.with_file_name("labels")
}

/// Checks an upload against the bed (`width` x `height`) and its classes (index 0 background);
/// the error says what is wrong, once.
pub fn check(upload: LabelsUpload, width: u32, height: u32, classes: &[String]) -> Result<Labels, String> {
    let who = upload.labelled_by.trim();
    if who.is_empty() || who.chars().count() > MAX_NAME || who.chars().any(char::is_control) {
        return Err(format!(
            "labelled_by: give who labelled the layer (1 to {MAX_NAME} printable characters)"
        ));
    }
    let mask = base64::engine::general_purpose::STANDARD
        .decode(upload.mask.as_bytes())
        .map_err(|e| format!("mask: not base64 ({e})"))?;
    let expected = width as usize * height as usize;
    if mask.len() != expected {
        return Err(format!(
            "mask: {} class indices, but the bed is {width}x{height} = {expected} pixels",
            mask.len()
        ));
    }
    if let Some(&bad) = mask.iter().find(|&&k| k as usize >= classes.len()) {
        return Err(format!(
            "mask: class index {bad}, but the model has {} classes (0 to {})",
            classes.len(),
            classes.len() - 1
        ));
    }
    for (i, polygon) in upload.polygons.iter().enumerate() {
        if !classes.iter().skip(1).any(|c| *c == polygon.class) {
            return Err(format!(
                "polygons[{i}]: class {:?} is not one of {}",
                polygon.class,
                classes[1..].join(", ")
            ));
        }
        if polygon.points.len() < 3 {
            return Err(format!("polygons[{i}]: a polygon needs at least 3 points"));
        }
        let outside = polygon.points.iter().find(|[x, y]| {
            !(x.is_finite() && y.is_finite() && (0.0..=width as f64).contains(x) && (0.0..=height as f64).contains(y))
        });
        if let Some([x, y]) = outside {
            return Err(format!(
                "polygons[{i}]: point [{x}, {y}] lies outside the {width}x{height} bed"
            ));
        }
    }
    Ok(Labels {
        labelled_by: who.to_string(),
        polygons: upload.polygons,
        mask,
    })
}

/// The layer a save is for: its name in the store (its image folder's), its rectified bed
/// (relative to the images folder), the bed's size and the model's classes.
pub struct LayerBed<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub width: u32,
    pub height: u32,
    pub classes: &'a [String],
}

/// Writes one layer's labels into `store` (created if missing); returns the labels file's
/// contents.
pub fn save(store: &Path, bed: &LayerBed, labels: &Labels, now_ms: u64) -> Result<Value> {
    use image::ImageEncoder;

    std::fs::create_dir_all(store).with_context(|| format!("label store {}", store.display()))?;
    keep_revision(store, bed.name)?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&labels.mask, bed.width, bed.height, image::ExtendedColorType::L8)
        .context("encoding the mask")?;
    write_replacing(&store.join(format!("{}.mask.png", bed.name)), &png)?;
    let doc = json!({
        "format": FORMAT,
        "image": bed.image,
        "width": bed.width,
        "height": bed.height,
        "classes": bed.classes,
        "polygons": labels.polygons,
        "labelled_by": labels.labelled_by,
        "labelled_at": UtcTime::from_ms(now_ms).to_string(),
    });
    let text = serde_json::to_string_pretty(&doc).expect("plain data") + "\n";
    write_replacing(&store.join(format!("{}.labels.json", bed.name)), text.as_bytes())?;
    Ok(doc)
}

/// The saved labels file of a layer, if any.
pub fn load(store: &Path, name: &str) -> Result<Option<Value>> {
    let path = store.join(format!("{name}.labels.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{}: not a labels file", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
    }
}

/// Moves the layer's saved labels, when there are any, to the next free `revisions/NAME.N.*`.
fn keep_revision(store: &Path, name: &str) -> Result<()> {
    let labels = store.join(format!("{name}.labels.json"));
    if !labels.exists() {
        return Ok(());
    }
    let revisions = store.join("revisions");
    std::fs::create_dir_all(&revisions).with_context(|| format!("{}", revisions.display()))?;
    let number = (1..)
        .find(|n| !revisions.join(format!("{name}.{n}.labels.json")).exists())
        .expect("a free number");
    let mask = store.join(format!("{name}.mask.png"));
    if mask.exists() {
        let kept = revisions.join(format!("{name}.{number}.mask.png"));
        std::fs::rename(&mask, &kept).with_context(|| format!("keeping {} as {}", mask.display(), kept.display()))?;
    }
    let kept = revisions.join(format!("{name}.{number}.labels.json"));
    std::fs::rename(&labels, &kept).with_context(|| format!("keeping {} as {}", labels.display(), kept.display()))
}

fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("part");
    std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::class_names as classes;

    fn upload(mask: &[u8]) -> LabelsUpload {
        LabelsUpload {
            labelled_by: "ana".into(),
            polygons: vec![Polygon {
                class: "streaking".into(),
                points: vec![[0.0, 1.0], [4.0, 1.0], [4.0, 2.0]],
            }],
            mask: base64::engine::general_purpose::STANDARD.encode(mask),
        }
    }

    /// Layer 2's 4x3 bed.
    fn bed(classes: &[String]) -> LayerBed<'_> {
        LayerBed {
            name: "000001-L00002-PAUSE",
            image: "000001-L00002-PAUSE/rectified.png",
            width: 4,
            height: 3,
            classes,
        }
    }

    #[test]
    fn a_save_writes_the_mask_and_the_labels_file_the_training_tool_reads() {
        let folder = tempfile::tempdir().unwrap();
        let mut mask = vec![0u8; 4 * 3];
        mask[5] = 4;
        let labels = check(upload(&mask), 4, 3, &classes()).unwrap();
        // 2026-12-03T10:00:00Z
        let classes = classes();
        let bed = bed(&classes);
        let doc = save(folder.path(), &bed, &labels, 1_796_292_000_000).unwrap();
        assert_eq!(doc["labelled_at"], "2026-12-03T10:00:00.000Z");
        assert_eq!(doc["format"], FORMAT);
        let back = image::open(folder.path().join("000001-L00002-PAUSE.mask.png"))
            .unwrap()
            .to_luma8();
        assert_eq!((back.width(), back.height()), (4, 3));
        assert_eq!(back.into_raw(), mask);
        let read = load(folder.path(), "000001-L00002-PAUSE").unwrap().unwrap();
        assert_eq!(read["polygons"][0]["class"], "streaking");
        assert!(load(folder.path(), "000002-L00003-PASS").unwrap().is_none());
    }

    #[test]
    fn a_later_save_wins_and_the_earlier_labels_are_kept_as_revisions() {
        let folder = tempfile::tempdir().unwrap();
        let classes = classes();
        let bed = bed(&classes);
        let by = |who: &str, class: u8| {
            let mut upload = upload(&[class; 12]);
            upload.labelled_by = who.into();
            check(upload, 4, 3, &classes).unwrap()
        };
        save(folder.path(), &bed, &by("ana", 2), 1_796_292_000_000).unwrap();
        save(folder.path(), &bed, &by("ben", 3), 1_796_292_060_000).unwrap();
        save(folder.path(), &bed, &by("cai", 4), 1_796_292_120_000).unwrap();

        let current = load(folder.path(), bed.name).unwrap().unwrap();
        assert_eq!(current["labelled_by"], "cai");
        let mask_of = |path: PathBuf| image::open(path).unwrap().to_luma8().into_raw();
        assert_eq!(mask_of(folder.path().join("000001-L00002-PAUSE.mask.png")), vec![4; 12]);
        let revisions = folder.path().join("revisions");
        for (number, who, class) in [(1, "ana", 2), (2, "ben", 3)] {
            let text =
                std::fs::read_to_string(revisions.join(format!("000001-L00002-PAUSE.{number}.labels.json"))).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(doc["labelled_by"], who);
            assert_eq!(
                mask_of(revisions.join(format!("000001-L00002-PAUSE.{number}.mask.png"))),
                vec![class; 12]
            );
        }
        // the store itself holds only the current labels
        let mut names: Vec<String> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "000001-L00002-PAUSE.labels.json",
                "000001-L00002-PAUSE.mask.png",
                "revisions"
            ]
        );
    }

    #[test]
    fn a_bad_upload_is_refused_with_what_is_wrong() {
        let refuse = |upload: LabelsUpload| check(upload, 4, 3, &classes()).err().unwrap();
        assert_eq!(
            refuse(upload(&[0; 11])),
            "mask: 11 class indices, but the bed is 4x3 = 12 pixels"
        );
        assert_eq!(
            refuse(upload(&[6; 12])),
            "mask: class index 6, but the model has 6 classes (0 to 5)"
        );
        let mut nobody = upload(&[0; 12]);
        nobody.labelled_by = "  ".into();
        assert!(refuse(nobody).starts_with("labelled_by: give who labelled"));
        let mut unknown = upload(&[0; 12]);
        unknown.polygons[0].class = "scratch".into();
        assert_eq!(
            refuse(unknown),
            "polygons[0]: class \"scratch\" is not one of super-elevation, incompleteness, hopping, streaking, lattice"
        );
        let mut outside = upload(&[0; 12]);
        outside.polygons[0].points[1] = [9.0, 1.0];
        assert_eq!(refuse(outside), "polygons[0]: point [9, 1] lies outside the 4x3 bed");
        let mut not_base64 = upload(&[0; 12]);
        not_base64.mask = "***".into();
        assert!(refuse(not_base64).starts_with("mask: not base64"));
    }
}
