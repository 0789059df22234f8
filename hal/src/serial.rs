//! Serial ports (RS-232/RS-485 adapters, UARTs, pseudo-terminals) through `serialport`.

use std::time::Duration;

use serialport::SerialPort;

use crate::plc::PlcError;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    /// Parses `none`, `even` or `odd`.
    pub fn parse(word: &str) -> Option<Parity> {
        match word.to_ascii_lowercase().as_str() {
            "none" => Some(Parity::None),
            "even" => Some(Parity::Even),
            "odd" => Some(Parity::Odd),
            _ => None,
        }
    }
}

/// How to open one serial port (8 data bits always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Device path, e.g. `/dev/ttyUSB0` or a udev name like `/dev/bedsight-plc`.
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// 8N1 at `baud`.
    pub fn new(port: &str, baud: u32) -> SerialSettings {
        SerialSettings {
            port: port.to_string(),
            baud,
            parity: Parity::None,
            stop_bits: 1,
        }
    }
}

/// Opens and configures a serial port; reads time out after `read_timeout`. The error names
/// the device, so a missing adapter at start is one clear line.
pub fn open_serial(settings: &SerialSettings, read_timeout: Duration) -> Result<Box<dyn SerialPort>, PlcError> {
    let parity = match settings.parity {
        Parity::None => serialport::Parity::None,
        Parity::Even => serialport::Parity::Even,
        Parity::Odd => serialport::Parity::Odd,
    };
    let stop_bits = if settings.stop_bits == 2 {
        serialport::StopBits::Two
    } else {
        serialport::StopBits::One
    };
    serialport::new(&settings.port, settings.baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(serialport::FlowControl::None)
        .timeout(read_timeout)
        .open()
        .map_err(|e| PlcError::Open {
            device: format!("serial port {}", settings.port),
            reason: format!("cannot open: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_port_is_named() {
        let error = open_serial(
            &SerialSettings::new("/dev/bedsight-no-such-port", 9600),
            Duration::from_millis(10),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("/dev/bedsight-no-such-port") && error.contains("cannot open"),
            "{error}"
        );
    }

    #[test]
    fn parity_words() {
        assert_eq!(Parity::parse("Even"), Some(Parity::Even));
        assert_eq!(Parity::parse("mark"), None);
    }
}
