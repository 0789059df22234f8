//! A/B model slots on a box: install into the idle slot, self-test, activate, roll back.
//!
//! Layout under the state folder (`STATE`, e.g. `/var/lib/bedsight`):
//! ```text
//! STATE/active              "a" or "b": the slot the box runs (absent: no model installed)
//! STATE/previous            "a" or "b": the slot `rollback` goes back to (absent: none)
//! STATE/slots/a/            an installed image: its files unpacked (manifest.toml, model.onnx,
//! STATE/slots/b/              model.int8.onnx, selftest/..., manifest.sig), image.bsimg (the
//!                             archive as installed) and status.toml (what install found)
//! STATE/slots/install.lock  present while an install runs (its pid, slot, start time)
//! STATE/slots/b.staging/    where an install unpacks and self-tests before it is moved in
//! ```
//! The pointers are switched atomically: the new content goes to a temporary file, which is
//! synced and renamed over the pointer, and the folder is synced. An install never touches the
//! active slot; it builds the idle slot in `<slot>.staging`, self-tests it there, and only then
//! moves it into place and switches `active`. A process killed at any point leaves either the
//! old active slot or the new one active; the next [`Slots::open`] finds the stale
//! `install.lock` and removes what the interrupted install left behind.
//!
//! This module knows files and the format only: the self-test (which runs the graph) is a
//! callback that the appliance passes in, so `images` stays free of any inference engine.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::io_error;
use crate::{ImageError, ModelImage, ENTRY_MANIFEST, ENTRY_SIGNATURE};

/// The least share of pixels on which the self-test's mask must equal the expected mask.
pub const SELFTEST_MIN_AGREEMENT: f64 = 0.99;
/// The least IoU of each defect class between the self-test's mask and the expected mask. The
/// pixel share alone would pass a graph that lost every defect pixel: the background is most of
/// the bed.
pub const SELFTEST_MIN_CLASS_IOU: f64 = 0.8;
/// A defect class is compared by IoU when either mask holds at least this many of its pixels;
/// below it, a few pixels at a defect's edge would decide the IoU.
pub const SELFTEST_CLASS_MIN_PIXELS: u64 = 50;
/// The archive as installed, kept in each slot (what [`Slots::active_image`] loads).
pub const SLOT_IMAGE_FILE: &str = "image.bsimg";
/// What install found, kept in each slot.
pub const SLOT_STATUS_FILE: &str = "status.toml";

