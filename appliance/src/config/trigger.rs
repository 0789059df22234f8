//! `[trigger]`: the one source of layer triggers of `bedsight run`.

use anyhow::{bail, Result};
use serde::Deserialize;

use super::PlcConfig;

/// `[trigger]`: the one source of layer triggers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// `modbus` (command register 102), `serial` (`LAYER <n>` on plc.serial_line) or `timer`.
    pub kind: String,
    /// `timer`: milliseconds between layers. `video`: milliseconds between preview frames
    /// (default 100).
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// `video`: mean grey-level change (0..255) between preview frames above which the
    /// recoater is passing (default 10).
    #[serde(default)]
    pub pass_threshold: Option<f64>,
    /// `video`: change below which the bed is still (default 2).
    #[serde(default)]
    pub settle_threshold: Option<f64>,
    /// `video`: how long the bed must stay still after a pass (default 1000).
    #[serde(default)]
    pub hold_ms: Option<u64>,
}

impl TriggerConfig {
    /// The recoat detector's settings for `kind = "video"`, defaults filled in.
    pub fn video_settings(&self) -> hal::video_trigger::VideoTriggerSettings {
        hal::video_trigger::VideoTriggerSettings {
            pass_threshold: self.pass_threshold.unwrap_or(10.0),
            settle_threshold: self.settle_threshold.unwrap_or(2.0),
            hold: std::time::Duration::from_millis(self.hold_ms.unwrap_or(1_000)),
        }
    }

    /// Milliseconds between preview frames for `kind = "video"`.
    pub fn video_interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(100)
    }
}

impl TriggerConfig {
    /// Checked against `[plc]`, which carries the modbus, serial and gpio triggers.
    pub(super) fn check(&self, plc: &PlcConfig) -> Result<()> {
        match self.kind.as_str() {
            "modbus" => {
                if plc.modbus_tcp.is_none() && plc.modbus_rtu.is_none() {
                    bail!("trigger.kind = \"modbus\" needs [plc.modbus_tcp] or [plc.modbus_rtu]");
                }
            }
            "serial" => {
                if plc.serial_line.is_none() {
                    bail!("trigger.kind = \"serial\" needs [plc.serial_line]");
                }
            }
            "timer" => match self.interval_ms {
                Some(interval) if (50..=3_600_000).contains(&interval) => {}
                Some(interval) => bail!("trigger.interval_ms must be in 50..3600000, got {interval}"),
                None => bail!("trigger.interval_ms is missing: a timer trigger needs it"),
            },
            "gpio" => {
                if plc.gpio.as_ref().and_then(|gpio| gpio.layer_ready).is_none() {
                    bail!("trigger.kind = \"gpio\" needs plc.gpio.layer_ready (the PLC's recoat-done line)");
                }
            }
            "video" => {
                let video = self.video_settings();
                if !(video.pass_threshold.is_finite() && video.pass_threshold > 0.0 && video.pass_threshold < 255.0) {
                    bail!(
                        "trigger.pass_threshold must be in (0, 255), got {}",
                        video.pass_threshold
                    );
                }
                if !(video.settle_threshold.is_finite()
                    && video.settle_threshold > 0.0
                    && video.settle_threshold < video.pass_threshold)
                {
                    bail!(
                        "trigger.settle_threshold must be > 0 and below trigger.pass_threshold, got {}",
                        video.settle_threshold
                    );
                }
                if video.hold > std::time::Duration::from_secs(60) {
                    bail!("trigger.hold_ms must be at most 60000, got {}", video.hold.as_millis());
                }
                if !(20..=10_000).contains(&self.video_interval_ms()) {
                    bail!(
                        "trigger.interval_ms must be in 20..10000 for a video trigger, got {}",
                        self.video_interval_ms()
                    );
                }
            }
            other => bail!("trigger.kind must be modbus, serial, gpio, timer or video, got {other:?}"),
        }
        if !matches!(self.kind.as_str(), "timer" | "video") && self.interval_ms.is_some() {
            bail!("trigger.interval_ms is only for trigger.kind = \"timer\" or \"video\"");
        }
        if self.kind != "video"
            && (self.pass_threshold.is_some() || self.settle_threshold.is_some() || self.hold_ms.is_some())
        {
            bail!("trigger.pass_threshold, settle_threshold and hold_ms are only for trigger.kind = \"video\"");
        }
        Ok(())
    }
}
