//! What the hal fuzz targets do with one input; shared with the stable suite's replay of the
//! seeds and past crashes (hal/tests/fuzz_regressions.rs), so both run the same code.

use std::sync::Mutex;

use hal::line::LineParser;
use hal::modbus::{handle_frame, FrameOutcome, RegisterBank};
use rmodbus::{guess_request_frame_len, ModbusProto};

/// Bytes from the PLC on the Modbus link (first byte even: RTU with CRC, odd: TCP with MBAP
/// header), cut into frames and answered the way the servers do it (`guess_request_frame_len`,
/// then `handle_frame` on a register bank wired to the layer trigger): answers, silence or
/// dropped frames, never a panic or a hang, and every answer fits a Modbus frame.
pub fn modbus_request(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let proto = if selector & 1 == 0 {
        ModbusProto::Rtu
    } else {
        ModbusProto::TcpUdp
    };
    let (gate, _queue) = hal::trigger_channel();
    let bank = Mutex::new(RegisterBank::new(Some(gate)));
    let mut pending = bytes.to_vec();
    let mut response = Vec::new();
    while pending.len() >= 2 {
        let Ok(length) = guess_request_frame_len(&pending, proto) else {
            break;
        };
        let length = length as usize;
        if pending.len() < length {
            break;
        }
        let outcome = handle_frame(&bank, 1, proto, &pending[..length], &mut response);
        if outcome == FrameOutcome::Respond {
            assert!(response.len() <= 260, "a Modbus answer of {} bytes", response.len());
        }
        if matches!(outcome, FrameOutcome::CrcError | FrameOutcome::Broken) {
            break; // the servers drop the rest after a bad frame
        }
        pending.drain(..length);
    }
}

/// Bytes on the serial line from the printer's controller, one at a time through the parser
/// the line server runs: events or nothing, never a panic.
pub fn serial_line(data: &[u8]) {
    let mut parser = LineParser::default();
    for &byte in data {
        let _ = parser.push(byte);
    }
}
