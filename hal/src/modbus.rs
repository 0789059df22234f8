//! Modbus server (bedsight is the slave): RTU over a serial line and TCP, one register map
//! (docs/plc.md). `rmodbus` does the framing, the CRC and the exception responses; this module
//! holds the map, the transports and the twin-free pure logic the tests drive.
//!
//! Holding registers (0-based), also readable with function 4:
//!
//! | reg | meaning |
//! |---|---|
//! | 0 | map version (2) |
//! | 1 | heartbeat, +1 every second while the loop is alive |
//! | 2 | state: 0 ready, 1 capturing, 2 analysing, 3 verdict ready, 4 fault |
//! | 3-4 | layer number of the last verdict (low word, high word) |
//! | 5 | verdict: 0 none, 1 PASS, 2 RECOAT, 3 PAUSE, 4 REVIEW, 5 FAULT |
//! | 6 | verdict sequence number (+1 per verdict) |
//! | 7 | defect count |
//! | 8 | total defect area, 0.01 mm² |
//! | 9 | largest defect area, 0.01 mm² |
//! | 10 | uncertainty score x1000 |
//! | 11-16 | defect area of class 0..5, 0.01 mm² |
//! | 17 | reason code: the rule that decided the verdict (kind x 256 + class index; 0 none) |
//! | 100-101 | layer number to inspect (low word, high word), writable |
//! | 102 | command, writable: 1 inspect now, 2 acknowledge the verdict |
//!
//! Anything else is answered with exception 02 (illegal data address); an inspect command
//! while a layer is in progress with exception 06 (server device busy).
//!
//! As the Modbus application protocol (1.1b3) and serial line (1.02) specifications want: an RTU
//! frame's CRC is checked before anything else is read from it (a bad one is dropped, never
//! answered); a frame with a function code of 0x80 or above (an exception code, not a request)
//! is dropped; the functions the map does not serve (all but 3, 4, 6 and 16) get exception 01
//! (illegal function); a read of 0 or more than 125 registers, a write of 0 or more than 123, and
//! a byte count that is not twice the register count get exception 03 (illegal data value).

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rmodbus::consts::{ModbusErrorCode, ModbusFunction};
use rmodbus::server::{ModbusFrame, Read as FrameRead, Write as FrameWrite};
use rmodbus::{guess_request_frame_len, ErrorKind, ModbusProto};

/// CRC-16/MODBUS of RTU frames (polynomial 0xA001 reflected, initial 0xFFFF).
const MODBUS_CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

use crate::plc::{LoopState, Outputs, PlcError, Verdict, VerdictMessage, CLASSES_ON_WIRE};
use crate::serial::{open_serial, SerialSettings};
use crate::trigger::{TriggerGate, TriggerSource};

/// The register map's version (holding register 0).
pub const MAP_VERSION: u16 = 2;

/// Register addresses (0-based), named as docs/plc.md names them.
pub mod reg {
    pub const MAP_VERSION: u16 = 0;
    pub const HEARTBEAT: u16 = 1;
    pub const STATE: u16 = 2;
    pub const LAYER_LOW: u16 = 3;
    pub const LAYER_HIGH: u16 = 4;
    pub const VERDICT: u16 = 5;
    pub const SEQUENCE: u16 = 6;
    pub const DEFECT_COUNT: u16 = 7;
    pub const TOTAL_AREA: u16 = 8;
    pub const LARGEST_AREA: u16 = 9;
    pub const UNCERTAINTY: u16 = 10;
    pub const CLASS_AREA_FIRST: u16 = 11;
    /// The rule that decided the verdict (map version 2).
    pub const REASON_CODE: u16 = 17;
    /// One past the last status register.
    pub const STATUS_END: u16 = 18;
    pub const REQUEST_LAYER_LOW: u16 = 100;
    pub const REQUEST_LAYER_HIGH: u16 = 101;
    pub const COMMAND: u16 = 102;
    /// One past the last request register.
    pub const REQUEST_END: u16 = 103;
}

/// Values of the command register.
pub mod command {
    pub const INSPECT: u16 = 1;
    pub const ACKNOWLEDGE: u16 = 2;
}

/// The verdict register's code for a verdict.
pub fn verdict_code(verdict: Verdict) -> u16 {
    match verdict {
        Verdict::Pass => 1,
        Verdict::Recoat => 2,
        Verdict::Pause => 3,
        Verdict::Review => 4,
        Verdict::Fault => 5,
    }
}

/// What went wrong on the wire since start (bad requests never stop the server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModbusCounters {
    /// Requests answered (normally or with an exception).
    pub requests: u64,
    /// Requests answered with an exception.
    pub exceptions: u64,
    /// RTU frames dropped for a bad CRC.
    pub crc_errors: u64,
    /// Frames dropped because they could not be parsed (truncated, bad MBAP header).
    pub broken_frames: u64,
    /// When the last request was answered; none yet: no PLC has spoken.
    pub last_request: Option<std::time::SystemTime>,
    /// Modbus TCP clients connected now.
    pub connections: u32,
}

