//! The video itself as the layer trigger, for bolt-on retrofits with no line from the printer:
//! watch the bed between layers, see the recoater pass (a large frame-to-frame change), then
//! wait for a settled bed (change below a threshold for a hold time) and call that the trigger.
//!
//! The change between two frames is the mean absolute difference of their grey levels on a
//! fixed coarse grid (`GRID` x `GRID` samples), so one preview frame costs a few thousand
//! operations and no allocation.

use std::time::{Duration, Instant};

use image::DynamicImage;

/// Samples per side of the grid the change is measured on.
pub const GRID: usize = 64;

/// When the recoater counts as passing and the bed as settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoTriggerSettings {
    /// Mean absolute grey-level change (0..255) between consecutive frames above which the
    /// recoater is passing.
    pub pass_threshold: f64,
    /// Change below which the bed is still.
    pub settle_threshold: f64,
    /// How long the bed must stay still after a pass.
    pub hold: Duration,
}

/// Where the detector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoPhase {
    /// Waiting for the recoater.
    Idle,
    /// The recoater passed; waiting for the bed to settle (since when it is still, if it is).
    Passing { still_since: Option<Instant> },
}

/// The recoat detector: feed it preview frames, it says when a layer is ready.
#[derive(Debug, Clone)]
pub struct RecoatDetector {
    settings: VideoTriggerSettings,
    previous: [u8; GRID * GRID],
    current: [u8; GRID * GRID],
    have_previous: bool,
    phase: VideoPhase,
    /// The last frame-to-frame change measured.
    pub last_change: f64,
}

impl RecoatDetector {
    pub fn new(settings: VideoTriggerSettings) -> RecoatDetector {
        RecoatDetector {
            settings,
            previous: [0; GRID * GRID],
            current: [0; GRID * GRID],
            have_previous: false,
            phase: VideoPhase::Idle,
            last_change: 0.0,
        }
    }

    pub fn phase(&self) -> VideoPhase {
        self.phase
    }

    /// Takes the next preview frame, seen at `at`; true when it completes a recoat (the
    /// recoater passed and the bed has been still for the hold time).
    pub fn push(&mut self, frame: &DynamicImage, at: Instant) -> bool {
        sample_grid(frame, &mut self.current);
        let change = if self.have_previous {
            self.current
                .iter()
                .zip(&self.previous)
                .map(|(&a, &b)| (a as i32 - b as i32).unsigned_abs() as u64)
                .sum::<u64>() as f64
                / (GRID * GRID) as f64
        } else {
            0.0
        };
        std::mem::swap(&mut self.previous, &mut self.current);
        let first = !self.have_previous;
        self.have_previous = true;
        self.last_change = change;
        if first {
            return false;
        }
        match self.phase {
            VideoPhase::Idle => {
                if change > self.settings.pass_threshold {
                    self.phase = VideoPhase::Passing { still_since: None };
                }
                false
            }
            VideoPhase::Passing { still_since } => {
                if change >= self.settings.settle_threshold {
                    self.phase = VideoPhase::Passing { still_since: None };
                    return false;
                }
                let since = still_since.unwrap_or(at);
                if at.saturating_duration_since(since) >= self.settings.hold {
                    self.phase = VideoPhase::Idle;
                    return true;
                }
                self.phase = VideoPhase::Passing {
                    still_since: Some(since),
                };
                false
            }
        }
    }
}

/// The frame's grey levels at the centres of a `GRID` x `GRID` grid.
fn sample_grid(frame: &DynamicImage, grid: &mut [u8; GRID * GRID]) {
    let (width, height) = (frame.width().max(1), frame.height().max(1));
    for gy in 0..GRID {
        let y = ((gy as u64 * 2 + 1) * height as u64 / (GRID as u64 * 2)) as u32;
        for gx in 0..GRID {
            let x = ((gx as u64 * 2 + 1) * width as u64 / (GRID as u64 * 2)) as u32;
            grid[gy * GRID + gx] = crate::camera::luma_at(frame, x.min(width - 1), y.min(height - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn bed(level: u8) -> DynamicImage {
        DynamicImage::ImageLuma8(GrayImage::from_pixel(128, 128, Luma([level])))
    }

    /// The bed with the recoater blade (a dark bar) at column `x`.
    fn blade_at(x: u32) -> DynamicImage {
        let mut image = GrayImage::from_pixel(128, 128, Luma([120]));
        for y in 0..128 {
            for dx in 0..40 {
                if x + dx < 128 {
                    image.put_pixel(x + dx, y, Luma([10]));
                }
            }
        }
        DynamicImage::ImageLuma8(image)
    }

    fn settings() -> VideoTriggerSettings {
        VideoTriggerSettings {
            pass_threshold: 10.0,
            settle_threshold: 2.0,
            hold: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_replayed_recoat_triggers_once_after_the_hold() {
        let mut detector = RecoatDetector::new(settings());
        let start = Instant::now();
        let mut frames = vec![bed(120), bed(121), bed(120)];
        frames.extend([0, 40, 80].map(blade_at));
        frames.extend((0..8).map(|i| bed(118 + (i % 2) as u8)));
        let mut fired = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            let at = start + Duration::from_millis(100 * index as u64);
            if detector.push(frame, at) {
                fired.push(index);
            }
        }
        // The blade leaves at frame 6 (the bed is back); still from frame 7 on: 300 ms later is frame 10.
        assert_eq!(fired, vec![10], "change history ends at {}", detector.last_change);
        assert_eq!(detector.phase(), VideoPhase::Idle);
    }

    #[test]
    fn noise_alone_never_triggers_and_motion_restarts_the_hold() {
        let mut detector = RecoatDetector::new(settings());
        let start = Instant::now();
        for index in 0..20 {
            assert!(!detector.push(
                &bed(100 + (index % 3) as u8),
                start + Duration::from_millis(100 * index)
            ));
        }
        // A pass, still for 200 ms, a disturbance (smoke, a spark), then still again.
        let mut t = 2_000;
        let mut push = |frame: DynamicImage, detector: &mut RecoatDetector| {
            t += 100;
            detector.push(&frame, start + Duration::from_millis(t))
        };
        assert!(!push(blade_at(20), &mut detector));
        assert!(!push(bed(100), &mut detector));
        assert!(!push(bed(100), &mut detector));
        assert!(!push(bed(100), &mut detector));
        assert!(!push(bed(110), &mut detector));
        assert!(!push(bed(110), &mut detector));
        assert!(!push(bed(110), &mut detector));
        assert!(!push(bed(110), &mut detector));
        assert!(push(bed(110), &mut detector));
    }
}
