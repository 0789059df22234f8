//! Cameras: anything that hands the pipeline one frame of the bed per layer.

use std::path::{Path, PathBuf};

use image::DynamicImage;

/// One captured frame of the bed and where it came from.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The image as the camera delivered it (grey or colour, 8 or 16 bit).
    pub image: DynamicImage,
    /// Where the frame came from: a file path, a device, an embedded sample name.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("camera {source_name}: {reason}")]
    Unreadable { source_name: String, reason: String },
    #[error("camera {0}: no more frames to replay")]
    Exhausted(String),
    #[error("replay folder {0}: {1}")]
    Folder(PathBuf, String),
}

/// A camera: one `capture` per layer trigger.
pub trait Camera {
    /// Captures the frame for the current layer.
    fn capture(&mut self) -> Result<Frame, CameraError>;
    /// One quick frame for watching the bed between layers (the video trigger): no averaging,
    /// no stale-frame guard. Default: a capture.
    fn preview(&mut self) -> Result<Frame, CameraError> {
        self.capture()
    }
    /// A short human name for status lines ("replay of 12 frames from samples/").
    fn describe(&self) -> String;
}

/// Where a replayed frame's bytes live.
#[derive(Debug, Clone)]
enum ReplaySource {
    File(PathBuf),
    Memory { name: String, bytes: &'static [u8] },
}

/// The simulated twin of a camera: replays images in name order, one per capture. This is what
/// `bedsight demo` and the tests use in place of a real camera over the printer's bed. A replay
/// of a folder looks at the folder again when it runs out or its next file is gone: files added
/// during a run come after the last one replayed, and a folder deleted and made again starts
/// from its first file.
#[derive(Debug, Clone)]
pub struct ReplayCamera {
    origin: String,
    frames: Vec<ReplaySource>,
    next: usize,
    /// Start again from the first frame after the last one.
    repeat: bool,
    /// The folder replayed, looked at again when the list runs out.
    folder: Option<PathBuf>,
    /// The last file replayed from it, with its modification time: a file of that name written
    /// since is another (the folder was made again).
    last: Option<(PathBuf, Option<std::time::SystemTime>)>,
}

/// File extensions a replay folder may hold.
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

impl ReplayCamera {
    /// Every image file in `folder`, in name order.
    pub fn from_folder(folder: &Path) -> Result<Self, CameraError> {
        let paths = list_images(folder)?;
        if paths.is_empty() {
            return Err(CameraError::Folder(
                folder.to_path_buf(),
                format!("holds no images ({})", IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        Ok(Self {
            origin: folder.display().to_string(),
            frames: paths.into_iter().map(ReplaySource::File).collect(),
            next: 0,
            repeat: false,
            folder: Some(folder.to_path_buf()),
            last: None,
        })
    }

    /// Lists the folder again: the replay goes on after the last file replayed, or from the
    /// first file when that one is gone (the folder was made again).
    fn rescan(&mut self) -> Result<(), CameraError> {
        let Some(folder) = &self.folder else { return Ok(()) };
        let paths = match list_images(folder) {
            Ok(paths) => paths,
            Err(error) => {
                // gone: when it is back, it is another folder
                self.last = None;
                return Err(error);
            }
        };
        self.next = match &self.last {
            Some((last, modified)) if modified_time(last) == *modified => {
                paths.iter().position(|p| p == last).map_or(0, |i| i + 1)
            }
            _ => 0,
        };
        self.frames = paths.into_iter().map(ReplaySource::File).collect();
        Ok(())
    }

    /// The given files, in the order given.
    pub fn from_files(paths: &[PathBuf]) -> Self {
        Self {
            origin: "command line".into(),
            frames: paths.iter().cloned().map(ReplaySource::File).collect(),
            next: 0,
            repeat: false,
            folder: None,
            last: None,
        }
    }

    /// Frames embedded in the binary (`name`, encoded image bytes), in the order given.
    pub fn from_memory(origin: &str, frames: &[(&str, &'static [u8])]) -> Self {
        let frames = frames
            .iter()
            .map(|(name, bytes)| ReplaySource::Memory {
                name: name.to_string(),
                bytes,
            })
            .collect();
        Self {
            origin: origin.to_string(),
            frames,
            next: 0,
            repeat: false,
            folder: None,
            last: None,
        }
    }

    /// After the last frame, start again from the first (a build replayed for ever).
    pub fn repeating(mut self, repeat: bool) -> Self {
        self.repeat = repeat;
        self
    }

    /// How many frames the replay holds in all.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

fn modified_time(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The image files in `folder`, in name order.
fn list_images(folder: &Path) -> Result<Vec<PathBuf>, CameraError> {
    let entries = std::fs::read_dir(folder)
        .map_err(|e| CameraError::Folder(folder.to_path_buf(), format!("cannot list it: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && has_image_extension(path))
        .collect();
    paths.sort();
    Ok(paths)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .map(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

impl Camera for ReplayCamera {
    fn capture(&mut self) -> Result<Frame, CameraError> {
        let next_gone = matches!(self.frames.get(self.next), Some(ReplaySource::File(path)) if !path.is_file());
        if self.next >= self.frames.len() || next_gone {
            self.rescan()?;
        }
        if self.repeat && self.next >= self.frames.len() {
            self.next = 0;
        }
        let source = self
            .frames
            .get(self.next)
            .cloned()
            .ok_or_else(|| CameraError::Exhausted(self.origin.clone()))?;
        self.next += 1;
        match source {
            ReplaySource::File(path) => {
                let name = path.display().to_string();
                if self.folder.is_some() {
                    self.last = Some((path.clone(), modified_time(&path)));
                }
                let image = image::ImageReader::open(&path)
                    .map_err(|e| CameraError::Unreadable {
                        source_name: name.clone(),
                        reason: format!("cannot open: {e}"),
                    })?
                    .with_guessed_format()
                    .map_err(|e| CameraError::Unreadable {
                        source_name: name.clone(),
                        reason: format!("cannot read: {e}"),
                    })?
                    .decode()
                    .map_err(|e| CameraError::Unreadable {
                        source_name: name.clone(),
                        reason: format!("not a readable image: {e}"),
                    })?;
                Ok(Frame { image, source: name })
            }
            ReplaySource::Memory { name, bytes } => {
                let image = image::load_from_memory(bytes).map_err(|e| CameraError::Unreadable {
                    source_name: name.clone(),
                    reason: format!("not a readable image: {e}"),
                })?;
                Ok(Frame { image, source: name })
            }
        }
    }

    fn describe(&self) -> String {
        format!("replay of {} frames from {}", self.frames.len(), self.origin)
    }
}

/// The 8-bit ITU-R 601 luma of one pixel of a frame, whatever its pixel format (16 bit: the
/// high byte).
pub fn luma_at(frame: &DynamicImage, x: u32, y: u32) -> u8 {
    match frame {
        DynamicImage::ImageLuma8(image) => image.get_pixel(x, y).0[0],
        DynamicImage::ImageLuma16(image) => (image.get_pixel(x, y).0[0] >> 8) as u8,
        DynamicImage::ImageRgb8(image) => {
            let [r, g, b] = image.get_pixel(x, y).0;
            ((r as u32 * 299 + g as u32 * 587 + b as u32 * 114) / 1000) as u8
        }
        other => {
            let pixel = image::GenericImageView::get_pixel(other, x, y).0;
            ((pixel[0] as u32 * 299 + pixel[1] as u32 * 587 + pixel[2] as u32 * 114) / 1000) as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_a_folder_in_name_order_and_then_says_it_is_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [("layer-0002.png", 20u8), ("layer-0001.png", 10u8), ("notes.txt", 0)] {
            let path = dir.path().join(name);
            if name.ends_with(".png") {
                image::GrayImage::from_pixel(4, 4, image::Luma([value]))
                    .save(&path)
                    .unwrap();
            } else {
                std::fs::write(&path, "not an image").unwrap();
            }
        }
        let mut camera = ReplayCamera::from_folder(dir.path()).unwrap();
        assert_eq!(camera.len(), 2);
        let first = camera.capture().unwrap();
        assert!(first.source.ends_with("layer-0001.png"));
        assert_eq!(first.image.to_luma8().get_pixel(0, 0).0[0], 10);
        assert_eq!(camera.capture().unwrap().image.to_luma8().get_pixel(0, 0).0[0], 20);
        assert!(matches!(camera.capture(), Err(CameraError::Exhausted(_))));
    }

    fn grey(path: &Path, value: u8) {
        image::GrayImage::from_pixel(4, 4, image::Luma([value]))
            .save(path)
            .unwrap();
    }

    fn value_of(frame: Frame) -> u8 {
        frame.image.to_luma8().get_pixel(0, 0).0[0]
    }

    #[test]
    fn frames_added_during_a_run_are_replayed_and_a_folder_made_again_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("frames");
        std::fs::create_dir(&folder).unwrap();
        grey(&folder.join("layer-0001.png"), 10);
        let mut camera = ReplayCamera::from_folder(&folder).unwrap();
        assert_eq!(value_of(camera.capture().unwrap()), 10);
        assert!(matches!(camera.capture(), Err(CameraError::Exhausted(_))));
        // a frame written after the start, and one that sorts before the last replayed (not replayed)
        grey(&folder.join("layer-0002.png"), 20);
        grey(&folder.join("layer-0000.png"), 5);
        assert_eq!(value_of(camera.capture().unwrap()), 20);
        // the folder deleted: an error naming it, every capture, until it is back
        std::fs::remove_dir_all(&folder).unwrap();
        match camera.capture() {
            Err(CameraError::Folder(path, why)) => {
                assert!(path == folder && why.starts_with("cannot list it"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::create_dir(&folder).unwrap();
        grey(&folder.join("layer-0001.png"), 30);
        grey(&folder.join("layer-0002.png"), 40);
        assert_eq!(value_of(camera.capture().unwrap()), 30);
        assert_eq!(value_of(camera.capture().unwrap()), 40);
    }

    #[test]
    fn a_repeating_replay_takes_new_frames_before_it_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        grey(&dir.path().join("a.png"), 1);
        let mut camera = ReplayCamera::from_folder(dir.path()).unwrap().repeating(true);
        assert_eq!(value_of(camera.capture().unwrap()), 1);
        grey(&dir.path().join("b.png"), 2);
        assert_eq!(value_of(camera.capture().unwrap()), 2);
        assert_eq!(value_of(camera.capture().unwrap()), 1);
    }

    #[test]
    fn an_unreadable_frame_names_the_file_and_the_next_one_still_plays() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"garbage").unwrap();
        image::GrayImage::new(2, 2).save(dir.path().join("b.png")).unwrap();
        let mut camera = ReplayCamera::from_folder(dir.path()).unwrap();
        let error = camera.capture().unwrap_err().to_string();
        assert!(
            error.contains("a.png") && error.contains("not a readable image"),
            "{error}"
        );
        assert!(camera.capture().is_ok());
    }

    #[test]
    fn an_empty_folder_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let error = ReplayCamera::from_folder(dir.path()).unwrap_err().to_string();
        assert!(error.contains("holds no images"), "{error}");
    }
}