/// The register map's contents, shared by the transports (behind a mutex) and the loop.
#[derive(Debug)]
pub struct RegisterBank {
    status: [u16; reg::STATUS_END as usize],
    request_layer: u32,
    /// Where an inspect command goes; `None` when layers are triggered some other way.
    gate: Option<TriggerGate>,
    /// Whether the appliance cannot judge layers right now (state 4 when idle).
    standing_fault: bool,
    /// An inspect command was accepted and the loop has not started that layer yet: a verdict
    /// of the previous layer published meanwhile must not show state 3.
    inspect_pending: bool,
    pub counters: ModbusCounters,
}

impl RegisterBank {
    pub fn new(gate: Option<TriggerGate>) -> RegisterBank {
        let mut status = [0u16; reg::STATUS_END as usize];
        status[reg::MAP_VERSION as usize] = MAP_VERSION;
        RegisterBank {
            status,
            request_layer: 0,
            gate,
            standing_fault: false,
            inspect_pending: false,
            counters: ModbusCounters::default(),
        }
    }

    /// One register's value as the PLC reads it.
    pub fn get(&self, address: u16) -> Option<u16> {
        match address {
            a if a < reg::STATUS_END => Some(self.status[a as usize]),
            reg::REQUEST_LAYER_LOW => Some(self.request_layer as u16),
            reg::REQUEST_LAYER_HIGH => Some((self.request_layer >> 16) as u16),
            // A command register: it reads back as 0 (commands are acted on, not stored).
            reg::COMMAND => Some(0),
            _ => None,
        }
    }

    /// Reads `count` registers from `address` into `out` (big-endian words); the whole range
    /// must be mapped.
    pub fn read(&self, address: u16, count: u16, out: &mut [u8]) -> Result<(), ErrorKind> {
        let end = address as u32 + count as u32;
        let inside = |start: u16, stop: u16| address >= start && end <= stop as u32;
        if count == 0 || !(inside(0, reg::STATUS_END) || inside(reg::REQUEST_LAYER_LOW, reg::REQUEST_END)) {
            return Err(ErrorKind::IllegalDataAddress);
        }
        for (index, chunk) in out.chunks_exact_mut(2).take(count as usize).enumerate() {
            let value = self.get(address + index as u16).ok_or(ErrorKind::IllegalDataAddress)?;
            chunk.copy_from_slice(&value.to_be_bytes());
        }
        Ok(())
    }

    /// Writes `count` registers from `address` (big-endian words in `data`); only 100-102 are
    /// writable. A write that includes the command register acts on it after the layer number.
    pub fn write(&mut self, address: u16, count: u16, data: &[u8]) -> Result<(), ErrorKind> {
        let end = address as u32 + count as u32;
        if count == 0
            || address < reg::REQUEST_LAYER_LOW
            || end > reg::REQUEST_END as u32
            || data.len() < count as usize * 2
        {
            return Err(ErrorKind::IllegalDataAddress);
        }
        let mut layer = self.request_layer;
        let mut command = None;
        for (index, chunk) in data.chunks_exact(2).take(count as usize).enumerate() {
            let value = u16::from_be_bytes([chunk[0], chunk[1]]);
            match address + index as u16 {
                reg::REQUEST_LAYER_LOW => layer = (layer & 0xFFFF_0000) | value as u32,
                reg::REQUEST_LAYER_HIGH => layer = (layer & 0x0000_FFFF) | ((value as u32) << 16),
                _ => command = Some(value),
            }
        }
        match command {
            None | Some(0) => {
                self.request_layer = layer;
                Ok(())
            }
            Some(command::INSPECT) => {
                let gate = self.gate.as_ref().ok_or(ErrorKind::IllegalDataValue)?;
                gate.request(Some(layer), TriggerSource::Modbus)
                    .map_err(|_| ErrorKind::SlaveDeviceBusy)?;
                self.request_layer = layer;
                self.inspect_pending = true;
                self.status[reg::STATE as usize] = LoopState::Capturing as u16;
                Ok(())
            }
            Some(command::ACKNOWLEDGE) => {
                self.request_layer = layer;
                if self.status[reg::STATE as usize] == LoopState::VerdictReady as u16 {
                    let idle = if self.standing_fault {
                        LoopState::Fault
                    } else {
                        LoopState::Ready
                    };
                    self.status[reg::STATE as usize] = idle as u16;
                }
                Ok(())
            }
            Some(_) => Err(ErrorKind::IllegalDataValue),
        }
    }

    /// Puts one verdict into registers 3-17, bumps the sequence number, state 3.
    pub fn publish(&mut self, message: &VerdictMessage) {
        let hundredths = |mm2: f64| (mm2 * 100.0).round().clamp(0.0, u16::MAX as f64) as u16;
        let status = &mut self.status;
        status[reg::LAYER_LOW as usize] = message.layer as u16;
        status[reg::LAYER_HIGH as usize] = (message.layer >> 16) as u16;
        status[reg::VERDICT as usize] = verdict_code(message.verdict);
        status[reg::SEQUENCE as usize] = status[reg::SEQUENCE as usize].wrapping_add(1);
        status[reg::DEFECT_COUNT as usize] = message.defect_count.min(u16::MAX as u32) as u16;
        status[reg::TOTAL_AREA as usize] = hundredths(message.total_defect_area_mm2);
        status[reg::LARGEST_AREA as usize] = hundredths(message.largest_defect_area_mm2);
        status[reg::UNCERTAINTY as usize] = (message.uncertainty_score * 1000.0).round().clamp(0.0, 1000.0) as u16;
        for class in 0..CLASSES_ON_WIRE {
            status[reg::CLASS_AREA_FIRST as usize + class] = hundredths(message.class_areas_mm2[class]);
        }
        status[reg::REASON_CODE as usize] = message.reason_code;
        if !self.inspect_pending {
            status[reg::STATE as usize] = LoopState::VerdictReady as u16;
        }
    }

