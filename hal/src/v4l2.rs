//! The real camera: V4L2 through the `v4l` crate (memory-mapped streaming).
//!
//! Per layer: drop the frames the driver buffered before the trigger (the stale-frame guard),
//! then average `frames_averaged` fresh frames to cut sensor noise. A device that stops
//! answering gives an error for that layer within `capture_timeout` (the loop says FAULT), is
//! closed, and is reopened on a later layer with exponential back-off; no restart needed.
//!
//! The pure parts (pixel-format conversion, averaging, back-off) are tested on synthetic
//! buffers without a device, and the reopening on a stand-in for the driver (`Driver`).

use std::time::{Duration, Instant};

use image::{DynamicImage, GrayImage, ImageBuffer, Luma};

use crate::camera::{Camera, CameraError, Frame};

/// The pixel formats a bed camera may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit grey (industrial mono cameras).
    Grey,
    /// 16-bit grey, little-endian.
    Y16,
    /// 4:2:2 YUV, Y0 U Y1 V; only the luma is kept.
    Yuyv,
    /// Motion JPEG: each frame a JPEG image.
    Mjpeg,
}

impl PixelFormat {
    /// Parses the configuration's name (`GREY`, `Y16`, `YUYV`, `MJPEG`), case-insensitively.
    pub fn parse(word: &str) -> Option<PixelFormat> {
        match word.to_ascii_uppercase().as_str() {
            "GREY" | "GRAY" => Some(PixelFormat::Grey),
            "Y16" => Some(PixelFormat::Y16),
            "YUYV" => Some(PixelFormat::Yuyv),
            "MJPEG" | "MJPG" => Some(PixelFormat::Mjpeg),
            _ => None,
        }
    }

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Y16 => *b"Y16 ",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    /// Bytes per pixel in a row of an uncompressed format (MJPEG: none).
    fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Grey => Some(1),
            PixelFormat::Y16 | PixelFormat::Yuyv => Some(2),
            PixelFormat::Mjpeg => None,
        }
    }
}

/// Sums frames pixel by pixel and gives their mean; its buffer is allocated once for a frame
/// size and reused for every layer.
#[derive(Debug, Clone)]
pub struct FrameAverager {
    width: u32,
    height: u32,
    sums: Vec<u32>,
    frames: u32,
    /// The frames are 16 bit (Y16): the mean is too.
    deep: bool,
}

impl FrameAverager {
    pub fn new(width: u32, height: u32) -> FrameAverager {
        FrameAverager {
            width,
            height,
            sums: vec![0; width as usize * height as usize],
            frames: 0,
            deep: false,
        }
    }

