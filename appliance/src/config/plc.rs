//! `[plc]` and its tables: how `bedsight run` talks to the printer's PLC (Modbus TCP, Modbus
//! RTU, the serial line protocol, GPIO lines; any combination).

use anyhow::{bail, Result};
use serde::Deserialize;

/// `[plc]`: the outputs, any combination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlcConfig {
    #[serde(default)]
    pub modbus_tcp: Option<ModbusTcpConfig>,
    #[serde(default)]
    pub modbus_rtu: Option<ModbusRtuConfig>,
    #[serde(default)]
    pub serial_line: Option<SerialLineConfig>,
    #[serde(default)]
    pub gpio: Option<GpioConfig>,
}

/// `[plc.gpio]`: lines on the Linux GPIO character device, by offset on `chip`. A line left
/// out is not driven (or not watched).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// `cdev` (the Linux GPIO character device, default) or `rppal` (Raspberry Pi, BCM
    /// numbers; needs a build with the `rppal` feature).
    #[serde(default = "default_gpio_driver")]
    pub driver: String,
    /// The character device, e.g. `/dev/gpiochip0` (ignored by `rppal`).
    pub chip: String,
    #[serde(default)]
    pub ready: Option<u32>,
    #[serde(default)]
    pub busy: Option<u32>,
    #[serde(default)]
    pub pass: Option<u32>,
    #[serde(default)]
    pub nok: Option<u32>,
    #[serde(default)]
    pub code0: Option<u32>,
    #[serde(default)]
    pub code1: Option<u32>,
    #[serde(default)]
    pub alive: Option<u32>,
    /// Input: the PLC's "recoat done" (the layer trigger when trigger.kind = "gpio").
    #[serde(default)]
    pub layer_ready: Option<u32>,
    /// Input: the PLC has read the verdict (clears the verdict lines in level mode).
    #[serde(default)]
    pub ack: Option<u32>,
    /// Names of the lines that are active-low, e.g. ["busy", "layer_ready"].
    #[serde(default)]
    pub active_low: Vec<String>,
    /// `level` (held until the next layer or ACK) or `pulse` (active for pulse_ms).
    #[serde(default = "default_verdict_mode")]
    pub verdict_mode: String,
    #[serde(default = "default_pulse_ms")]
    pub pulse_ms: u64,
    /// Input edges closer together than this are one edge.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl GpioConfig {
    /// The hal's plan for these lines (checked at load).
    pub fn plan(&self) -> hal::gpio::GpioPlan {
        use hal::gpio::{GpioPlan, InputLine, LineSpec, OutputLine, VerdictMode};
        let spec = |name: &str, offset: u32| LineSpec {
            offset,
            active_low: self.active_low.iter().any(|n| n == name),
        };
        let outputs = [
            (OutputLine::Ready, self.ready),
            (OutputLine::Busy, self.busy),
            (OutputLine::Pass, self.pass),
            (OutputLine::Nok, self.nok),
            (OutputLine::Code0, self.code0),
            (OutputLine::Code1, self.code1),
            (OutputLine::Alive, self.alive),
        ]
        .into_iter()
        .filter_map(|(line, offset)| offset.map(|offset| (line, spec(line.name(), offset))))
        .collect();
        let inputs = [(InputLine::LayerReady, self.layer_ready), (InputLine::Ack, self.ack)]
            .into_iter()
            .filter_map(|(line, offset)| offset.map(|offset| (line, spec(line.name(), offset))))
            .collect();
        let verdict_mode = if self.verdict_mode == "pulse" {
            VerdictMode::Pulse(std::time::Duration::from_millis(self.pulse_ms))
        } else {
            VerdictMode::Level
        };
        GpioPlan {
            chip: self.chip.clone(),
            outputs,
            inputs,
            verdict_mode,
            debounce: std::time::Duration::from_millis(self.debounce_ms),
        }
    }
}

/// The line names `[plc.gpio]` knows.
const GPIO_LINE_NAMES: [&str; 9] = [
    "ready",
    "busy",
    "pass",
    "nok",
    "code0",
    "code1",
    "alive",
    "layer_ready",
    "ack",
];

fn default_gpio_driver() -> String {
    "cdev".into()
}

fn default_verdict_mode() -> String {
    "level".into()
}

fn default_pulse_ms() -> u64 {
    200
}

fn default_debounce_ms() -> u64 {
    20
}

/// `[plc.modbus_tcp]`: bedsight as a Modbus TCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTcpConfig {
    /// Address to listen on, e.g. `0.0.0.0:502`; port 0 picks a free port (printed at start).
    pub listen: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Clients at once; a new one over the limit makes the one idle longest give way.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A client that sends no request for this many seconds is closed.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

impl ModbusTcpConfig {
    /// The hal's limits for these keys (checked at load).
    pub fn limits(&self) -> hal::modbus::TcpLimits {
        hal::modbus::TcpLimits {
            max_clients: self.max_clients,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_s),
        }
    }
}