const ACTIVE_POINTER: &str = "active";
const PREVIOUS_POINTER: &str = "previous";
const SLOTS_DIR: &str = "slots";
const INSTALL_LOCK: &str = "install.lock";

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// Both slots, in order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// "a" or "b".
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// "a" → A, "b" → B (surrounding white space ignored).
    pub fn parse(text: &str) -> Option<Slot> {
        match text.trim() {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `status.toml` of an installed slot: what was installed and what its self-test found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotStatus {
    /// The model's name (manifest `name`).
    pub name: String,
    /// The model's version (manifest `version`).
    pub version: String,
    /// sha256 of the image's `manifest.toml`, lowercase hex: identifies the whole image.
    pub manifest_sha256: String,
    /// When it was installed, RFC 3339 UTC.
    pub installed_at: String,
    /// Share (0..1) of self-test pixels whose mask equalled the expected mask.
    pub selftest_agreement: f64,
    /// Pixels compared by the self-test.
    pub selftest_pixels: u64,
    /// The backend the self-test ran on, e.g. "ort (TensorRT)" or "tract".
    pub backend: String,
    /// Which graph of the image ran: "int8" or "fp32".
    pub graph: String,
    /// IoU of each defect class compared by the self-test ([`SELFTEST_CLASS_MIN_PIXELS`]);
    /// absent in a status written before it was measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selftest_class_iou: BTreeMap<String, f64>,
    /// The owner of the trusted key that verified the signature; absent for an unsigned image
    /// (installed because the configuration allows unsigned images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

impl SlotStatus {
    /// Whether the self-test passed ([`SELFTEST_MIN_AGREEMENT`], [`SELFTEST_MIN_CLASS_IOU`]).
    pub fn selftest_passed(&self) -> bool {
        self.selftest_agreement >= SELFTEST_MIN_AGREEMENT
            && self
                .selftest_class_iou
                .values()
                .all(|iou| *iou >= SELFTEST_MIN_CLASS_IOU)
    }
}

/// What the self-test callback of [`Slots::install`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestOutcome {
    /// Share (0..1) of pixels whose mask equals the expected mask.
    pub agreement: f64,
    /// Pixels compared.
    pub pixels: u64,
    /// The backend the graph ran on.
    pub backend: String,
    /// Which graph ran: "int8" or "fp32".
    pub graph: String,
    /// IoU with the expected mask of each defect class that either mask holds at least
    /// [`SELFTEST_CLASS_MIN_PIXELS`] pixels of.
    pub class_iou: BTreeMap<String, f64>,
}

impl SelfTestOutcome {
    /// Why this outcome fails the self-test, if it does: too few pixels agree, a defect class
    /// was lost, moved or invented, or both (each said, so that a lost class is named even
    /// when the pixels fail first).
    pub fn failure(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.agreement.is_nan() || self.agreement < SELFTEST_MIN_AGREEMENT {
            problems.push(format!(
                "the golden input gave a mask that agrees with selftest/expected_mask.png on \
                 {:.2}% of {} pixels, at least {:.0}% is required",
                self.agreement * 100.0,
                self.pixels,
                SELFTEST_MIN_AGREEMENT * 100.0
            ));
        }
        let poor: Vec<String> = self
            .class_iou
            .iter()
            .filter(|(_, iou)| iou.is_nan() || **iou < SELFTEST_MIN_CLASS_IOU)
            .map(|(class, iou)| format!("{class} IoU {iou:.2}"))
            .collect();
        if !poor.is_empty() {
            problems.push(format!(
                "the golden input's defects differ from selftest/expected_mask.png: {} (at least {:.2} required per defect class)",
                poor.join(", "),
                SELFTEST_MIN_CLASS_IOU
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Which image is active: what a running loop compares between layers to see a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGeneration {
    /// The active slot.
    pub slot: Slot,
    /// sha256 of the active image's manifest.
    pub manifest_sha256: String,
}

/// One slot as [`Slots::list`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotView {
    /// The slot.
    pub slot: Slot,
    /// Whether `active` names it.
    pub active: bool,
    /// Whether `previous` names it (the slot `rollback` would activate).
    pub previous: bool,
    /// Its status; `None` when the slot is empty.
    pub status: Option<SlotStatus>,
}

/// What [`Slots::install`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallReport {
    /// The slot installed into, now active.
    pub slot: Slot,
    /// The slot that was active before (now `previous`), if any.
    pub previous: Option<Slot>,
    /// The new slot's status.
    pub status: SlotStatus,
}

/// The slots of one state folder. [`Slots::open`] cleans up after an interrupted install;
/// [`Slots::recovered`] says what it removed.
#[derive(Debug)]
pub struct Slots {
    /// The state folder.
    pub state_dir: PathBuf,
    /// One line per thing the last recovery removed or repaired (empty when all was in order).
    pub recovered: Vec<String>,
}

/// The install lock's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallLock {
    slot: Slot,
    pid: u32,
    started_at: String,
}

impl Slots {
    /// Opens (and creates, if need be) the slots under `state_dir`, then recovers from an
    /// install that did not finish: when `slots/install.lock` names a process that is no longer
    /// running, its `.staging` folder and a slot it moved in but never activated are removed,
    /// and [`Slots::recovered`] says so. An install that is still running is left alone.
    pub fn open(state_dir: &Path) -> Result<Slots, ImageError> {
        let slots_dir = state_dir.join(SLOTS_DIR);
        fs::create_dir_all(&slots_dir).map_err(io_error(&slots_dir, "create the slots folder"))?;
        let mut slots = Slots {
            state_dir: state_dir.to_path_buf(),
            recovered: Vec::new(),
        };
        slots.recover()?;
        Ok(slots)
    }

    /// The folder of one slot.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.state_dir.join(SLOTS_DIR).join(slot.name())
    }

    /// The slot `active` names, if any.
    pub fn active(&self) -> Result<Option<Slot>, ImageError> {
        read_pointer(&self.state_dir.join(ACTIVE_POINTER))
    }

    /// The slot `previous` names, if any.
    pub fn previous(&self) -> Result<Option<Slot>, ImageError> {
        read_pointer(&self.state_dir.join(PREVIOUS_POINTER))
    }

    /// The slot an install goes into: the one that is not active (`a` on a fresh box).
    pub fn idle(&self) -> Result<Slot, ImageError> {
        Ok(self.active()?.map_or(Slot::A, Slot::other))
    }

    /// A slot's `status.toml`; `None` when the slot is empty.
    pub fn status(&self, slot: Slot) -> Result<Option<SlotStatus>, ImageError> {
        read_status(&self.slot_dir(slot))
    }

    /// Both slots, with their status and which pointer names them.
    pub fn list(&self) -> Result<Vec<SlotView>, ImageError> {
        let active = self.active()?;
        let previous = self.previous()?;
        Slot::ALL
            .iter()
            .map(|&slot| {
                Ok(SlotView {
                    slot,
                    active: active == Some(slot),
                    previous: previous == Some(slot),
                    status: self.status(slot)?,
                })
            })
            .collect()
    }

    /// The active slot, its `image.bsimg` and its status; `None` when nothing is installed.
    /// An `active` pointer naming an empty slot is an error.
    pub fn active_image(&self) -> Result<Option<(Slot, PathBuf, SlotStatus)>, ImageError> {
        let Some(slot) = self.active()? else {
            return Ok(None);
        };
        let dir = self.slot_dir(slot);
        let status = self.status(slot)?.ok_or_else(|| {
            slot_error(
                &dir,
                format!(
                    "`active` names slot {slot} but the slot holds no installed image; install \
                     one with `bedsight image install`, or roll back"
                ),
            )
        })?;
        Ok(Some((slot, dir.join(SLOT_IMAGE_FILE), status)))
    }

    /// Which image is active (slot and manifest sha256), read from the pointer and the slot's
    /// status: two small files, cheap enough to call between layers. See [`active_generation`].
    pub fn active_generation(&self) -> Result<Option<ActiveGeneration>, ImageError> {
        active_generation(&self.state_dir)
    }

    /// Installs a verified model image into the idle slot and activates it:
    /// 1. takes `slots/install.lock` (refused while another install runs);
    /// 2. copies the archive to `slots/<idle>.staging/image.bsimg`, opens the copy again (every
    ///    sha256 checked) and checks it is the same image, and unpacks its files next to it;
    /// 3. calls `selftest` with the staged archive and the image (the appliance loads the graph
    ///    there with the backend the box runs, which also builds TensorRT's engine cache, and
    ///    runs the golden sample); an error or an agreement below [`SELFTEST_MIN_AGREEMENT`]
    ///    refuses the image;
    /// 4. writes `status.toml`, moves the staging folder into place as the idle slot, sets
    ///    `previous` to the slot that was active and switches `active` to the new slot.
    ///
    /// The caller checks the signature (and whether an unsigned image is allowed) and passes the
    /// signer's name. On any error before step 4 the active slot, the pointers and the previous
    /// image are untouched and the staging folder is removed.
    pub fn install<F>(
        &mut self,
        image: &ModelImage,
        signed_by: Option<&str>,
        selftest: F,
    ) -> Result<InstallReport, ImageError>
    where
        F: FnOnce(&Path, &ModelImage) -> Result<SelfTestOutcome, String>,
    {
        self.recover()?;
        if image.selftest().is_none() {
            return Err(ImageError::SelfTest {
                path: image.path.clone(),
                problem: "the image holds no self-test sample (selftest/input.png and \
                          selftest/expected_mask.png); pack it with --selftest-input and \
                          --selftest-mask"
                    .to_string(),
            });
        }
        let active = self.active()?;
        let slot = active.map_or(Slot::A, Slot::other);
        let lock_path = self.slots_dir().join(INSTALL_LOCK);
        let lock = InstallLock {
            slot,
            pid: std::process::id(),
            started_at: rfc3339_now(),
        };
        write_new_synced(
            &lock_path,
            toml::to_string(&lock).expect("the install lock serializes").as_bytes(),
        )
        .map_err(|error| match error.kind() {
            io::ErrorKind::AlreadyExists => {
                let holder = fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|text| toml::from_str::<InstallLock>(&text).ok())
                    .map_or("a process".to_string(), |lock| format!("pid {}", lock.pid));
                slot_error(
                    &lock_path,
                    format!(
                        "another install is running ({holder} holds install.lock); wait for it \
                         to finish (remove the lock only if that process is not a bedsight \
                         install)"
                    ),
                )
            }
            _ => io_error(&lock_path, "take the install lock")(error),
        })?;
        sync_dir(&self.slots_dir())?;

        let staging = self.staging_dir(slot);
        let result = self.stage_and_activate(image, signed_by, selftest, slot, active, &staging);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        // The lock goes last: a crash before this leaves it for recovery, which then finds a
        // consistent state (the old active slot, or the new one).
        let removed = fs::remove_file(&lock_path).map_err(io_error(&lock_path, "remove the install lock"));
        let _ = sync_dir(&self.slots_dir());
        let report = result?;
        removed?;
        Ok(report)
    }

    fn stage_and_activate<F>(
        &mut self,
        image: &ModelImage,
        signed_by: Option<&str>,
        selftest: F,
        slot: Slot,
        active: Option<Slot>,
        staging: &Path,
    ) -> Result<InstallReport, ImageError>
    where
        F: FnOnce(&Path, &ModelImage) -> Result<SelfTestOutcome, String>,
    {
        if staging.exists() {
            fs::remove_dir_all(staging).map_err(io_error(staging, "remove an old staging folder"))?;
        }
        fs::create_dir_all(staging).map_err(io_error(staging, "create the staging folder"))?;

        // The archive, copied and read back: what is installed is exactly what was verified.
        let staged_image = staging.join(SLOT_IMAGE_FILE);
        copy_synced(&image.path, &staged_image)?;
        let copy = ModelImage::open(&staged_image)?;
        if copy.manifest_bytes != image.manifest_bytes || copy.signature != image.signature {
            return Err(slot_error(
                &staged_image,
                format!(
                    "the copy of {} differs from the image that was verified (was it replaced \
                     while installing?); install it again",
                    image.path.display()
                ),
            ));
        }
        let mut unpacked: Vec<(&str, &[u8])> = vec![(ENTRY_MANIFEST, &copy.manifest_bytes)];
        unpacked.extend(copy.files.iter().map(|(name, bytes)| (name.as_str(), bytes.as_slice())));
        let signature_bytes = copy.signature.map(|signature| signature.to_bytes());
        if let Some(bytes) = &signature_bytes {
            unpacked.push((ENTRY_SIGNATURE, bytes));
        }
        for (name, bytes) in unpacked {
            // Names come from the manifest's [files] table, which admits only the fixed entry
            // names of the format: no absolute paths, no "..".
            let path = staging.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_error(parent, "create a folder in the slot"))?;
                sync_dir(parent)?;
            }
            write_new_synced(&path, bytes).map_err(io_error(&path, "unpack the model image"))?;
        }
        sync_dir(staging)?;

        let outcome = selftest(&staged_image, &copy).map_err(|problem| ImageError::SelfTest {
            path: image.path.clone(),
            problem,
        })?;
        if let Some(problem) = outcome.failure() {
            return Err(ImageError::SelfTest {
                path: image.path.clone(),
                problem,
            });
        }
        let status = SlotStatus {
            name: copy.manifest.name.clone(),
            version: copy.manifest.version.clone(),
            manifest_sha256: copy.manifest_sha256(),
            installed_at: rfc3339_now(),
            selftest_agreement: outcome.agreement,
            selftest_pixels: outcome.pixels,
            backend: outcome.backend,
            graph: outcome.graph,
            selftest_class_iou: outcome.class_iou,
            signed_by: signed_by.map(str::to_string),
        };
        let status_path = staging.join(SLOT_STATUS_FILE);
        let status_text = toml::to_string(&status).expect("a slot status serializes");
        write_new_synced(&status_path, status_text.as_bytes())
            .map_err(io_error(&status_path, "write the slot status"))?;
        sync_dir(staging)?;

        // Activation. The idle slot may hold the previous image: `previous` stops naming it
        // before it is replaced, so no pointer ever names a slot that is being changed.
        if self.previous()? == Some(slot) {
            write_pointer(&self.state_dir, PREVIOUS_POINTER, None)?;
        }
        let slot_dir = self.slot_dir(slot);
        let retired = self.slots_dir().join(format!("{slot}.old"));
        if retired.exists() {
            fs::remove_dir_all(&retired).map_err(io_error(&retired, "remove a retired slot"))?;
        }
        if slot_dir.exists() {
            fs::rename(&slot_dir, &retired).map_err(io_error(&slot_dir, "retire the old slot"))?;
        }
        fs::rename(staging, &slot_dir).map_err(io_error(&slot_dir, "move the staged slot into place"))?;
        sync_dir(&self.slots_dir())?;
        if let Some(active) = active {
            write_pointer(&self.state_dir, PREVIOUS_POINTER, Some(active))?;
        }
        write_pointer(&self.state_dir, ACTIVE_POINTER, Some(slot))?;
        let _ = fs::remove_dir_all(&retired);
        Ok(InstallReport {
            slot,
            previous: active,
            status,
        })
    }

    /// Switches `active` back to `previous` (and `previous` to what was active). Returns (now
    /// active, was active). Refused when there is no previous slot holding an installed image,
    /// or while an install runs.
    pub fn rollback(&mut self) -> Result<(Slot, Slot), ImageError> {
        self.recover()?;
        let lock_path = self.slots_dir().join(INSTALL_LOCK);
        if lock_path.exists() {
            return Err(slot_error(
                &lock_path,
                "an install is running; roll back after it has finished".to_string(),
            ));
        }
        let Some(active) = self.active()? else {
            return Err(slot_error(
                &self.state_dir,
                "no model image is installed, so there is nothing to roll back".to_string(),
            ));
        };
        let previous = match self.previous()? {
            Some(previous) if previous != active => previous,
            _ => {
                return Err(slot_error(
                    &self.state_dir,
                    format!(
                        "there is no previous model image to roll back to (slot {active} is \
                         active and no earlier install is kept)"
                    ),
                ))
            }
        };
        match self.status(previous)? {
            Some(status) if status.selftest_passed() => {}
            _ => {
                return Err(slot_error(
                    &self.slot_dir(previous),
                    format!(
                        "slot {previous}, the previous one, holds no self-tested image; cannot \
                         roll back to it"
                    ),
                ))
            }
        }
        // A crash between the two writes leaves active = previous = the rolled-back-to slot,
        // which recovery tidies (previous removed): never a pointer to a bad slot.
        write_pointer(&self.state_dir, ACTIVE_POINTER, Some(previous))?;
        write_pointer(&self.state_dir, PREVIOUS_POINTER, Some(active))?;
        Ok((previous, active))
    }

    fn slots_dir(&self) -> PathBuf {
        self.state_dir.join(SLOTS_DIR)
    }

    fn staging_dir(&self, slot: Slot) -> PathBuf {
        self.slots_dir().join(format!("{slot}.staging"))
    }

    /// Cleans up after an install whose process is gone. Leaves a running install alone.
    fn recover(&mut self) -> Result<(), ImageError> {
        let slots_dir = self.slots_dir();
        let lock_path = slots_dir.join(INSTALL_LOCK);
        let lock = match fs::read_to_string(&lock_path) {
            Ok(text) => Some(toml::from_str::<InstallLock>(&text).ok()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error(&lock_path, "read the install lock")(error)),
        };
        if let Some(Some(lock)) = &lock {
            if lock.pid != std::process::id() && process_is_running(lock.pid) {
                return Ok(());
            }
        }
        let active = self.active()?;
        let mut changed = false;
        for slot in Slot::ALL {
            for leftover in [self.staging_dir(slot), slots_dir.join(format!("{slot}.old"))] {
                if leftover.exists() {
                    fs::remove_dir_all(&leftover)
                        .map_err(io_error(&leftover, "remove what an interrupted install left"))?;
                    self.recovered.push(format!(
                        "removed {}, left by an install that did not finish",
                        leftover.display()
                    ));
                    changed = true;
                }
            }
        }
        if let Some(lock) = lock {
            let what = match &lock {
                Some(lock) => format!(
                    "an install into slot {} (pid {}, started {}) did not finish",
                    lock.slot, lock.pid, lock.started_at
                ),
                None => "an install did not finish (its lock file is unreadable)".to_string(),
            };
            // A slot the interrupted install moved into place but never activated is removed,
            // unless `previous` names it (then it is the untouched previous image).
            if let Some(lock) = &lock {
                let dir = self.slot_dir(lock.slot);
                if active != Some(lock.slot) && self.previous()? != Some(lock.slot) && dir.exists() {
                    fs::remove_dir_all(&dir).map_err(io_error(&dir, "remove a slot that was never activated"))?;
                    self.recovered
                        .push(format!("removed slot {}, installed but never activated", lock.slot));
                }
            }
            fs::remove_file(&lock_path).map_err(io_error(&lock_path, "remove a stale install lock"))?;
            let active_text = active.map_or("no slot".to_string(), |slot| format!("slot {slot}"));
            self.recovered
                .push(format!("{what}; the active model ({active_text}) is unchanged"));
            changed = true;
        }
        // `previous` naming the active slot (a rollback cut short) or an empty slot is dropped.
        if let Some(previous) = self.previous()? {
            if active == Some(previous) || self.status(previous)?.is_none() {
                write_pointer(&self.state_dir, PREVIOUS_POINTER, None)?;
                self.recovered.push(format!(
                    "`previous` named slot {previous}, which cannot be rolled back to; removed it"
                ));
                changed = true;
            }
        }
        if changed {
            sync_dir(&slots_dir)?;
        }
        Ok(())
    }
}

