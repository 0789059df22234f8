//! `[journal]`: where `bedsight run` keeps its per-layer journal.

use std::path::PathBuf;

use serde::Deserialize;

/// `[journal]`: the per-layer journal of `bedsight run`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The journal file; default: `journal/layers.bsj` in the state folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
}