    /// Forgets the frames summed so far.
    pub fn reset(&mut self) {
        self.sums.iter_mut().for_each(|sum| *sum = 0);
        self.frames = 0;
        self.deep = false;
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Adds one raw frame of `format` with rows `stride` bytes apart (0: packed).
    pub fn add(&mut self, format: PixelFormat, stride: usize, bytes: &[u8]) -> Result<(), String> {
        let (width, height) = (self.width as usize, self.height as usize);
        if self.frames >= u32::MAX / u16::MAX as u32 {
            return Err("too many frames to average".into());
        }
        let Some(bytes_per_pixel) = format.bytes_per_pixel() else {
            return self.add_mjpeg(bytes);
        };
        let row_bytes = width * bytes_per_pixel;
        let stride = if stride == 0 { row_bytes } else { stride };
        if stride < row_bytes {
            return Err(format!(
                "row stride {stride} bytes is shorter than a {width}-pixel {format:?} row ({row_bytes} bytes)"
            ));
        }
        let needed = stride * (height.max(1) - 1) + row_bytes;
        if bytes.len() < needed {
            return Err(format!(
                "{format:?} frame of {width}x{height} needs {needed} bytes, got {}",
                bytes.len()
            ));
        }
        for (y, sums) in self.sums.chunks_exact_mut(width).enumerate() {
            let row = &bytes[y * stride..y * stride + row_bytes];
            match format {
                PixelFormat::Grey => sums.iter_mut().zip(row).for_each(|(sum, &v)| *sum += v as u32),
                PixelFormat::Y16 => sums
                    .iter_mut()
                    .zip(row.chunks_exact(2))
                    .for_each(|(sum, v)| *sum += u16::from_le_bytes([v[0], v[1]]) as u32),
                // Y0 U Y1 V: the luma is every other byte.
                PixelFormat::Yuyv => sums
                    .iter_mut()
                    .zip(row.iter().step_by(2))
                    .for_each(|(sum, &v)| *sum += v as u32),
                PixelFormat::Mjpeg => unreachable!("handled above"),
            }
        }
        self.deep = format == PixelFormat::Y16;
        self.frames += 1;
        Ok(())
    }

    fn add_mjpeg(&mut self, bytes: &[u8]) -> Result<(), String> {
        let decoded = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
            .map_err(|e| format!("MJPEG frame is not a readable JPEG: {e}"))?;
        if decoded.width() != self.width || decoded.height() != self.height {
            return Err(format!(
                "MJPEG frame is {}x{}, expected {}x{}",
                decoded.width(),
                decoded.height(),
                self.width,
                self.height
            ));
        }
        let luma = decoded.to_luma8();
        self.sums
            .iter_mut()
            .zip(luma.as_raw())
            .for_each(|(sum, &v)| *sum += v as u32);
        self.deep = false;
        self.frames += 1;
        Ok(())
    }

    /// The mean of the frames added (rounded), 8 or 16 bit as they came.
    pub fn mean(&self) -> Option<DynamicImage> {
        if self.frames == 0 {
            return None;
        }
        let frames = self.frames;
        let mean = |sum: u32| (sum + frames / 2) / frames;
        Some(if self.deep {
            let pixels: Vec<u16> = self.sums.iter().map(|&sum| mean(sum) as u16).collect();
            DynamicImage::ImageLuma16(
                ImageBuffer::<Luma<u16>, _>::from_raw(self.width, self.height, pixels).expect("sized at new"),
            )
        } else {
            let pixels: Vec<u8> = self.sums.iter().map(|&sum| mean(sum) as u8).collect();
            DynamicImage::ImageLuma8(GrayImage::from_raw(self.width, self.height, pixels).expect("sized at new"))
        })
    }
}

/// When to try a vanished device again: `initial`, doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    delay: Duration,
    next_try: Option<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            delay: initial,
            next_try: None,
        }
    }

    /// Whether a try is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|next| now >= next)
    }

    /// A try failed at `now`: the next one waits longer. Returns the wait.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.delay;
        self.next_try = Some(now + wait);
        self.delay = (self.delay * 2).min(self.max);
        wait
    }

    pub fn succeeded(&mut self) {
        self.delay = self.initial;
        self.next_try = None;
    }

    /// How long until the next try.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.next_try
            .map(|next| next.saturating_duration_since(now))
            .unwrap_or_default()
    }
}

/// How to open and drive the camera: plain data, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Settings {
    /// `/dev/video0`, or a stable udev name such as `/dev/bedsight-camera`.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Frames averaged per layer (1: none).
    pub frames_averaged: u32,
    /// Exposure (V4L2_CID_EXPOSURE_ABSOLUTE, 100 µs units) where the driver offers it.
    pub exposure: Option<i64>,
    /// Gain (V4L2_CID_GAIN) where the driver offers it.
    pub gain: Option<i64>,
    /// Driver buffers; the stale-frame guard drops this many frames before the kept ones.
    pub buffers: u32,
    /// A frame that does not come within this is a vanished camera.
    pub capture_timeout: Duration,
}

#[cfg(feature = "v4l2")]
mod device {
    use super::*;
    use v4l::buffer::Type;
    use v4l::io::traits::CaptureStream;
    use v4l::prelude::{Device, MmapStream};
    use v4l::video::Capture;
    use v4l::{Control, FourCC};