fn default_max_clients() -> usize {
    hal::modbus::MAX_TCP_CLIENTS
}

fn default_idle_timeout_s() -> u64 {
    hal::modbus::TCP_IDLE_TIMEOUT.as_secs()
}

/// `[plc.modbus_rtu]`: bedsight as a Modbus RTU slave on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusRtuConfig {
    pub port: String,
    #[serde(default = "default_rtu_baud")]
    pub baud: u32,
    /// `none`, `even` (the Modbus serial-line default) or `odd`.
    #[serde(default = "default_rtu_parity")]
    pub parity: String,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
}

/// `[plc.serial_line]`: the `LAYER n` / `VERDICT ...` line protocol on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialLineConfig {
    pub port: String,
    #[serde(default = "default_line_baud")]
    pub baud: u32,
}

fn default_unit_id() -> u8 {
    1
}

fn default_rtu_baud() -> u32 {
    19_200
}

fn default_rtu_parity() -> String {
    "even".into()
}

fn default_stop_bits() -> u8 {
    1
}

fn default_line_baud() -> u32 {
    9_600
}

impl PlcConfig {
    pub(super) fn check(&self) -> Result<()> {
        if let Some(tcp) = &self.modbus_tcp {
            if tcp.listen.parse::<std::net::SocketAddr>().is_err() {
                bail!(
                    "plc.modbus_tcp.listen must be an address and port such as \"0.0.0.0:502\", got {:?}",
                    tcp.listen
                );
            }
            if !(1..=32).contains(&tcp.max_clients) {
                bail!("plc.modbus_tcp.max_clients must be in 1..32, got {}", tcp.max_clients);
            }
            if !(1..=86_400).contains(&tcp.idle_timeout_s) {
                bail!(
                    "plc.modbus_tcp.idle_timeout_s must be in 1..86400 seconds, got {}",
                    tcp.idle_timeout_s
                );
            }
        }
        if let Some(rtu) = &self.modbus_rtu {
            serial_port_keys("plc.modbus_rtu", &rtu.port, rtu.baud)?;
            if hal::serial::Parity::parse(&rtu.parity).is_none() {
                bail!("plc.modbus_rtu.parity must be none, even or odd, got {:?}", rtu.parity);
            }
            if !matches!(rtu.stop_bits, 1 | 2) {
                bail!("plc.modbus_rtu.stop_bits must be 1 or 2, got {}", rtu.stop_bits);
            }
            if !(1..=247).contains(&rtu.unit_id) {
                bail!("plc.modbus_rtu.unit_id must be in 1..247, got {}", rtu.unit_id);
            }
        }
        if let Some(line) = &self.serial_line {
            serial_port_keys("plc.serial_line", &line.port, line.baud)?;
            if self.modbus_rtu.as_ref().is_some_and(|rtu| rtu.port == line.port) {
                bail!(
                    "plc.serial_line.port and plc.modbus_rtu.port are both {}: one port carries one protocol",
                    line.port
                );
            }
        }
        if let Some(gpio) = &self.gpio {
            gpio.check()?;
        }
        Ok(())
    }
}

impl GpioConfig {
    fn check(&self) -> Result<()> {
        match self.driver.as_str() {
            "cdev" | "rppal" => {}
            other => bail!("plc.gpio.driver must be cdev or rppal, got {other:?}"),
        }
        if self.chip.trim().is_empty() {
            bail!("plc.gpio.chip must name a GPIO character device, e.g. \"/dev/gpiochip0\"");
        }
        for name in &self.active_low {
            if !GPIO_LINE_NAMES.contains(&name.as_str()) {
                bail!(
                    "plc.gpio.active_low: no line called {name:?} (lines: {})",
                    GPIO_LINE_NAMES.join(", ")
                );
            }
        }
        match self.verdict_mode.as_str() {
            "level" | "pulse" => {}
            other => bail!("plc.gpio.verdict_mode must be level or pulse, got {other:?}"),
        }
        if !(10..=10_000).contains(&self.pulse_ms) {
            bail!("plc.gpio.pulse_ms must be in 10..10000, got {}", self.pulse_ms);
        }
        if self.debounce_ms > 1_000 {
            bail!("plc.gpio.debounce_ms must be at most 1000, got {}", self.debounce_ms);
        }
        self.plan()
            .check()
            .map_err(|reason| anyhow::anyhow!("plc.gpio: {reason}"))
    }
}

fn serial_port_keys(table: &str, port: &str, baud: u32) -> Result<()> {
    if port.trim().is_empty() {
        bail!("{table}.port must name a serial device, e.g. \"/dev/ttyUSB0\"");
    }
    if !(300..=4_000_000).contains(&baud) {
        bail!("{table}.baud must be in 300..4000000, got {baud}");
    }
    Ok(())
}