    /// Sets the state register. `Fault` and `Ready` also set and clear the standing fault;
    /// while a verdict is shown (state 3) they change only that, so the PLC still sees its
    /// verdict, and an acknowledge then leads to 4 or 0.
    pub fn set_state(&mut self, state: LoopState) {
        match state {
            LoopState::Capturing => self.inspect_pending = false,
            LoopState::Fault => self.standing_fault = true,
            LoopState::Ready => self.standing_fault = false,
            _ => {}
        }
        let showing_verdict = self.status[reg::STATE as usize] == LoopState::VerdictReady as u16;
        if showing_verdict && matches!(state, LoopState::Fault | LoopState::Ready) {
            return;
        }
        self.status[reg::STATE as usize] = state as u16;
    }

    pub fn heartbeat(&mut self) {
        self.status[reg::HEARTBEAT as usize] = self.status[reg::HEARTBEAT as usize].wrapping_add(1);
    }
}

/// What became of one request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameOutcome {
    /// `response` holds the answer to send.
    Respond,
    /// Nothing to send (another unit's frame, a broadcast).
    Silent,
    /// Dropped: bad CRC.
    CrcError,
    /// Dropped: not a frame.
    Broken,
}

/// Answers one complete request frame (RTU with CRC, or TCP with its MBAP header) from `bank`.
pub fn handle_frame(
    bank: &Mutex<RegisterBank>,
    unit_id: u8,
    proto: ModbusProto,
    request: &[u8],
    response: &mut Vec<u8>,
) -> FrameOutcome {
    let mut bank = bank.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // The unit id: after the 6-byte MBAP header on TCP, first on RTU.
    let unit_at = if proto == ModbusProto::TcpUdp { 6 } else { 0 };
    if proto == ModbusProto::Rtu {
        let Some(body_len) = request.len().checked_sub(2).filter(|len| *len >= 2) else {
            bank.counters.broken_frames += 1;
            return FrameOutcome::Broken;
        };
        let sent = u16::from_le_bytes([request[body_len], request[body_len + 1]]);
        if MODBUS_CRC.checksum(&request[..body_len]) != sent {
            bank.counters.crc_errors += 1;
            return FrameOutcome::CrcError;
        }
    }
    if request.get(unit_at + 1).is_some_and(|function| *function >= 0x80) {
        bank.counters.broken_frames += 1;
        return FrameOutcome::Broken;
    }
    let mut frame = ModbusFrame::new(unit_id, request, proto, response);
    match frame.parse() {
        Ok(()) => {}
        Err(ErrorKind::FrameCRCError) => {
            bank.counters.crc_errors += 1;
            return FrameOutcome::CrcError;
        }
        Err(_) => {
            bank.counters.broken_frames += 1;
            return FrameOutcome::Broken;
        }
    }
    if frame.processing_required {
        if let Some(code) = refused_request(&frame, request, unit_at) {
            frame.processing_required = false;
            frame.error = Some(code);
        }
    }
    if frame.processing_required {
        let processed = if frame.readonly {
            let result = match frame.get_external_read() {
                Ok(FrameRead::Words(words)) => bank.read(words.address, words.count, words.buf),
                Ok(FrameRead::Bits(_)) => Err(ErrorKind::IllegalDataAddress),
                Err(error) => Err(error),
            };
            frame.process_external_read(result)
        } else {
            let result = if write_data_fits(request, proto) {
                match frame.get_external_write() {
                    Ok(FrameWrite::Words(words)) => bank.write(words.address, words.count, words.data),
                    Ok(FrameWrite::Bits(_)) => Err(ErrorKind::IllegalDataAddress),
                    Err(error) => Err(error),
                }
            } else {
                Err(ErrorKind::IllegalDataValue)
            };
            frame.process_external_write(result)
        };
        if processed.is_err() {
            bank.counters.broken_frames += 1;
            return FrameOutcome::Broken;
        }
    }
    if !frame.response_required {
        return FrameOutcome::Silent;
    }
    if frame.error.is_some() {
        bank.counters.exceptions += 1;
    }
    if frame.finalize_response().is_err() {
        bank.counters.broken_frames += 1;
        return FrameOutcome::Broken;
    }
    bank.counters.requests += 1;
    bank.counters.last_request = Some(std::time::SystemTime::now());
    FrameOutcome::Respond
}