    /// V4L2 control ids (linux/v4l2-controls.h).
    const CID_EXPOSURE_AUTO: u32 = 0x009a_0901;
    const CID_EXPOSURE_ABSOLUTE: u32 = 0x009a_0902;
    const CID_GAIN: u32 = 0x0098_0913;
    /// V4L2_EXPOSURE_MANUAL.
    const EXPOSURE_MANUAL: i64 = 1;

    pub struct OpenCamera {
        // The stream holds its own handle on the device; keep the device for controls.
        _device: Device,
        stream: MmapStream<'static>,
        pub(super) stride: usize,
    }

    pub(super) fn open(settings: &V4l2Settings) -> Result<OpenCamera, String> {
        let device = Device::with_path(&settings.device).map_err(|e| format!("cannot open: {e}"))?;
        let mut format = device.format().map_err(|e| format!("cannot read the format: {e}"))?;
        format.width = settings.width;
        format.height = settings.height;
        format.fourcc = FourCC::new(&settings.format.fourcc());
        let actual = device
            .set_format(&format)
            .map_err(|e| format!("cannot set the format: {e}"))?;
        if actual.width != settings.width
            || actual.height != settings.height
            || actual.fourcc.repr != settings.format.fourcc()
        {
            return Err(format!(
                "asked for {}x{} {}, the driver offers {}x{} {}",
                settings.width,
                settings.height,
                String::from_utf8_lossy(&settings.format.fourcc()),
                actual.width,
                actual.height,
                String::from_utf8_lossy(&actual.fourcc.repr)
            ));
        }
        if let Some(exposure) = settings.exposure {
            device
                .set_control(Control {
                    id: CID_EXPOSURE_AUTO,
                    value: v4l::control::Value::Integer(EXPOSURE_MANUAL),
                })
                .ok();
            device
                .set_control(Control {
                    id: CID_EXPOSURE_ABSOLUTE,
                    value: v4l::control::Value::Integer(exposure),
                })
                .map_err(|e| format!("the driver refuses exposure {exposure}: {e}"))?;
        }
        if let Some(gain) = settings.gain {
            device
                .set_control(Control {
                    id: CID_GAIN,
                    value: v4l::control::Value::Integer(gain),
                })
                .map_err(|e| format!("the driver refuses gain {gain}: {e}"))?;
        }
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, settings.buffers.max(1))
            .map_err(|e| format!("cannot map buffers: {e}"))?;
        stream.set_timeout(settings.capture_timeout);
        Ok(OpenCamera {
            _device: device,
            stream,
            stride: actual.stride as usize,
        })
    }

    /// Drops `stale` frames, then adds `fresh` frames to the averager.
    pub(super) fn grab(
        camera: &mut OpenCamera,
        format: PixelFormat,
        stale: u32,
        fresh: u32,
        averager: &mut FrameAverager,
    ) -> Result<(), String> {
        for _ in 0..stale {
            camera.stream.next().map_err(|e| format!("no frame: {e}"))?;
        }
        for _ in 0..fresh {
            let (bytes, meta) = camera.stream.next().map_err(|e| format!("no frame: {e}"))?;
            let used = (meta.bytesused as usize).min(bytes.len());
            let used = if used == 0 { bytes.len() } else { used };
            averager.add(format, camera.stride, &bytes[..used])?;
        }
        Ok(())
    }
}

/// What the camera asks of its device: open it, and grab frames from it into the averager.
/// `SystemV4l2` is the kernel's V4L2 through the `v4l` crate; tests stand in for it to play a
/// camera that vanishes and comes back.
pub trait Driver {
    type Open;
    fn open(&mut self, settings: &V4l2Settings) -> Result<Self::Open, String>;
    /// Drops `stale` frames, then adds `fresh` ones to the averager.
    fn grab(
        &mut self,
        camera: &mut Self::Open,
        settings: &V4l2Settings,
        stale: u32,
        fresh: u32,
        averager: &mut FrameAverager,
    ) -> Result<(), String>;
}

/// The kernel's V4L2 (hal feature `v4l2`; without it, every open fails saying so).
pub struct SystemV4l2;

