//! Records of layers: the per-layer journal (`journal`: append-only, CRC-framed, fsync per
//! layer), the per-layer images and their recorder thread (`layer_images`), the files a person
//! or a labelling tool reads back for one layer (`layer_files`: mask, uncertainty, overlay) and
//! how one layer's outcome is written for a program or a person (`layer_report`), the site's
//! own pixel labels that the labelling page saves (`site_labels`), and the flat-field reference
//! that commissioning writes (`flat_field`).
//!
//! Owns the formats on disk. Must not decide anything: it keeps what `judge` decided, never
//! changes it, and touches no device.

pub mod flat_field;
pub mod journal;
pub mod layer_files;
pub mod layer_images;
pub mod layer_report;
pub mod site_labels;