/// The exception for a request the map does not serve or whose counts are out of the
/// specification's range (rmodbus answers the coil and discrete functions as if served, reads of
/// 0 registers, and writes whose byte count disagrees with their register count).
fn refused_request<V: rmodbus::VectorTrait<u8>>(
    frame: &ModbusFrame<V>,
    request: &[u8],
    unit_at: usize,
) -> Option<ModbusErrorCode> {
    match frame.func {
        ModbusFunction::GetHoldings | ModbusFunction::GetInputs => {
            (frame.count == 0 || frame.count > 125).then_some(ModbusErrorCode::IllegalDataValue)
        }
        ModbusFunction::SetHolding => None,
        ModbusFunction::SetHoldingsBulk => {
            let bytes = request.get(unit_at + 6).copied().unwrap_or(0) as u16;
            (frame.count == 0 || frame.count > 123 || bytes != 2 * frame.count)
                .then_some(ModbusErrorCode::IllegalDataValue)
        }
        _ => Some(ModbusErrorCode::IllegalFunction),
    }
}

/// Whether a write-multiple request (function 15 or 16) holds the data bytes its byte-count
/// field announces. rmodbus 0.13 slices the data by that field without checking it against the
/// frame (a panic that took the server thread down: found by fuzz/ `modbus_request`); a frame
/// that announces more than it holds is answered with exception 3 (illegal data value).
fn write_data_fits(request: &[u8], proto: ModbusProto) -> bool {
    // The unit id: after the 6-byte MBAP header on TCP, first on RTU (whose CRC follows the data).
    let (unit_at, crc_len) = match proto {
        ModbusProto::TcpUdp => (6, 0),
        _ => (0, 2),
    };
    // unit, function, address (2), count (2), byte count, data.
    match (request.get(unit_at + 1), request.get(unit_at + 6)) {
        (Some(15 | 16), Some(&bytes)) => request.len() >= unit_at + 7 + bytes as usize + crc_len,
        (Some(15 | 16), None) => false,
        _ => true,
    }
}

/// The Modbus side of the PLC outputs: writes verdicts and state into the shared bank.
#[derive(Debug, Clone)]
pub struct ModbusOutputs {
    pub bank: Arc<Mutex<RegisterBank>>,
    pub label: String,
}

impl Outputs for ModbusOutputs {
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError> {
        self.bank.lock().unwrap_or_else(|p| p.into_inner()).publish(message);
        Ok(())
    }

    fn set_state(&mut self, state: LoopState) -> Result<(), PlcError> {
        self.bank.lock().unwrap_or_else(|p| p.into_inner()).set_state(state);
        Ok(())
    }

