//! The operator's web page of `bedsight run`, with `/metrics` and `/healthz`: a small
//! synchronous HTTP server (tiny_http, a thread per request) over the shared `Board`. Read-only
//! routes need nothing; routes that change anything need the configured token. Every request
//! is checked: a bad path, record number, method or token is one 4xx with the reason, and
//! nothing changes.
//!
//! Routes (docs/dashboard.md): `GET /`, `/api/state`, `/api/records/<i>`,
//! `/images/<i>/<kind>.png`, `/chart.svg`, `/stacked.svg`, `/map.svg`, `/tracks.html`,
//! `/map-filter.js` (docs/tracks.md), `/events` (server-sent events),
//! `/metrics`, `/healthz`; `POST /api/records/<i>/acknowledge` and `/false-alarm`.
//!
//! The group owns what people see of a build: the dashboard's state (`board`), the whole build
//! as compact entries (`layers`), the SVG charts and the defect map (`chart`, `defects`), the
//! loop's counters and their exposition (`metrics`), and the same views written to one HTML file
//! after the build (`report`, `bedsight report`). It must not change a verdict or send anything
//! to the PLC: an operator's annotation is kept beside the journal, never in it.

pub mod board;
pub mod chart;
pub mod defects;
mod labelling;
pub mod layers;
pub mod metrics;
pub mod report;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::record::layer_images::{BedInfo, KINDS};
use board::{Action, AnnotateError, Board};

/// The page: hand-written HTML, CSS and JavaScript, no outside resources (the box is offline).
const PAGE: &str = include_str!("page.html");
/// An idle event stream gets a comment this often, so proxies and the page see it is alive.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// The largest request body read (a note on an annotation).
const MAX_BODY: u64 = 4096;

/// Starts the server on `address`; returns the bound address (port 0 gets a free one) and the
/// thread that takes requests, which ends when `stop` is set.
///
/// Each request is handled on a thread of its own, so that a client that stalls holds that
/// thread and nothing else: a control whose body never comes (tiny_http reads a request's body,
/// or drops the rest of it, on the thread that handles it), or a browser that stopped reading
/// its response. Requests still being handled when `stop` is set are not waited for (a stalled
/// client would hold the shutdown). tiny_http itself gives every connection a thread, so these
/// threads add one per request in hand, not a new kind of cost.
pub fn spawn(
    address: &str,
    token: Option<String>,
    board: Arc<Board>,
    stop: Arc<AtomicBool>,
) -> Result<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    let server = Server::http(address).map_err(|e| anyhow!("cannot listen on {address}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("{address} is not an IP address"))?;
    let handle = std::thread::Builder::new()
        .name("dashboard".into())
        .spawn(move || {
            let token = token.map(Arc::new);
            while !stop.load(Ordering::Relaxed) {
                match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(request)) => {
                        let (board, stop, token) = (board.clone(), stop.clone(), token.clone());
                        let spawned = std::thread::Builder::new()
                            .name("dashboard-request".into())
                            .spawn(move || handle(request, &board, token.as_deref().map(String::as_str), &stop));
                        // On failure the closure and the request in it are dropped, and tiny_http
                        // answers 500.
                        if let Err(error) = spawned {
                            tracing::error!("dashboard: cannot start a request's thread: {error}");
                        }
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!("dashboard: {error}"),
                }
            }
        })
        .context("cannot start the dashboard thread")?;
    Ok((bound, handle))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn respond(request: Request, status: u16, content_type: &str, body: Vec<u8>) {
    // One request per connection: each idle keep-alive connection would hold a tiny_http
    // thread blocked on its socket, and a new connection on the shop network costs little.
    let response = Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("Connection", "close"));
    request.respond(response).ok();
}

fn text(request: Request, status: u16, message: &str) {
    respond(
        request,
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").into_bytes(),
    );
}

fn json(request: Request, status: u16, value: &serde_json::Value) {
    respond(request, status, "application/json", value.to_string().into_bytes());
}

/// A record number from a path segment: digits only, and a record that exists.
fn record_index(segment: &str, board: &Board) -> Result<u64, (u16, String)> {
    let index: u64 = segment.parse().map_err(|_| {
        (
            400,
            format!("record number {segment:?} is not a number: records are numbered 0, 1, 2, ... in journal order"),
        )
    })?;
    let count = board.record_count() as u64;
    if index >= count {
        return Err((
            404,
            format!(
                "there is no record {index}: the build has {count} records (0 to {})",
                count.saturating_sub(1)
            ),
        ));
    }
    Ok(index)
}