/// Which image is active under `state_dir`: the slot `active` names and the manifest sha256 in
/// its `status.toml`. Reads two small files and changes nothing (no recovery), so a running
/// loop can call it between layers and reload when the answer changes. `None` when no image
/// is installed.
pub fn active_generation(state_dir: &Path) -> Result<Option<ActiveGeneration>, ImageError> {
    let Some(slot) = read_pointer(&state_dir.join(ACTIVE_POINTER))? else {
        return Ok(None);
    };
    let dir = state_dir.join(SLOTS_DIR).join(slot.name());
    let status = read_status(&dir)?.ok_or_else(|| {
        slot_error(
            &dir,
            format!("`active` names slot {slot} but the slot holds no installed image"),
        )
    })?;
    Ok(Some(ActiveGeneration {
        slot,
        manifest_sha256: status.manifest_sha256,
    }))
}

fn read_pointer(path: &Path) -> Result<Option<Slot>, ImageError> {
    match fs::read_to_string(path) {
        Ok(text) => Slot::parse(&text).map(Some).ok_or_else(|| {
            slot_error(
                path,
                format!("holds {:?}, not a slot name (\"a\" or \"b\")", text.trim()),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(path, "read the slot pointer")(error)),
    }
}

/// Points `STATE/<name>` at `slot` (or removes it): temporary file, fsync, rename, fsync folder.
fn write_pointer(state_dir: &Path, name: &str, slot: Option<Slot>) -> Result<(), ImageError> {
    let path = state_dir.join(name);
    match slot {
        Some(slot) => {
            let temp = state_dir.join(format!(".{name}.tmp"));
            let _ = fs::remove_file(&temp);
            write_new_synced(&temp, format!("{slot}\n").as_bytes())
                .map_err(io_error(&temp, "write the slot pointer"))?;
            fs::rename(&temp, &path).map_err(io_error(&path, "switch the slot pointer"))?;
        }
        None => match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&path, "remove the slot pointer")(error)),
        },
    }
    sync_dir(state_dir)
}

