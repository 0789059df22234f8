//! `[refine]`: the classes that seed 000's Algorithm 2 may relabel uncertain regions to.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineConfig {
    /// The classes seed 000's Algorithm 2 may relabel high-uncertainty regions to (paper: lattice).
    #[serde(default = "default_refine_classes")]
    pub classes: Vec<String>,
}

impl Default for RefineConfig {
    fn default() -> Self {
        Self {
            classes: default_refine_classes(),
        }
    }
}

fn default_refine_classes() -> Vec<String> {
    vec!["lattice".into()]
}
