//! `[images]`: which model images `bedsight image install` accepts.

use std::path::PathBuf;

use serde::Deserialize;

/// `[images]`: what `bedsight image install` accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Install model images that carry no signature (development boxes only). A signature that
    /// is present is always checked.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The folder of trusted public keys (`*.pub`); default: `trusted-keys` in the state folder.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
}
