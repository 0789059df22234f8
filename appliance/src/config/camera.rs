//! `[camera]`: where `bedsight run` gets its frames (a replay folder or a V4L2 device).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

/// `[camera]`: where frames come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// `replay`: a folder of images, in name order, one per trigger.
    pub kind: String,
    /// `replay`: the folder (relative paths are taken from the configuration file's folder).
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// `replay`: start again from the first image after the last one (else: FAULT, no frames).
    #[serde(default)]
    pub repeat: bool,
    /// `v4l2`: the device, e.g. `/dev/video0` or a stable udev name (board/).
    #[serde(default)]
    pub device: Option<String>,
    /// `v4l2`: frame size in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// `v4l2`: GREY, Y16, YUYV or MJPEG.
    #[serde(default)]
    pub pixel_format: Option<String>,
    /// `v4l2`: frames averaged per layer.
    #[serde(default = "default_frames_averaged")]
    pub frames_averaged: u32,
    /// `v4l2`: exposure (V4L2 absolute exposure, 100 µs units) where the driver offers it.
    #[serde(default)]
    pub exposure: Option<i64>,
    /// `v4l2`: gain where the driver offers it.
    #[serde(default)]
    pub gain: Option<i64>,
    /// `v4l2`: driver buffers; as many stale frames are dropped before the kept ones.
    #[serde(default = "default_camera_buffers")]
    pub buffers: u32,
}

fn default_frames_averaged() -> u32 {
    4
}

fn default_camera_buffers() -> u32 {
    2
}

impl CameraConfig {
    /// The hal's settings for a `v4l2` camera (checked at load).
    pub fn v4l2_settings(&self) -> Option<hal::v4l2::V4l2Settings> {
        Some(hal::v4l2::V4l2Settings {
            device: self.device.clone()?,
            width: self.width?,
            height: self.height?,
            format: hal::v4l2::PixelFormat::parse(self.pixel_format.as_deref()?)?,
            frames_averaged: self.frames_averaged,
            exposure: self.exposure,
            gain: self.gain,
            buffers: self.buffers,
            capture_timeout: std::time::Duration::from_secs(1),
        })
    }
}

impl CameraConfig {
    pub(super) fn check(&self) -> Result<()> {
        let v4l2_keys = [
            ("device", self.device.is_some()),
            ("width", self.width.is_some()),
            ("height", self.height.is_some()),
            ("pixel_format", self.pixel_format.is_some()),
            ("exposure", self.exposure.is_some()),
            ("gain", self.gain.is_some()),
        ];
        match self.kind.as_str() {
            "replay" => {
                if self.folder.is_none() {
                    bail!("camera.folder is missing: a replay camera needs the folder of images to replay");
                }
                if let Some((key, _)) = v4l2_keys.iter().find(|(_, set)| *set) {
                    bail!("camera.{key} is for kind = \"v4l2\", not \"replay\"");
                }
            }
            "v4l2" => {
                for (key, set) in &v4l2_keys[..4] {
                    if !set {
                        bail!("camera.{key} is missing: a v4l2 camera needs device, width, height and pixel_format");
                    }
                }
                if self.folder.is_some() || self.repeat {
                    bail!("camera.folder and camera.repeat are for kind = \"replay\", not \"v4l2\"");
                }
                let format = self.pixel_format.as_deref().unwrap_or_default();
                if hal::v4l2::PixelFormat::parse(format).is_none() {
                    bail!("camera.pixel_format must be GREY, Y16, YUYV or MJPEG, got {format:?}");
                }
                for (key, value) in [("width", self.width), ("height", self.height)] {
                    let value = value.unwrap_or_default();
                    if !(16..=16_384).contains(&value) {
                        bail!("camera.{key} must be in 16..16384 pixels, got {value}");
                    }
                }
                if !(1..=64).contains(&self.frames_averaged) {
                    bail!("camera.frames_averaged must be in 1..64, got {}", self.frames_averaged);
                }
                if !(1..=16).contains(&self.buffers) {
                    bail!("camera.buffers must be in 1..16, got {}", self.buffers);
                }
            }
            other => bail!("camera.kind must be \"replay\" or \"v4l2\", got {other:?}"),
        }
        Ok(())
    }
}