fn handle(mut request: Request, board: &Arc<Board>, token: Option<&str>, stop: &Arc<AtomicBool>) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (Method::Get | Method::Head, [""]) => {
            respond(request, 200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
        }
        (Method::Get, ["api", "state"]) => json(request, 200, &board.state_json()),
        (Method::Get, ["api", "records", segment]) => match record_index(segment, board) {
            Ok(index) => match board.record_json(index) {
                Ok(Some(value)) => json(request, 200, &value),
                Ok(None) => text(request, 404, &format!("there is no record {index}")),
                Err(error) => text(request, 500, &format!("{error:#}")),
            },
            Err((status, message)) => text(request, status, &message),
        },
        (Method::Get, ["images", segment, file]) => serve_image(request, board, segment, file),
        // The bed's size and the model's classes with their colours (the page's legend), once
        // the recorder has written the first layer's images.
        (Method::Get, ["api", "bed"]) => match board.images_folder.as_deref().and_then(BedInfo::read) {
            Some(bed) => json(request, 200, &serde_json::json!(bed)),
            None => text(request, 404, "no layer images yet"),
        },
        (Method::Get, ["chart.svg"]) => {
            let bed = board.images_folder.as_deref().and_then(BedInfo::read);
            respond(
                request,
                200,
                "image/svg+xml",
                board
                    .with_layers(|layers| chart::trend_svg(layers, bed.as_ref()))
                    .into_bytes(),
            );
        }
        (Method::Get, ["stacked.svg"]) => {
            let bed = board.images_folder.as_deref().and_then(BedInfo::read);
            let background = board
                .latest_with_images()
                .map(|index| format!("/images/{index}/rectified.png"));
            respond(
                request,
                200,
                "image/svg+xml",
                board
                    .with_layers(|layers| chart::stacked_svg(layers, bed.as_ref(), background.as_deref()))
                    .into_bytes(),
            );
        }
        (Method::Get, ["map.svg"]) => {
            let bed = board.images_folder.as_deref().and_then(BedInfo::read);
            let (width_mm, height_mm) = board
                .config
                .get()
                .map(|c| (c.bed.width_mm, c.bed.height_mm))
                .unwrap_or((250.0, 250.0));
            let body = board.with_layers(|layers| {
                format!(
                    "{}{}",
                    defects::map_filter_controls(layers),
                    defects::map_svg(layers, width_mm, height_mm, bed.as_ref())
                )
            });
            respond(request, 200, "text/html; charset=utf-8", body.into_bytes());
        }
        (Method::Get, ["tracks.html"]) => {
            let config = board
                .config
                .get()
                .cloned()
                .unwrap_or_else(crate::config::Config::embedded);
            respond(
                request,
                200,
                "text/html; charset=utf-8",
                board
                    .with_layers(|layers| defects::tracks_html(layers, &config))
                    .into_bytes(),
            );
        }
        (Method::Get, ["map-filter.js"]) => respond(
            request,
            200,
            "text/javascript; charset=utf-8",
            defects::MAP_FILTER_SCRIPT.as_bytes().to_vec(),
        ),
        (Method::Get, ["events"]) => stream_events(request, board, stop),
        (Method::Get, ["metrics"]) => respond(
            request,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            board.metrics.render().into_bytes(),
        ),
        (Method::Get, ["healthz"]) => match board.down() {
            None => text(request, 200, "ok: camera, model and PLC link are up"),
            Some(down) => text(request, 503, &format!("down: {}", down.join("; "))),
        },
        (Method::Post, ["api", "records", segment, action]) => {
            let Some(action) = Action::parse(action) else {
                return text(
                    request,
                    404,
                    &format!("no control {action:?}: use acknowledge or false-alarm"),
                );
            };
            if let Err((status, message)) = authorise(&request, token) {
                return refuse(request, status, &message);
            }
            let index = match record_index(segment, board) {
                Ok(index) => index,
                Err((status, message)) => return text(request, status, &message),
            };
            let note = match read_note(&mut request) {
                Ok(note) => note,
                Err(message) => return text(request, 400, &message),
            };
            match board.annotate(index, action, &note) {
                Ok(annotation) => json(request, 200, &serde_json::json!(annotation)),
                Err(AnnotateError::NoSuchRecord(message)) => text(request, 404, &message),
                Err(AnnotateError::Conflict(message)) => text(request, 409, &message),
                Err(AnnotateError::Storage(message)) => text(request, 500, &message),
            }
        }
        (Method::Get | Method::Head, ["label", segment]) => match record_index(segment, board) {
            Ok(_) => respond(
                request,
                200,
                "text/html; charset=utf-8",
                labelling::PAGE.as_bytes().to_vec(),
            ),
            Err((status, message)) => text(request, status, &message),
        },
        (Method::Get, ["api", "labels", segment]) => labelling::info(request, board, segment),
        (Method::Get, ["labels", segment, "mask.png"]) => labelling::mask(request, board, segment),
        (Method::Post, ["api", "labels", segment]) => labelling::save(request, board, token, segment),
        (
            _,
            ["" | "events" | "metrics" | "healthz" | "chart.svg" | "stacked.svg" | "map.svg" | "tracks.html"
            | "map-filter.js"]
            | ["api", ..]
            | ["images", ..]
            | ["label", ..]
            | ["labels", ..],
        ) => {
            let message = if known_path(&segments) {
                format!("{method} is not allowed on {path}")
            } else {
                format!("no such page: {path}")
            };
            text(request, if known_path(&segments) { 405 } else { 404 }, &message)
        }
        _ => text(request, 404, &format!("no such page: {path}")),
    }
}