fn read_status(slot_dir: &Path) -> Result<Option<SlotStatus>, ImageError> {
    let path = slot_dir.join(SLOT_STATUS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&path, "read the slot status")(error)),
    };
    toml::from_str(&text).map(Some).map_err(|error| {
        slot_error(
            &path,
            format!(
                "is not a slot status ({}); install the image again",
                error.to_string().trim()
            ),
        )
    })
}

fn write_new_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::copy(from, to).map_err(io_error(to, &format!("copy {} into the slot", from.display())))?;
    File::open(to)
        .and_then(|file| file.sync_all())
        .map_err(io_error(to, "sync the copied model image"))
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir, "sync the folder"))
}

/// Whether a process with this id exists (Linux: `/proc/<pid>`). Where there is no `/proc`, no
/// process is taken to be running, so a stale lock never blocks the box.
fn process_is_running(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new("/proc").join(pid.to_string()).exists()
}

fn slot_error(path: &Path, problem: String) -> ImageError {
    ImageError::Slot {
        path: path.to_path_buf(),
        problem,
    }
}

/// Now, as RFC 3339 UTC to the second.
fn rfc3339_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    rfc3339(seconds)
}

/// Unix seconds → "YYYY-MM-DDTHH:MM:SSZ" (proleptic Gregorian calendar, Howard Hinnant's
/// days-to-civil algorithm).
fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_650_000), "2026-11-25T23:40:00Z");
    }

    #[test]
    fn a_self_test_that_fails_on_pixels_and_on_a_class_says_both() {
        let outcome = |agreement: f64, super_elevation_iou: f64| SelfTestOutcome {
            agreement,
            pixels: 1_048_576,
            backend: "ort (CPU)".into(),
            graph: "int8".into(),
            class_iou: BTreeMap::from([
                ("streaking".to_string(), 0.9),
                ("super-elevation".to_string(), super_elevation_iou),
            ]),
        };
        assert_eq!(outcome(0.995, 0.85).failure(), None);
        assert_eq!(
            outcome(0.9894, 0.0).failure().unwrap(),
            "the golden input gave a mask that agrees with selftest/expected_mask.png on 98.94% of 1048576 pixels, \
             at least 99% is required; the golden input's defects differ from selftest/expected_mask.png: \
             super-elevation IoU 0.00 (at least 0.80 required per defect class)"
        );
        assert_eq!(
            outcome(0.995, 0.5).failure().unwrap(),
            "the golden input's defects differ from selftest/expected_mask.png: super-elevation IoU 0.50 (at least 0.80 required per defect class)"
        );
    }

    #[test]
    fn slot_names() {
        assert_eq!(Slot::parse(" a\n"), Some(Slot::A));
        assert_eq!(Slot::parse("c"), None);
        assert_eq!(Slot::A.other(), Slot::B);
    }
}
