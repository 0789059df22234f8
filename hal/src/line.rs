//! The line protocol on a serial port, for simple PLCs and loggers (docs/plc.md):
//!
//! ```text
//! PLC → bedsight   LAYER <n>\r\n
//! bedsight → PLC   VERDICT <n> <PASS|RECOAT|PAUSE|REVIEW|FAULT> <defects> <area_mm2> <uncertainty>\r\n
//!                  BUSY <n>\r\n          (a layer is still being analysed; nothing queued)
//!                  ERR <reason>\r\n      (an unknown, over-long or non-ASCII line)
//! ```
//! Lines end in `\n` (a `\r` before it is dropped); empty lines are ignored. A bad line never
//! stops the server.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serialport::SerialPort;

use crate::plc::{Outputs, PlcError, VerdictMessage};
use crate::serial::{open_serial, SerialSettings};
use crate::trigger::{TriggerGate, TriggerSource};

/// The longest line accepted, without its line end.
pub const MAX_LINE_BYTES: usize = 256;

/// One complete line from the PLC, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// `LAYER <n>`.
    Layer(u32),
    /// A line that is not a request; the reason goes back as `ERR <reason>`.
    Error(String),
}

/// Splits the byte stream into lines, in a buffer of fixed size (no allocation per byte).
#[derive(Debug)]
pub struct LineParser {
    line: [u8; MAX_LINE_BYTES + 1],
    length: usize,
    too_long: bool,
    non_ascii: bool,
}

impl Default for LineParser {
    fn default() -> Self {
        LineParser {
            line: [0; MAX_LINE_BYTES + 1],
            length: 0,
            too_long: false,
            non_ascii: false,
        }
    }
}

impl LineParser {
    /// Feeds one byte; returns the event when it ends a non-empty line.
    pub fn push(&mut self, byte: u8) -> Option<LineEvent> {
        if byte != b'\n' {
            if !byte.is_ascii() {
                self.non_ascii = true;
            }
            if self.length < self.line.len() {
                self.line[self.length] = byte;
                self.length += 1;
            } else {
                self.too_long = true;
            }
            return None;
        }
        let mut line = &self.line[..self.length];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let event = if self.too_long || line.len() > MAX_LINE_BYTES {
            Some(LineEvent::Error(format!("line longer than {MAX_LINE_BYTES} bytes")))
        } else if self.non_ascii {
            Some(LineEvent::Error("line holds non-ASCII bytes".into()))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(parse_line(std::str::from_utf8(line).expect("checked ASCII")))
        };
        self.length = 0;
        self.too_long = false;
        self.non_ascii = false;
        event
    }
}

fn parse_line(line: &str) -> LineEvent {
    let mut words = line.split_ascii_whitespace();
    let keyword = words.next().unwrap_or("");
    if !keyword.eq_ignore_ascii_case("LAYER") {
        let shown: String = keyword.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
        return LineEvent::Error(format!("unknown command {shown}: send LAYER <n>"));
    }
    match (words.next().map(str::parse::<u32>), words.next()) {
        (Some(Ok(layer)), None) => LineEvent::Layer(layer),
        _ => LineEvent::Error("LAYER wants one layer number 0..4294967295".into()),
    }
}

type SharedPort = Arc<Mutex<Box<dyn SerialPort>>>;

/// The serial line as a PLC output: every verdict goes out as its `VERDICT` line.
pub struct LineOutputs {
    port: SharedPort,
    label: String,
}

