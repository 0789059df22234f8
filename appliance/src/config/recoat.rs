//! `[recoat]`: the recoat budget and the classes a recoat can fix.

use anyhow::{bail, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoatConfig {
    /// How many times one layer may be spread again before RECOAT becomes PAUSE.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The classes a recoat can fix; a rule that asks for RECOAT for any other class gives
    /// PAUSE instead. Default: incompleteness, hopping and streaking (those the model has).
    #[serde(default)]
    pub fixable: Option<Vec<String>>,
}

impl Default for RecoatConfig {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            fixable: None,
        }
    }
}

/// What `recoat.fixable` means when it is left out.
pub const DEFAULT_RECOAT_FIXABLE: [&str; 3] = ["incompleteness", "hopping", "streaking"];

impl RecoatConfig {
    /// Whether a recoat can fix `class`.
    pub fn can_fix(&self, class: &str) -> bool {
        match &self.fixable {
            Some(classes) => classes.iter().any(|c| c == class),
            None => DEFAULT_RECOAT_FIXABLE.contains(&class),
        }
    }
}

fn default_max_retries() -> u32 {
    2
}

impl RecoatConfig {
    pub(super) fn check(&self) -> Result<()> {
        if self.max_retries > 100 {
            bail!("recoat.max_retries must be at most 100, got {}", self.max_retries);
        }
        Ok(())
    }
}