    fn heartbeat(&mut self) -> Result<(), PlcError> {
        self.bank.lock().unwrap_or_else(|p| p.into_inner()).heartbeat();
        Ok(())
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// Serves Modbus RTU on a serial port until `stop` is set. The port is opened here, so a
/// missing device is an error at start naming it.
pub fn spawn_rtu_server(
    settings: &SerialSettings,
    unit_id: u8,
    bank: Arc<Mutex<RegisterBank>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, PlcError> {
    let mut port = open_serial(settings, Duration::from_millis(10))?;
    // Frames are delimited by 3.5 character times of silence; a pseudo-terminal or a USB
    // adapter delivers in bursts, so wait at least 30 ms before calling a partial frame broken.
    let char_time_us = 11_000_000 / settings.baud.max(1) as u64;
    let frame_gap = Duration::from_micros(char_time_us * 7 / 2).max(Duration::from_millis(30));
    let name = settings.port.clone();
    Ok(std::thread::Builder::new()
        .name("modbus-rtu".into())
        .spawn(move || {
            let mut pending: Vec<u8> = Vec::with_capacity(512);
            let mut chunk = [0u8; 256];
            let mut response = Vec::with_capacity(260);
            let mut last_byte = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                match port.read(&mut chunk) {
                    Ok(0) => {}
                    Ok(n) => {
                        if pending.len() + n > 512 {
                            pending.clear();
                            bank.lock().unwrap_or_else(|p| p.into_inner()).counters.broken_frames += 1;
                        }
                        pending.extend_from_slice(&chunk[..n]);
                        last_byte = Instant::now();
                    }
                    Err(error) if error.kind() == IoErrorKind::TimedOut || error.kind() == IoErrorKind::WouldBlock => {
                        if !pending.is_empty() && last_byte.elapsed() > frame_gap {
                            pending.clear();
                            bank.lock().unwrap_or_else(|p| p.into_inner()).counters.broken_frames += 1;
                        }
                    }
                    Err(error) => {
                        tracing::error!("modbus rtu {name}: read failed: {error}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                while pending.len() >= 2 {
                    let length = match guess_request_frame_len(&pending, ModbusProto::Rtu) {
                        Ok(length) => length as usize,
                        Err(ErrorKind::OOB) => break,
                        Err(_) => {
                            pending.clear();
                            bank.lock().unwrap_or_else(|p| p.into_inner()).counters.broken_frames += 1;
                            break;
                        }
                    };
                    if pending.len() < length {
                        break;
                    }
                    match handle_frame(&bank, unit_id, ModbusProto::Rtu, &pending[..length], &mut response) {
                        FrameOutcome::Respond => {
                            pending.drain(..length);
                            if let Err(error) = port.write_all(&response) {
                                tracing::error!("modbus rtu {name}: write failed: {error}");
                            }
                        }
                        FrameOutcome::Silent => {
                            pending.drain(..length);
                        }
                        // After a bad frame the byte alignment is unknown: drop everything up
                        // to the next silence.
                        FrameOutcome::CrcError | FrameOutcome::Broken => pending.clear(),
                    }
                }
            }
        })
        .expect("spawning a thread"))
}

/// At most this many Modbus TCP clients at once, by default.
pub const MAX_TCP_CLIENTS: usize = 4;
/// A client that sends no request for this long is closed, by default.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the Modbus TCP server keeps its clients: at most `max_clients` at once; a new client
/// over the limit makes the one idle longest give way (a PLC that lost power leaves half-open
/// sockets behind, and must still get in when it is back); a client idle for `idle_timeout` is
/// closed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpLimits {
    pub max_clients: usize,
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_clients: MAX_TCP_CLIENTS,
            idle_timeout: TCP_IDLE_TIMEOUT,
        }
    }
}

/// One connected client: when it last sent a request, and a handle to close it.
struct TcpClient {
    id: u64,
    last_request: Instant,
    stream: TcpStream,
}

type TcpClients = Arc<Mutex<Vec<TcpClient>>>;

/// Serves Modbus TCP on `listen` until `stop` is set. Returns the bound address (port 0 picks
/// a free one) and the accepting thread; each client gets a thread of its own.
pub fn spawn_tcp_server(
    listen: &str,
    unit_id: u8,
    limits: TcpLimits,
    bank: Arc<Mutex<RegisterBank>>,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, JoinHandle<()>), PlcError> {
    let open_error = |reason: String| PlcError::Open {
        device: format!("Modbus TCP {listen}"),
        reason,
    };
    let listener = TcpListener::bind(listen).map_err(|e| open_error(format!("cannot listen: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| open_error(e.to_string()))?;
    let address = listener.local_addr().map_err(|e| open_error(e.to_string()))?;
    let clients: TcpClients = Arc::new(Mutex::new(Vec::new()));
    let handle = std::thread::Builder::new()
        .name("modbus-tcp".into())
        .spawn(move || {
            let mut next_id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let Ok(handle) = stream.try_clone() else { continue };
                        {
                            let mut list = clients.lock().unwrap_or_else(|p| p.into_inner());
                            while list.len() >= limits.max_clients.max(1) {
                                // The client idle longest gives way to the new one.
                                let oldest = (0..list.len())
                                    .min_by_key(|i| list[*i].last_request)
                                    .expect("list is not empty");
                                let gone = list.remove(oldest);
                                gone.stream.shutdown(std::net::Shutdown::Both).ok();
                            }
                            next_id += 1;
                            list.push(TcpClient {
                                id: next_id,
                                last_request: Instant::now(),
                                stream: handle,
                            });
                            bank.lock().unwrap_or_else(|p| p.into_inner()).counters.connections = list.len() as u32;
                        }
                        let (bank, stop, clients, id) = (bank.clone(), stop.clone(), clients.clone(), next_id);
                        std::thread::Builder::new()
                            .name("modbus-tcp-client".into())
                            .spawn(move || {
                                serve_tcp_client(stream, unit_id, limits.idle_timeout, &bank, &stop, &clients, id);
                                let mut list = clients.lock().unwrap_or_else(|p| p.into_inner());
                                list.retain(|client| client.id != id);
                                bank.lock().unwrap_or_else(|p| p.into_inner()).counters.connections = list.len() as u32;
                            })
                            .expect("spawning a thread");
                    }
                    Err(error) if error.kind() == IoErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .expect("spawning a thread");
    Ok((address, handle))
}

fn serve_tcp_client(
    mut stream: TcpStream,
    unit_id: u8,
    idle_timeout: Duration,
    bank: &Mutex<RegisterBank>,
    stop: &AtomicBool,
    clients: &Mutex<Vec<TcpClient>>,
    id: u64,
) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(Duration::from_millis(100))).is_err() {
        return;
    }
    stream.set_nodelay(true).ok();
    let mut pending: Vec<u8> = Vec::with_capacity(520);
    let mut chunk = [0u8; 260];
    let mut response = Vec::with_capacity(260);
    let mut last_request = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_request.elapsed() > idle_timeout {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == IoErrorKind::WouldBlock || error.kind() == IoErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        while pending.len() >= 6 {
            let length = match guess_request_frame_len(&pending, ModbusProto::TcpUdp) {
                Ok(length) => length as usize,
                Err(_) => {
                    // Not Modbus TCP: nothing after it can be trusted either.
                    bank.lock().unwrap_or_else(|p| p.into_inner()).counters.broken_frames += 1;
                    return;
                }
            };
            if pending.len() < length {
                break;
            }
            let outcome = handle_frame(bank, unit_id, ModbusProto::TcpUdp, &pending[..length], &mut response);
            pending.drain(..length);
            last_request = Instant::now();
            if let Some(client) = clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter_mut()
                .find(|c| c.id == id)
            {
                client.last_request = last_request;
            }
            if outcome == FrameOutcome::Respond && stream.write_all(&response).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::trigger_channel;
    use std::time::Duration;

    fn words(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn read(bank: &RegisterBank, address: u16, count: u16) -> Result<Vec<u16>, ErrorKind> {
        let mut out = vec![0u8; count as usize * 2];
        bank.read(address, count, &mut out)?;
        Ok(out.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
    }

    #[test]
    fn a_verdict_lands_in_the_registers_scaled_as_documented() {
        let mut bank = RegisterBank::new(None);
        bank.publish(&VerdictMessage {
            layer: 70_001,
            verdict: Verdict::Recoat,
            defect_count: 3,
            total_defect_area_mm2: 12.345,
            largest_defect_area_mm2: 10.0,
            class_areas_mm2: [0.0, 0.0, 2.345, 0.0, 10.0, 0.0],
            uncertainty_score: 0.0421,
            reason_code: 0x0104,
        });
        let registers = read(&bank, 0, 18).unwrap();
        assert_eq!(
            registers,
            vec![
                2,
                0,
                3,
                (70_001u32 & 0xFFFF) as u16,
                1,
                2,
                1,
                3,
                1235,
                1000,
                42,
                0,
                0,
                235,
                0,
                1000,
                0,
                0x0104
            ]
        );
    }

    #[test]
    fn unmapped_ranges_are_illegal_addresses() {
        let bank = RegisterBank::new(None);
        assert_eq!(read(&bank, 18, 1), Err(ErrorKind::IllegalDataAddress));
        assert_eq!(read(&bank, 10, 10), Err(ErrorKind::IllegalDataAddress));
        assert_eq!(read(&bank, 99, 2), Err(ErrorKind::IllegalDataAddress));
        assert_eq!(read(&bank, 100, 3).unwrap(), vec![0, 0, 0]);
        let mut bank = bank;
        assert_eq!(bank.write(5, 1, &words(&[1])), Err(ErrorKind::IllegalDataAddress));
        assert_eq!(bank.write(102, 2, &words(&[1, 1])), Err(ErrorKind::IllegalDataAddress));
    }

    #[test]
    fn inspect_then_busy_then_acknowledge() {
        let (gate, mut queue) = trigger_channel();
        let mut bank = RegisterBank::new(Some(gate));
        // Layer 65_537 and the inspect command in one write.
        bank.write(100, 3, &words(&[1, 1, command::INSPECT])).unwrap();
        let request = crate::trigger::Trigger::wait(&mut queue, Duration::from_millis(10))
            .unwrap()
            .unwrap();
        assert_eq!(request.layer, Some(65_537));
        assert_eq!(bank.get(reg::STATE), Some(LoopState::Capturing as u16));
        assert_eq!(
            bank.write(102, 1, &words(&[command::INSPECT])),
            Err(ErrorKind::SlaveDeviceBusy)
        );
        bank.set_state(LoopState::Capturing);
        bank.publish(&VerdictMessage::fault(65_537));
        queue.layer_done();
        assert_eq!(bank.get(reg::STATE), Some(3));
        assert_eq!(bank.get(reg::VERDICT), Some(5));
        bank.write(102, 1, &words(&[command::ACKNOWLEDGE])).unwrap();
        assert_eq!(bank.get(reg::STATE), Some(0));
        assert_eq!(bank.write(102, 1, &words(&[7])), Err(ErrorKind::IllegalDataValue));
        // A camera gone: the FAULT verdict shows 3 until acknowledged, then 4.
        bank.publish(&VerdictMessage::fault(65_538));
        bank.set_state(LoopState::Fault);
        assert_eq!(bank.get(reg::STATE), Some(3));
        bank.write(102, 1, &words(&[command::ACKNOWLEDGE])).unwrap();
        assert_eq!(bank.get(reg::STATE), Some(4));
        bank.set_state(LoopState::Ready);
        assert_eq!(bank.get(reg::STATE), Some(0));
        // An inspect accepted before the previous verdict is out: that verdict lands in the
        // registers but the state stays "capturing" for the new layer.
        bank.write(102, 1, &words(&[command::INSPECT])).unwrap();
        bank.publish(&VerdictMessage::fault(65_537));
        assert_eq!(bank.get(reg::STATE), Some(LoopState::Capturing as u16));
        assert_eq!(bank.get(reg::SEQUENCE), Some(3));
    }

    #[test]
    fn rtu_server_on_a_pseudo_terminal_answers_and_survives_garbage() {
        use serialport::SerialPort;
        let (mut master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal pair");
        let path = slave.name().expect("the slave has a path");
        // The server opens the slave itself (serialport locks a port for one user).
        drop(slave);
        let bank = Arc::new(Mutex::new(RegisterBank::new(None)));
        let stop = Arc::new(AtomicBool::new(false));
        let server = spawn_rtu_server(&SerialSettings::new(&path, 19_200), 1, bank.clone(), stop.clone()).unwrap();
        master.set_timeout(Duration::from_secs(2)).unwrap();
        // Garbage with a bad CRC first: dropped, the next request is still answered.
        master
            .write_all(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xDE, 0xAD])
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut exchange = |request: &[u8], expected: usize| {
            master.write_all(request).unwrap();
            let mut answer = vec![0u8; expected];
            master.read_exact(&mut answer).unwrap();
            answer
        };
        let answer = exchange(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B], 9);
        assert_eq!(&answer[..7], &[0x01, 0x03, 0x04, 0x00, 0x02, 0x00, 0x00]);
        let answer = exchange(&[0x01, 0x03, 0x00, 0x32, 0x00, 0x01, 0x25, 0xC5], 5);
        assert_eq!(&answer[..3], &[0x01, 0x83, 0x02]);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        let counters = bank.lock().unwrap().counters;
        assert_eq!((counters.requests, counters.exceptions, counters.crc_errors), (2, 1, 1));
    }

    #[test]
    fn tcp_server_answers_with_the_mbap_header() {
        let bank = Arc::new(Mutex::new(RegisterBank::new(None)));
        let stop = Arc::new(AtomicBool::new(false));
        let (address, server) = spawn_tcp_server("127.0.0.1:0", 1, TcpLimits::default(), bank, stop.clone()).unwrap();
        let mut client = TcpStream::connect(address).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Transaction 0x0102, read register 0 of unit 1.
        client
            .write_all(&[0x01, 0x02, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01])
            .unwrap();
        let mut answer = [0u8; 11];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(
            answer,
            [0x01, 0x02, 0x00, 0x00, 0x00, 0x05, 0x01, 0x03, 0x02, 0x00, 0x02]
        );
        // Register 200: exception 02.
        client
            .write_all(&[0x00, 0x07, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0xC8, 0x00, 0x01])
            .unwrap();
        let mut answer = [0u8; 9];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(answer, [0x00, 0x07, 0x00, 0x00, 0x00, 0x03, 0x01, 0x83, 0x02]);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }

    #[test]
    fn rtu_frames_answer_exceptions_and_crc_errors_are_dropped() {
        let bank = Mutex::new(RegisterBank::new(None));
        let mut response = Vec::new();
        // Read holding registers 0..2 of unit 1: 01 03 0000 0002 + CRC C40B.
        let good = [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &good, &mut response),
            FrameOutcome::Respond
        );
        assert_eq!(&response[..7], &[0x01, 0x03, 0x04, 0x00, 0x02, 0x00, 0x00]);
        let mut corrupt = good;
        corrupt[7] ^= 0xFF;
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &corrupt, &mut response),
            FrameOutcome::CrcError
        );
        // Read register 50: 01 03 0032 0001 + CRC 25C5 -> exception 02.
        let unmapped = [0x01, 0x03, 0x00, 0x32, 0x00, 0x01, 0x25, 0xC5];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &unmapped, &mut response),
            FrameOutcome::Respond
        );
        assert_eq!(&response[..3], &[0x01, 0x83, 0x02]);
        // Another unit's frame: silence. 02 03 0000 0002 + CRC C438.
        let other = [0x02, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x38];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &other, &mut response),
            FrameOutcome::Silent
        );
        let counters = bank.lock().unwrap().counters;
        assert_eq!((counters.requests, counters.exceptions, counters.crc_errors), (2, 1, 1));
    }

    /// Reads register 0 of unit 1 over `client` (transaction `tid`); the map version, 2.
    fn read_version(client: &mut TcpStream, tid: u8) -> std::io::Result<u16> {
        client.write_all(&[0x00, tid, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01])?;
        let mut answer = [0u8; 11];
        client.read_exact(&mut answer)?;
        Ok(u16::from_be_bytes([answer[9], answer[10]]))
    }

    /// A TCP server for unit 1 with these client limits: its address, its thread and its stop flag.
    fn limited_server(
        max_clients: usize,
        idle_timeout: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<()>, Arc<AtomicBool>) {
        let bank = Arc::new(Mutex::new(RegisterBank::new(None)));
        let stop = Arc::new(AtomicBool::new(false));
        let limits = TcpLimits {
            max_clients,
            idle_timeout,
        };
        let (address, server) = spawn_tcp_server("127.0.0.1:0", 1, limits, bank, stop.clone()).unwrap();
        (address, server, stop)
    }

    fn connect(address: SocketAddr) -> TcpStream {
        let client = TcpStream::connect(address).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        client
    }

    #[test]
    fn a_new_client_over_the_limit_makes_the_one_idle_longest_give_way() {
        let (address, server, stop) = limited_server(2, Duration::from_secs(30));
        // A half-open socket left by a PLC that lost power, then a client that keeps asking.
        let mut stale = connect(address);
        std::thread::sleep(Duration::from_millis(100));
        let mut busy = connect(address);
        assert_eq!(read_version(&mut busy, 1).unwrap(), 2);
        // The PLC, back: it gets in, the stale socket is closed, the busy client stays.
        let mut back = connect(address);
        assert_eq!(read_version(&mut back, 2).unwrap(), 2);
        let mut byte = [0u8; 1];
        assert!(
            matches!(stale.read(&mut byte), Ok(0) | Err(_)),
            "the stale client was not closed"
        );
        assert_eq!(read_version(&mut busy, 3).unwrap(), 2);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }

    #[test]
    fn an_idle_client_is_closed_after_the_idle_timeout() {
        let (address, server, stop) = limited_server(4, Duration::from_millis(300));
        let mut client = connect(address);
        assert_eq!(read_version(&mut client, 1).unwrap(), 2);
        // Requests within the timeout keep it open.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(read_version(&mut client, 2).unwrap(), 2);
        // Then silence: closed.
        std::thread::sleep(Duration::from_millis(700));
        assert!(read_version(&mut client, 3).is_err(), "an idle client was still served");
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
    }

    #[test]
    fn rtu_checks_the_crc_before_the_function_and_drops_exception_codes() {
        let bank = Mutex::new(RegisterBank::new(None));
        let mut response = Vec::new();
        // Function 7 (not served) with a bad CRC: dropped as a CRC error, never answered.
        let bad = [0x01, 0x07, 0x00, 0x00];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &bad, &mut response),
            FrameOutcome::CrcError
        );
        // With its CRC (41 E2): exception 01, 01 87 01 + CRC 82 30.
        let unknown = [0x01, 0x07, 0x41, 0xE2];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &unknown, &mut response),
            FrameOutcome::Respond
        );
        assert_eq!(response, [0x01, 0x87, 0x01, 0x82, 0x30]);
        // Function 0x82 is an exception code, not a request: no reply, even with a good CRC.
        let exception_code = [0x01, 0x82, 0x00, 0x00, 0x00, 0x01, 0xB8, 0x14];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &exception_code, &mut response),
            FrameOutcome::Broken
        );
        // Read coils (function 1): the map has none, so the function is not served: 01 81 01 + 81 90.
        let coils = [0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0xFD, 0xCA];
        response.clear();
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::Rtu, &coils, &mut response),
            FrameOutcome::Respond
        );
        assert_eq!(response, [0x01, 0x81, 0x01, 0x81, 0x90]);
        let counters = bank.lock().unwrap().counters;
        assert_eq!((counters.requests, counters.exceptions, counters.crc_errors), (2, 2, 1));
    }

    #[test]
    fn tcp_answers_unserved_functions_01_and_bad_counts_03() {
        let bank = Mutex::new(RegisterBank::new(None));
        let mut response = Vec::new();
        let mut ask = |pdu: &[u8]| {
            let mut request = vec![0x00, 0x09, 0x00, 0x00, 0x00, (pdu.len() + 1) as u8, 0x01];
            request.extend_from_slice(pdu);
            response.clear();
            let outcome = handle_frame(&bank, 1, ModbusProto::TcpUdp, &request, &mut response);
            (outcome, response.clone())
        };
        let exception = |function: u8, code: u8| {
            (
                FrameOutcome::Respond,
                vec![0x00, 0x09, 0x00, 0x00, 0x00, 0x03, 0x01, function, code],
            )
        };
        for function in [0x00u8, 0x07, 0x11, 0x18, 0x2B, 0x41, 0x7F, 0x01, 0x02, 0x05] {
            assert_eq!(
                ask(&[function, 0x00, 0x00, 0x00, 0x01]),
                exception(function | 0x80, 0x01),
                "function {function:#04x}"
            );
        }
        // write one coil with function 15: byte count 1, data 01
        assert_eq!(ask(&[0x0F, 0x00, 0x00, 0x00, 0x01, 0x01, 0x01]), exception(0x8F, 0x01));
        // read 0 registers, or 126
        assert_eq!(ask(&[0x03, 0x00, 0x00, 0x00, 0x00]), exception(0x83, 0x03));
        assert_eq!(ask(&[0x04, 0x00, 0x00, 0x00, 0x7E]), exception(0x84, 0x03));
        // write 1 register announcing 4 data bytes (and holding them)
        assert_eq!(
            ask(&[0x10, 0x00, 0x64, 0x00, 0x01, 0x04, 0x00, 0x07, 0x00, 0x00]),
            exception(0x90, 0x03)
        );
        // write 0 registers
        assert_eq!(ask(&[0x10, 0x00, 0x64, 0x00, 0x00, 0x00]), exception(0x90, 0x03));
        // nothing was written
        assert_eq!(bank.lock().unwrap().get(100), Some(0));
        // 0x83 as a request: dropped
        assert_eq!(ask(&[0x83, 0x00, 0x00, 0x00, 0x01]).0, FrameOutcome::Broken);
    }

    /// fuzz/regressions/modbus_request/byte-count-past-the-end: a TCP write of registers whose
    /// byte count (16) announces more data than the frame holds (6 bytes) once panicked inside
    /// rmodbus; it is answered with exception 3 and the bank is untouched.
    #[test]
    fn a_write_announcing_more_bytes_than_it_holds_gets_exception_3() {
        let bank = Mutex::new(RegisterBank::new(None));
        let mut response = Vec::new();
        // MBAP (transaction 0x0100, protocol 0, length 13, unit 1), 10 0064 0036 10 + 6 bytes.
        let request = [
            0x01, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x01, 0x10, 0x00, 0x64, 0x00, 0x36, 0x10, 0x00, 0x64, 0x00, 0x00, 0x00,
            0x01,
        ];
        assert_eq!(
            handle_frame(&bank, 1, ModbusProto::TcpUdp, &request, &mut response),
            FrameOutcome::Respond
        );
        assert_eq!(
            &response[7..9],
            &[0x90, 0x03],
            "exception 3 to function 16: {response:02x?}"
        );
        assert_eq!(bank.lock().unwrap().get(100), Some(0), "nothing was written");
    }
}