impl Outputs for LineOutputs {
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError> {
        let line = format!("{}\r\n", message.to_line());
        let mut port = self.port.lock().unwrap_or_else(|p| p.into_inner());
        port.write_all(line.as_bytes()).map_err(|e| PlcError::Link {
            link: self.label.clone(),
            reason: format!("cannot write: {e}"),
        })
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// Opens the port and serves the line protocol until `stop` is set. `gate` is where `LAYER`
/// requests go; without one (layers triggered some other way) `LAYER` gets `ERR`.
pub fn spawn_line_server(
    settings: &SerialSettings,
    gate: Option<TriggerGate>,
    stop: Arc<AtomicBool>,
) -> Result<(LineOutputs, JoinHandle<()>), PlcError> {
    let mut reader = open_serial(settings, Duration::from_millis(50))?;
    let writer = reader.try_clone().map_err(|e| PlcError::Open {
        device: format!("serial port {}", settings.port),
        reason: format!("cannot share it for writing: {e}"),
    })?;
    let writer: SharedPort = Arc::new(Mutex::new(writer));
    let label = format!("line protocol on {} at {} baud", settings.port, settings.baud);
    let outputs = LineOutputs {
        port: writer.clone(),
        label,
    };
    let name = settings.port.clone();
    let handle = std::thread::Builder::new()
        .name("serial-line".into())
        .spawn(move || {
            let mut parser = LineParser::default();
            let mut chunk = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let n = match reader.read(&mut chunk) {
                    Ok(n) => n,
                    Err(error) if error.kind() == IoErrorKind::TimedOut || error.kind() == IoErrorKind::WouldBlock => {
                        continue
                    }
                    Err(error) => {
                        tracing::error!("serial line {name}: read failed: {error}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                for &byte in &chunk[..n] {
                    let Some(event) = parser.push(byte) else { continue };
                    let answer = match event {
                        LineEvent::Layer(layer) => match &gate {
                            Some(gate) => gate
                                .request(Some(layer), TriggerSource::SerialLine)
                                .err()
                                .map(|_| format!("BUSY {layer}\r\n")),
                            None => Some("ERR layers are not triggered over this line (trigger.kind)\r\n".to_string()),
                        },
                        LineEvent::Error(reason) => Some(format!("ERR {reason}\r\n")),
                    };
                    if let Some(answer) = answer {
                        let mut port = writer.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(error) = port.write_all(answer.as_bytes()) {
                            tracing::error!("serial line {name}: write failed: {error}");
                        }
                    }
                }
            }
        })
        .expect("spawning a thread");
    Ok((outputs, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut LineParser, bytes: &[u8]) -> Vec<LineEvent> {
        bytes.iter().filter_map(|&b| parser.push(b)).collect()
    }

    #[test]
    fn layer_lines_with_either_line_end() {
        let mut parser = LineParser::default();
        assert_eq!(
            feed(&mut parser, b"LAYER 12\r\nlayer 13\n\r\n"),
            vec![LineEvent::Layer(12), LineEvent::Layer(13)]
        );
    }

    #[test]
    fn bad_lines_are_errors_and_the_next_line_still_parses() {
        let mut parser = LineParser::default();
        let mut long = vec![b'A'; 300];
        long.extend_from_slice(b"\r\n");
        let events = feed(&mut parser, &long);
        assert_eq!(events, vec![LineEvent::Error("line longer than 256 bytes".into())]);
        let events = feed(
            &mut parser,
            b"LAYER \xff1\r\nHELLO\r\nLAYER x\r\nLAYER 1 2\r\nLAYER 5\r\n",
        );
        assert_eq!(events.len(), 5);
        assert!(matches!(&events[0], LineEvent::Error(r) if r.contains("non-ASCII")));
        assert!(matches!(&events[1], LineEvent::Error(r) if r.contains("unknown command HELLO")));
        assert!(matches!(&events[2], LineEvent::Error(r) if r.contains("one layer number")));
        assert!(matches!(&events[3], LineEvent::Error(_)));
        assert_eq!(events[4], LineEvent::Layer(5));
    }

    #[test]
    fn exactly_256_bytes_is_accepted_as_a_line() {
        let mut parser = LineParser::default();
        let mut line = b"LAYER 7".to_vec();
        line.resize(256, b' ');
        line.extend_from_slice(b"\r\n");
        assert_eq!(feed(&mut parser, &line), vec![LineEvent::Layer(7)]);
    }
}
