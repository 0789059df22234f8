//! `[dashboard]`: the operator's web page of `bedsight run`.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::yes;

/// `[dashboard]`: the web page, `/metrics` and `/healthz` of `bedsight run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// false: no web server (the table's other keys are kept for later).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `IP:port` to listen on; loopback by default. Port 0 takes a free port.
    #[serde(default = "default_dashboard_address")]
    pub address: String,
    /// The token that page controls which change anything must send (`Authorization: Bearer`);
    /// without it those controls are refused.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            address: default_dashboard_address(),
            token: None,
        }
    }
}

fn default_dashboard_address() -> String {
    "127.0.0.1:8080".into()
}

impl DashboardConfig {
    pub(super) fn check(&self) -> Result<()> {
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            bail!(
                "dashboard.address must be IP:port (e.g. \"127.0.0.1:8080\"), got {:?}",
                self.address
            );
        }
        if let Some(token) = &self.token {
            if token.len() < 8 || !token.chars().all(|c| c.is_ascii_graphic()) {
                bail!("dashboard.token must be at least 8 printable ASCII characters without spaces");
            }
        }
        Ok(())
    }
}
