//! The labelling page (issue 15): an operator labels a recorded layer's bed at full resolution,
//! starting from the model's mask, and saves it into the site's label store
//! (`record::site_labels`), which the training tool fine-tunes on.
//!
//! - `GET /label/N`: the page (`label.html`, self-contained);
//! - `GET /api/labels/N`: the layer's bed size and classes, and its saved labels (or null);
//! - `GET /labels/N/mask.png`: its saved mask;
//! - `POST /api/labels/N` (the dashboard token): saves `{"labelled_by", "polygons", "mask"}`.

use std::io::Read;
use std::path::PathBuf;

use tiny_http::Request;

use super::board::Board;
use super::{authorise, json, record_index, refuse, respond, text};
use crate::record::layer_images::BedInfo;
use crate::record::site_labels::{self, LabelsUpload, LayerBed};

pub const PAGE: &str = include_str!("label.html");
/// The largest save accepted: a 2048x2048 bed's mask in base64 and its polygons.
const MAX_SAVE: u64 = 8 << 20;

/// A recorded layer that can be labelled.
struct Layer {
    index: u64,
    /// Its image folder's name: its name in the label store.
    name: String,
    images_folder: PathBuf,
    bed: BedInfo,
    classes: Vec<String>,
}

/// The layer of record `segment`; or the status and message that say why it cannot be labelled.
fn layer(board: &Board, segment: &str) -> Result<Layer, (u16, String)> {
    let index = record_index(segment, board)?;
    let folder = board.images_folder.clone().ok_or_else(|| {
        (
            404,
            "layer images are not recorded ([record] is off): there is nothing to label".to_string(),
        )
    })?;
    let name = board.images_dir(index).ok_or_else(|| {
        (
            404,
            format!(
                "the images of record {index} are not kept (not written yet, dropped, or deleted by record.max_gb)"
            ),
        )
    })?;
    if !folder.join(&name).join("rectified.png").is_file() {
        return Err((
            404,
            format!("record {index} has no rectified bed to label (a FAULT layer keeps only raw.png)"),
        ));
    }
    let bed = BedInfo::read(&folder).ok_or_else(|| (404, "no layer images yet".to_string()))?;
    let classes = bed.classes.iter().map(|c| c.name.clone()).collect();
    Ok(Layer {
        index,
        name,
        images_folder: folder,
        bed,
        classes,
    })
}

pub fn info(request: Request, board: &Board, segment: &str) {
    let layer = match layer(board, segment) {
        Ok(found) => found,
        Err((status, message)) => return text(request, status, &message),
    };
    match site_labels::load(&site_labels::folder_for(&layer.images_folder), &layer.name) {
        Ok(saved) => json(
            request,
            200,
            &serde_json::json!({
                "index": layer.index,
                "name": layer.name,
                "width": layer.bed.width,
                "height": layer.bed.height,
                "classes": layer.bed.classes,
                "saved": saved,
            }),
        ),
        Err(error) => text(request, 500, &format!("{error:#}")),
    }
}

pub fn mask(request: Request, board: &Board, segment: &str) {
    let layer = match layer(board, segment) {
        Ok(found) => found,
        Err((status, message)) => return text(request, status, &message),
    };
    let path = site_labels::folder_for(&layer.images_folder).join(format!("{}.mask.png", layer.name));
    match std::fs::read(path) {
        Ok(bytes) => respond(request, 200, "image/png", bytes),
        Err(_) => text(request, 404, &format!("record {} has no saved labels", layer.index)),
    }
}

/// Held while a save writes the label store.
static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn save(mut request: Request, board: &Board, token: Option<&str>, segment: &str) {
    if let Err((status, message)) = authorise(&request, token) {
        return refuse(request, status, &message);
    }
    let layer = match layer(board, segment) {
        Ok(found) => found,
        Err((status, message)) => return text(request, status, &message),
    };
    let mut body = Vec::new();
    if let Err(error) = request.as_reader().take(MAX_SAVE + 1).read_to_end(&mut body) {
        return text(request, 400, &format!("cannot read the request body: {error}"));
    }
    if body.len() as u64 > MAX_SAVE {
        return text(request, 413, &format!("the labels are over {MAX_SAVE} bytes"));
    }
    let upload: LabelsUpload = match serde_json::from_slice(&body) {
        Ok(upload) => upload,
        Err(error) => {
            return text(
                request,
                400,
                &format!("the body must be {{\"labelled_by\": ..., \"polygons\": [...], \"mask\": base64}}: {error}"),
            )
        }
    };
    let labels = match site_labels::check(upload, layer.bed.width, layer.bed.height, &layer.classes) {
        Ok(labels) => labels,
        Err(message) => return text(request, 400, &message),
    };
    let image = format!("{}/rectified.png", layer.name);
    let layer_bed = LayerBed {
        name: &layer.name,
        image: &image,
        width: layer.bed.width,
        height: layer.bed.height,
        classes: &layer.classes,
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_millis() as u64)
        .unwrap_or(0);
    // One save at a time: requests run on threads of their own, and two saves of one layer
    // would race for its revision number and its `.part` files.
    let saved = {
        let _one_at_a_time = SAVING.lock().unwrap_or_else(|p| p.into_inner());
        site_labels::save(
            &site_labels::folder_for(&layer.images_folder),
            &layer_bed,
            &labels,
            now_ms,
        )
    };
    match saved {
        Ok(doc) => {
            tracing::info!(
                "labels: record {} ({}) saved by {}",
                layer.index,
                layer.name,
                labels.labelled_by
            );
            json(request, 200, &doc)
        }
        Err(error) => text(request, 500, &format!("{error:#}")),
    }
}