fn known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        [""] | ["events"
            | "metrics"
            | "healthz"
            | "chart.svg"
            | "stacked.svg"
            | "map.svg"
            | "tracks.html"
            | "map-filter.js"]
            | ["api", "state" | "bed"]
            | ["api", "records", _]
            | ["api", "records", _, _]
            | ["api", "labels", _]
            | ["images", _, _]
            | ["label", _]
            | ["labels", _, "mask.png"]
    )
}

/// A refusal of a control: 401 says how to authenticate (RFC 6750).
fn refuse(request: Request, status: u16, message: &str) {
    let mut response = Response::from_data(format!("{message}\n").into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"));
    if status == 401 {
        response.add_header(header("WWW-Authenticate", "Bearer"));
    }
    request.respond(response).ok();
}

/// `Authorization: Bearer <token>` against the configured token.
fn authorise(request: &Request, token: Option<&str>) -> Result<(), (u16, String)> {
    let Some(expected) = token else {
        return Err((
            403,
            "controls are off: dashboard.token is not set in the configuration".into(),
        ));
    };
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_string());
    let Some(given) = given else {
        return Err((
            401,
            "this control needs the dashboard token: send Authorization: Bearer <token>".into(),
        ));
    };
    let Some(given) = given.strip_prefix("Bearer ") else {
        return Err((401, "the Authorization header must be Bearer <token>".into()));
    };
    // Same time whatever the first differing byte.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err((403, "wrong dashboard token".into()));
    }
    Ok(())
}

/// An optional `{"note": "..."}` body.
fn read_note(request: &mut Request) -> Result<String, String> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the request body: {e}"))?;
    if body.len() as u64 > MAX_BODY {
        return Err(format!("the request body is over {MAX_BODY} bytes"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        note: String,
    }
    serde_json::from_slice::<Body>(&body)
        .map(|b| b.note)
        .map_err(|e| format!("the body must be {{\"note\": \"...\"}} or empty: {e}"))
}

fn serve_image(request: Request, board: &Board, segment: &str, file: &str) {
    let index = match record_index(segment, board) {
        Ok(index) => index,
        Err((status, message)) => return text(request, status, &message),
    };
    let Some(kind) = file.strip_suffix(".png").filter(|kind| KINDS.contains(kind)) else {
        return text(
            request,
            404,
            &format!(
                "no image {file:?}: use one of {}",
                KINDS.map(|k| format!("{k}.png")).join(", ")
            ),
        );
    };
    let (Some(folder), Some(dir)) = (board.images_folder.as_ref(), board.images_dir(index)) else {
        return text(
            request,
            404,
            &format!(
                "the images of record {index} are not kept (not written yet, dropped, or deleted by record.max_gb)"
            ),
        );
    };
    match std::fs::read(folder.join(dir).join(format!("{kind}.png"))) {
        Ok(bytes) => respond(request, 200, "image/png", bytes),
        Err(_) => text(
            request,
            404,
            &format!("record {index} has no {kind} image (a FAULT layer keeps only raw.png)"),
        ),
    }
}

/// `/events`: the response is written by hand on the raw connection so each event goes out
/// the moment it happens (tiny_http would buffer a streamed body into chunks).
fn stream_events(request: Request, board: &Arc<Board>, stop: &Arc<AtomicBool>) {
    let Some(events) = board.subscribe() else {
        return text(
            request,
            503,
            &format!("too many pages are listening (at most {})", board::MAX_SUBSCRIBERS),
        );
    };
    let mut writer = request.into_writer();
    let stop = stop.clone();
    let spawned = std::thread::Builder::new().name("dashboard-events".into()).spawn(move || {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nretry: 1000\n\n";
        if writer.write_all(head.as_bytes()).and_then(|_| writer.flush()).is_err() {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let message = match events.recv_timeout(KEEPALIVE) {
                Ok(message) => message,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => ": keepalive\n\n".to_string(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if writer.write_all(message.as_bytes()).and_then(|_| writer.flush()).is_err() {
                return;
            }
        }
    });
    if let Err(error) = spawned {
        tracing::error!("dashboard: cannot start an event stream: {error}");
    }
}