#[cfg(feature = "v4l2")]
impl Driver for SystemV4l2 {
    type Open = device::OpenCamera;

    fn open(&mut self, settings: &V4l2Settings) -> Result<device::OpenCamera, String> {
        device::open(settings)
    }

    fn grab(
        &mut self,
        camera: &mut device::OpenCamera,
        settings: &V4l2Settings,
        stale: u32,
        fresh: u32,
        averager: &mut FrameAverager,
    ) -> Result<(), String> {
        device::grab(camera, settings.format, stale, fresh, averager)
    }
}

#[cfg(not(feature = "v4l2"))]
impl Driver for SystemV4l2 {
    type Open = ();

    fn open(&mut self, _: &V4l2Settings) -> Result<(), String> {
        Err("this build has no V4L2 support (hal feature v4l2)".into())
    }

    fn grab(&mut self, _: &mut (), _: &V4l2Settings, _: u32, _: u32, _: &mut FrameAverager) -> Result<(), String> {
        Err("this build has no V4L2 support (hal feature v4l2)".into())
    }
}

/// The V4L2 camera, with its reopen back-off.
pub struct V4l2Camera<D: Driver = SystemV4l2> {
    settings: V4l2Settings,
    driver: D,
    open: Option<D::Open>,
    backoff: Backoff,
    averager: FrameAverager,
}

impl V4l2Camera {
    /// Opens the device now, so a missing camera at start is one error naming it.
    pub fn open(settings: V4l2Settings) -> Result<V4l2Camera, CameraError> {
        V4l2Camera::with_driver(
            settings,
            SystemV4l2,
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        )
    }
}

impl<D: Driver> V4l2Camera<D> {
    /// The camera on `driver`, opened now, reopening after a failure as `backoff` allows.
    pub fn with_driver(settings: V4l2Settings, mut driver: D, backoff: Backoff) -> Result<V4l2Camera<D>, CameraError> {
        let open = driver.open(&settings).map_err(|reason| CameraError::Unreadable {
            source_name: settings.device.clone(),
            reason,
        })?;
        Ok(V4l2Camera {
            averager: FrameAverager::new(settings.width, settings.height),
            settings,
            driver,
            open: Some(open),
            backoff,
        })
    }

    /// Drops `stale` frames and averages `fresh` ones, reopening a vanished device first when
    /// the back-off allows.
    fn grab(&mut self, stale: u32, fresh: u32) -> Result<Frame, CameraError> {
        let now = Instant::now();
        let name = self.settings.device.clone();
        if self.open.is_none() {
            if !self.backoff.due(now) {
                return Err(CameraError::Unreadable {
                    source_name: name,
                    reason: format!(
                        "camera gone; next reopen in {:.1} s",
                        self.backoff.remaining(now).as_secs_f64()
                    ),
                });
            }
            match self.driver.open(&self.settings) {
                Ok(open) => {
                    self.backoff.succeeded();
                    self.open = Some(open);
                }
                Err(reason) => {
                    let wait = self.backoff.failed(now);
                    return Err(CameraError::Unreadable {
                        source_name: name,
                        reason: format!("reopen failed: {reason}; next try in {:.1} s", wait.as_secs_f64()),
                    });
                }
            }
        }
        let camera = self.open.as_mut().expect("opened above");
        self.averager.reset();
        let grabbed = self
            .driver
            .grab(camera, &self.settings, stale, fresh, &mut self.averager);
        if let Err(reason) = grabbed {
            // Close it; the next layer reopens (with back-off).
            self.open = None;
            let wait = self.backoff.failed(Instant::now());
            return Err(CameraError::Unreadable {
                source_name: name,
                reason: format!("{reason}; reopening in {:.1} s", wait.as_secs_f64()),
            });
        }
        let image = self.averager.mean().ok_or_else(|| CameraError::Unreadable {
            source_name: name.clone(),
            reason: "the driver gave no frame".into(),
        })?;
        Ok(Frame {
            image,
            source: format!("{} ({} frames averaged)", name, self.averager.frames()),
        })
    }
}

