//! Opening what `bedsight run` talks to: the camera, the GPIO lines, the trigger source.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hal::{Camera, ReplayCamera};

use super::GpioPorts;
use crate::config::{CameraConfig, TriggerConfig};

/// The GPIO driver the configuration names: its outputs, and its inputs when any are wired.
pub(super) fn open_gpio(driver: &str, plan: &hal::gpio::GpioPlan) -> Result<GpioPorts> {
    match driver {
        #[cfg(feature = "rppal")]
        "rppal" => {
            let outputs = hal::gpio::rpi::RppalOutputs::open(plan)?;
            let inputs = if plan.inputs.is_empty() { None } else { Some(Box::new(hal::gpio::rpi::RppalInputs::open(plan)?) as Box<dyn hal::gpio::GpioInputPort>) };
            Ok((Box::new(outputs), inputs))
        }
        #[cfg(not(feature = "rppal"))]
        "rppal" => bail!("this bedsight was built without Raspberry Pi GPIO: build it with --features rppal, or use driver = \"cdev\""),
        _ => {
            let outputs = hal::gpio::cdev::CdevOutputs::open(plan)?;
            let inputs = if plan.inputs.is_empty() { None } else { Some(Box::new(hal::gpio::cdev::CdevInputs::open(plan)?) as Box<dyn hal::gpio::GpioInputPort>) };
            Ok((Box::new(outputs), inputs))
        }
    }
}

pub(super) fn open_camera(camera: &CameraConfig, base_dir: &Path) -> Result<Box<dyn Camera + Send>> {
    match camera.kind.as_str() {
        "replay" => {
            let folder = camera.folder.as_ref().expect("checked at load");
            let folder: PathBuf = if folder.is_absolute() {
                folder.clone()
            } else {
                base_dir.join(folder)
            };
            let replay = ReplayCamera::from_folder(&folder).map_err(|e| anyhow!("camera.folder: {e}"))?;
            Ok(Box::new(replay.repeating(camera.repeat)))
        }
        "v4l2" => {
            let settings = camera.v4l2_settings().expect("checked at load");
            let v4l2 = hal::v4l2::V4l2Camera::open(settings).map_err(|e| anyhow!("camera.device: {e}"))?;
            Ok(Box::new(v4l2))
        }
        other => bail!("camera.kind {other:?} is not available"),
    }
}

/// Starts the trigger source that is not a PLC protocol (the timer); returns its description.
pub(super) fn start_trigger(
    trigger: &TriggerConfig,
    gate: &hal::TriggerGate,
    stop: &Arc<AtomicBool>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> String {
    match trigger.kind.as_str() {
        "timer" => {
            let interval = Duration::from_millis(trigger.interval_ms.expect("checked at load"));
            threads.push(hal::trigger::spawn_timer(gate.clone(), interval, stop.clone()));
            format!("timer every {} ms", interval.as_millis())
        }
        "modbus" => "Modbus command register 102".into(),
        "serial" => "LAYER lines on the serial line".into(),
        "gpio" => "the GPIO LAYER_READY line".into(),
        "video" => {
            let video = trigger.video_settings();
            format!(
                "the video (recoater: change > {}, settled: change < {} for {} ms)",
                video.pass_threshold,
                video.settle_threshold,
                video.hold.as_millis()
            )
        }
        other => other.to_string(),
    }
}