impl<D: Driver> Camera for V4l2Camera<D> {
    fn capture(&mut self) -> Result<Frame, CameraError> {
        self.grab(self.settings.buffers, self.settings.frames_averaged.max(1))
    }

    fn preview(&mut self) -> Result<Frame, CameraError> {
        self.grab(0, 1)
    }

    fn describe(&self) -> String {
        format!(
            "V4L2 {} {}x{} {}, {} frames averaged",
            self.settings.device,
            self.settings.width,
            self.settings.height,
            String::from_utf8_lossy(&self.settings.format.fourcc()).trim(),
            self.settings.frames_averaged
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_with_row_padding_is_read_row_by_row() {
        let mut averager = FrameAverager::new(3, 2);
        // Stride 4: one padding byte per row.
        averager.add(PixelFormat::Grey, 4, &[1, 2, 3, 99, 4, 5, 6]).unwrap();
        let mean = averager.mean().unwrap().into_luma8();
        assert_eq!(mean.as_raw(), &vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn y16_is_little_endian_and_stays_16_bit() {
        let mut averager = FrameAverager::new(2, 1);
        averager.add(PixelFormat::Y16, 0, &[0x34, 0x12, 0xFF, 0xFF]).unwrap();
        match averager.mean().unwrap() {
            DynamicImage::ImageLuma16(image) => assert_eq!(image.as_raw(), &vec![0x1234, 0xFFFF]),
            other => panic!("not 16 bit: {:?}", other.color()),
        }
    }

    #[test]
    fn yuyv_keeps_the_luma() {
        let mut averager = FrameAverager::new(4, 1);
        averager
            .add(PixelFormat::Yuyv, 0, &[10, 128, 20, 128, 30, 64, 40, 192])
            .unwrap();
        assert_eq!(averager.mean().unwrap().into_luma8().as_raw(), &vec![10, 20, 30, 40]);
    }

    #[test]
    fn mjpeg_frames_are_decoded_to_grey() {
        let mut jpeg = Vec::new();
        GrayImage::from_pixel(8, 8, Luma([120]))
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let mut averager = FrameAverager::new(8, 8);
        averager.add(PixelFormat::Mjpeg, 0, &jpeg).unwrap();
        let mean = averager.mean().unwrap().into_luma8();
        assert!(mean.pixels().all(|p| (p.0[0] as i32 - 120).abs() <= 2));
        let mut wrong_size = FrameAverager::new(4, 4);
        assert!(wrong_size
            .add(PixelFormat::Mjpeg, 0, &jpeg)
            .unwrap_err()
            .contains("8x8"));
        assert!(averager
            .add(PixelFormat::Mjpeg, 0, b"not a jpeg")
            .unwrap_err()
            .contains("not a readable JPEG"));
    }

    #[test]
    fn averaging_rounds_the_mean_and_reset_starts_over() {
        let mut averager = FrameAverager::new(2, 1);
        for frame in [[10u8, 0], [11, 255], [11, 0]] {
            averager.add(PixelFormat::Grey, 0, &frame).unwrap();
        }
        assert_eq!(averager.frames(), 3);
        // (10+11+11)/3 = 10.67 -> 11; 255/3 = 85.
        assert_eq!(averager.mean().unwrap().into_luma8().as_raw(), &vec![11, 85]);
        averager.reset();
        assert!(averager.mean().is_none());
    }

    #[test]
    fn short_buffers_are_refused_with_the_sizes() {
        let mut averager = FrameAverager::new(4, 4);
        let error = averager.add(PixelFormat::Y16, 0, &[0; 20]).unwrap_err();
        assert!(error.contains("needs 32 bytes, got 20"), "{error}");
        assert!(averager
            .add(PixelFormat::Grey, 2, &[0; 16])
            .unwrap_err()
            .contains("stride"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let start = Instant::now();
        assert!(backoff.due(start));
        assert_eq!(backoff.failed(start), Duration::from_millis(500));
        assert!(!backoff.due(start + Duration::from_millis(100)));
        assert!(backoff.due(start + Duration::from_millis(500)));
        assert_eq!(backoff.failed(start), Duration::from_secs(1));
        assert_eq!(backoff.failed(start), Duration::from_secs(2));
        assert_eq!(backoff.failed(start), Duration::from_secs(2));
        backoff.succeeded();
        assert!(backoff.due(start));
        assert_eq!(backoff.failed(start), Duration::from_millis(500));
    }

    #[test]
    fn pixel_format_names() {
        assert_eq!(PixelFormat::parse("grey"), Some(PixelFormat::Grey));
        assert_eq!(PixelFormat::parse("MJPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::Y16.fourcc(), *b"Y16 ");
        assert_eq!(PixelFormat::parse("NV12"), None);
    }

    /// A square 8-bit grey camera averaging 2 frames.
    fn grey_camera(device: &str, side: u32) -> V4l2Settings {
        V4l2Settings {
            device: device.into(),
            width: side,
            height: side,
            format: PixelFormat::Grey,
            frames_averaged: 2,
            exposure: None,
            gain: None,
            buffers: 2,
            capture_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_missing_device_is_named() {
        let error = V4l2Camera::open(grey_camera("/dev/bedsight-no-such-camera", 64))
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("/dev/bedsight-no-such-camera"), "{error}");
    }

    /// A camera on a cable: unplugged, a grab fails; plugged back, it opens again. Each open
    /// is a new handle numbered from 1, and each frame is grey at 10 x the handle's number.
    struct Cable {
        plugged: std::rc::Rc<std::cell::Cell<bool>>,
        opens: u8,
    }

    impl Driver for Cable {
        type Open = u8;

        fn open(&mut self, _: &V4l2Settings) -> Result<u8, String> {
            if !self.plugged.get() {
                return Err("No such device".into());
            }
            self.opens += 1;
            Ok(self.opens)
        }

        fn grab(
            &mut self,
            handle: &mut u8,
            settings: &V4l2Settings,
            _: u32,
            fresh: u32,
            averager: &mut FrameAverager,
        ) -> Result<(), String> {
            if !self.plugged.get() {
                return Err("no frame: No such device".into());
            }
            let frame = vec![10 * *handle; (settings.width * settings.height) as usize];
            for _ in 0..fresh {
                averager.add(settings.format, settings.width as usize, &frame)?;
            }
            Ok(())
        }
    }

    #[test]
    fn a_camera_unplugged_and_plugged_back_is_reopened_after_the_back_off() {
        let plugged = std::rc::Rc::new(std::cell::Cell::new(true));
        let settings = grey_camera("/dev/bedsight-camera", 4);
        let cable = Cable {
            plugged: plugged.clone(),
            opens: 0,
        };
        let backoff = Backoff::new(Duration::from_millis(40), Duration::from_millis(160));
        let mut camera = V4l2Camera::with_driver(settings, cable, backoff).unwrap();
        let value = |frame: Frame| frame.image.to_luma8().get_pixel(0, 0).0[0];
        assert_eq!(value(camera.capture().unwrap()), 10);

        plugged.set(false);
        let error = camera.capture().unwrap_err().to_string();
        assert!(
            error.contains("/dev/bedsight-camera") && error.contains("no frame: No such device; reopening in 0.0 s"),
            "{error}"
        );
        // before the back-off: no reopen tried
        let error = camera.capture().unwrap_err().to_string();
        assert!(error.contains("camera gone; next reopen in"), "{error}");
        // after it, still unplugged: the reopen fails and the wait doubles
        std::thread::sleep(Duration::from_millis(50));
        let error = camera.capture().unwrap_err().to_string();
        assert!(
            error.contains("reopen failed: No such device; next try in 0.1 s"),
            "{error}"
        );

        plugged.set(true);
        std::thread::sleep(Duration::from_millis(90));
        // a new handle (the second open): its frames
        assert_eq!(value(camera.capture().unwrap()), 20);
        assert_eq!(value(camera.preview().unwrap()), 20);
    }
}
