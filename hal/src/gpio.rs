//! GPIO lines to and from the PLC: READY, BUSY, PASS, NOK, two verdict code lines and ALIVE
//! out; LAYER_READY (the PLC's "recoat done") and ACK in.
//!
//! The real driver is the Linux GPIO character device (`gpiocdev`, uAPI v2: Jetson and any
//! Linux board); the simulated twin records every level and lets a test press the inputs.
//! Both sit behind two small traits, [`GpioOutputPort`] and [`GpioInputPort`]; the meaning of
//! the lines ([`GpioOutputs`], [`verdict_lines`], [`Debouncer`]) is written once against them.
//!
//! Levels are logical (active/inactive); a line configured active-low is inverted by the
//! kernel, so the logic never sees wiring polarity.
//!
//! Verdict lines: PASS is active for PASS; NOK for every other verdict, with the code lines
//! (CODE1, CODE0) telling them apart: RECOAT 0 1, PAUSE 1 0, REVIEW 1 1, FAULT 0 0. In level
//! mode they hold until the next layer starts or the PLC raises ACK; in pulse mode they drop
//! after the pulse.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plc::{LoopState, Outputs, PlcError, Verdict, VerdictMessage};
use crate::trigger::{TriggerGate, TriggerSource};

/// A line bedsight drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputLine {
    Ready,
    Busy,
    Pass,
    Nok,
    Code0,
    Code1,
    Alive,
}

impl OutputLine {
    pub const ALL: [OutputLine; 7] = [
        OutputLine::Ready,
        OutputLine::Busy,
        OutputLine::Pass,
        OutputLine::Nok,
        OutputLine::Code0,
        OutputLine::Code1,
        OutputLine::Alive,
    ];

    /// The name in the configuration and in messages.
    pub fn name(self) -> &'static str {
        match self {
            OutputLine::Ready => "ready",
            OutputLine::Busy => "busy",
            OutputLine::Pass => "pass",
            OutputLine::Nok => "nok",
            OutputLine::Code0 => "code0",
            OutputLine::Code1 => "code1",
            OutputLine::Alive => "alive",
        }
    }
}

/// A line the PLC drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputLine {
    /// "Recoat done: inspect this layer".
    LayerReady,
    /// "Verdict read".
    Ack,
}

impl InputLine {
    pub fn name(self) -> &'static str {
        match self {
            InputLine::LayerReady => "layer_ready",
            InputLine::Ack => "ack",
        }
    }
}

/// Where one line is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSpec {
    /// The line's offset on the chip.
    pub offset: u32,
    pub active_low: bool,
}

/// How verdict lines behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictMode {
    /// Held until the next layer starts or ACK.
    Level,
    /// Active for this long.
    Pulse(Duration),
}

/// Every GPIO setting of the appliance: plain data, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioPlan {
    /// The character device, e.g. `/dev/gpiochip0`.
    pub chip: String,
    pub outputs: BTreeMap<OutputLine, LineSpec>,
    pub inputs: BTreeMap<InputLine, LineSpec>,
    pub verdict_mode: VerdictMode,
    /// Edges on an input closer together than this are one edge.
    pub debounce: Duration,
}

impl GpioPlan {
    /// Refuses a plan that wires two roles to one offset.
    pub fn check(&self) -> Result<(), String> {
        let mut seen: BTreeMap<u32, &'static str> = BTreeMap::new();
        let all = self
            .outputs
            .iter()
            .map(|(line, spec)| (line.name(), spec.offset))
            .chain(self.inputs.iter().map(|(line, spec)| (line.name(), spec.offset)));
        for (name, offset) in all {
            if let Some(other) = seen.insert(offset, name) {
                return Err(format!("lines {other} and {name} are both offset {offset}"));
            }
        }
        Ok(())
    }
}

/// The levels of PASS, NOK, CODE1, CODE0 for a verdict.
pub fn verdict_lines(verdict: Verdict) -> [(OutputLine, bool); 4] {
    let (pass, code1, code0) = match verdict {
        Verdict::Pass => (true, false, false),
        Verdict::Recoat => (false, false, true),
        Verdict::Pause => (false, true, false),
        Verdict::Review => (false, true, true),
        Verdict::Fault => (false, false, false),
    };
    [
        (OutputLine::Pass, pass),
        (OutputLine::Nok, !pass),
        (OutputLine::Code1, code1),
        (OutputLine::Code0, code0),
    ]
}

/// Drives output lines (logical levels).
pub trait GpioOutputPort: Send {
    fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError>;
    fn describe(&self) -> String;
}

impl GpioOutputPort for Box<dyn GpioOutputPort> {
    fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError> {
        (**self).set(line, active)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// One edge on an input line: `active` is true when the line became active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEdge {
    pub line: InputLine,
    pub active: bool,
    pub at: Instant,
}

/// Waits for edges on input lines.
pub trait GpioInputPort: Send {
    fn wait_edge(&mut self, timeout: Duration) -> Result<Option<InputEdge>, PlcError>;
}

/// Accepts an edge only when the last accepted one is at least `period` older.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period: Duration,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(period: Duration) -> Debouncer {
        Debouncer { period, last: None }
    }

    pub fn accept(&mut self, at: Instant) -> bool {
        if let Some(last) = self.last {
            if at.saturating_duration_since(last) < self.period {
                return false;
            }
        }
        self.last = Some(at);
        true
    }
}

/// The GPIO lines as a PLC output.
pub struct GpioOutputs<P: GpioOutputPort> {
    port: P,
    mode: VerdictMode,
    wired: Vec<OutputLine>,
    alive: bool,
    pulse_until: Option<Instant>,
    /// Raised by the input thread when the PLC acknowledges; handled in `tick`.
    acknowledged: Arc<AtomicBool>,
}

impl<P: GpioOutputPort> GpioOutputs<P> {
    /// Drives every wired line to inactive first, then READY.
    pub fn new(mut port: P, plan: &GpioPlan, acknowledged: Arc<AtomicBool>) -> Result<Self, PlcError> {
        let wired: Vec<OutputLine> = plan.outputs.keys().copied().collect();
        for line in &wired {
            port.set(*line, false)?;
        }
        Ok(GpioOutputs {
            port,
            mode: plan.verdict_mode,
            wired,
            alive: false,
            pulse_until: None,
            acknowledged,
        })
    }

    fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError> {
        if self.wired.contains(&line) {
            self.port.set(line, active)?;
        }
        Ok(())
    }

    fn clear_verdict(&mut self) -> Result<(), PlcError> {
        self.pulse_until = None;
        for line in [OutputLine::Pass, OutputLine::Nok, OutputLine::Code1, OutputLine::Code0] {
            self.set(line, false)?;
        }
        Ok(())
    }
}

impl<P: GpioOutputPort> Outputs for GpioOutputs<P> {
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError> {
        // Codes first, so a PLC that latches on PASS/NOK reads settled code lines.
        let levels = verdict_lines(message.verdict);
        for (line, active) in levels.iter().rev() {
            self.set(*line, *active)?;
        }
        if let VerdictMode::Pulse(length) = self.mode {
            self.pulse_until = Some(Instant::now() + length);
        }
        self.set(OutputLine::Busy, false)?;
        self.set(OutputLine::Ready, true)
    }

    fn set_state(&mut self, state: LoopState) -> Result<(), PlcError> {
        match state {
            LoopState::Ready => {
                self.set(OutputLine::Busy, false)?;
                self.set(OutputLine::Ready, true)
            }
            LoopState::Capturing | LoopState::Analysing => {
                self.clear_verdict()?;
                self.set(OutputLine::Ready, false)?;
                self.set(OutputLine::Busy, true)
            }
            LoopState::VerdictReady => {
                self.set(OutputLine::Busy, false)?;
                self.set(OutputLine::Ready, true)
            }
            LoopState::Fault => {
                self.set(OutputLine::Busy, false)?;
                self.set(OutputLine::Ready, false)
            }
        }
    }

    fn heartbeat(&mut self) -> Result<(), PlcError> {
        self.alive = !self.alive;
        let alive = self.alive;
        self.set(OutputLine::Alive, alive)
    }

    fn tick(&mut self) -> Result<(), PlcError> {
        if self.acknowledged.swap(false, Ordering::AcqRel) {
            self.clear_verdict()?;
        }
        if self.pulse_until.is_some_and(|until| Instant::now() >= until) {
            self.clear_verdict()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("GPIO on {}", self.port.describe())
    }
}

/// Watches the inputs until `stop`: an accepted LAYER_READY edge asks the gate for a layer
/// (refused while busy: the BUSY line already says so), an ACK edge clears the verdict lines.
pub fn spawn_gpio_inputs(
    mut inputs: Box<dyn GpioInputPort>,
    gate: Option<TriggerGate>,
    acknowledged: Arc<AtomicBool>,
    debounce: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("gpio-inputs".into())
        .spawn(move || {
            let mut layer_ready = Debouncer::new(debounce);
            let mut ack = Debouncer::new(debounce);
            while !stop.load(Ordering::Relaxed) {
                let edge = match inputs.wait_edge(Duration::from_millis(100)) {
                    Ok(Some(edge)) => edge,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::error!("gpio: {error}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                if !edge.active {
                    continue;
                }
                match edge.line {
                    InputLine::LayerReady => {
                        if layer_ready.accept(edge.at) {
                            if let Some(gate) = &gate {
                                let _ = gate.request(None, TriggerSource::Gpio);
                            }
                        }
                    }
                    InputLine::Ack => {
                        if ack.accept(edge.at) {
                            acknowledged.store(true, Ordering::Release);
                        }
                    }
                }
            }
        })
        .expect("spawning a thread")
}

/// The simulated twin: remembers every level it was given and lets a test press inputs.
#[derive(Debug, Clone)]
pub struct SimulatedGpio {
    state: Arc<Mutex<SimulatedLevels>>,
    edges: Sender<InputEdge>,
}

#[derive(Debug, Default)]
struct SimulatedLevels {
    levels: BTreeMap<OutputLine, bool>,
    history: Vec<(OutputLine, bool)>,
}

/// The twin's output side.
#[derive(Debug, Clone)]
pub struct SimulatedGpioOutputs {
    state: Arc<Mutex<SimulatedLevels>>,
}

/// The twin's input side.
#[derive(Debug)]
pub struct SimulatedGpioInputs {
    edges: Receiver<InputEdge>,
}

impl SimulatedGpio {
    pub fn new() -> (SimulatedGpio, SimulatedGpioOutputs, SimulatedGpioInputs) {
        let state = Arc::new(Mutex::new(SimulatedLevels::default()));
        let (sender, receiver) = channel();
        (
            SimulatedGpio {
                state: state.clone(),
                edges: sender,
            },
            SimulatedGpioOutputs { state },
            SimulatedGpioInputs { edges: receiver },
        )
    }

    /// The line's logical level now.
    pub fn level(&self, line: OutputLine) -> bool {
        self.state.lock().unwrap().levels.get(&line).copied().unwrap_or(false)
    }

    /// Every change, in order.
    pub fn history(&self) -> Vec<(OutputLine, bool)> {
        self.state.lock().unwrap().history.clone()
    }

    /// The PLC drives an input line active (`true`) or inactive.
    pub fn drive(&self, line: InputLine, active: bool) {
        let _ = self.edges.send(InputEdge {
            line,
            active,
            at: Instant::now(),
        });
    }

    /// An active edge followed by an inactive one.
    pub fn pulse(&self, line: InputLine) {
        self.drive(line, true);
        self.drive(line, false);
    }
}

impl GpioOutputPort for SimulatedGpioOutputs {
    fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError> {
        let mut state = self.state.lock().unwrap();
        if state.levels.insert(line, active) != Some(active) {
            state.history.push((line, active));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "simulated GPIO".into()
    }
}

impl GpioInputPort for SimulatedGpioInputs {
    fn wait_edge(&mut self, timeout: Duration) -> Result<Option<InputEdge>, PlcError> {
        match self.edges.recv_timeout(timeout) {
            Ok(edge) => Ok(Some(edge)),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => Ok(None),
        }
    }
}

/// The Linux GPIO character device (`/dev/gpiochipN`, uAPI v2).
pub mod cdev {
    use super::*;
    use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
    use gpiocdev::request::Config;
    use gpiocdev::Request;

    /// The request configuration for the output lines: outputs, inactive at start, polarity
    /// per line. Pure: unit-tested without a chip.
    pub fn output_config(plan: &GpioPlan) -> Config {
        let mut config = Config::default();
        config.on_chip(plan.chip.as_str());
        for spec in plan.outputs.values() {
            config.with_line(spec.offset).as_output(Value::Inactive);
            if spec.active_low {
                config.as_active_low();
            } else {
                config.as_active_high();
            }
        }
        config
    }

    /// The request configuration for the input lines: both edges, kernel debounce, polarity
    /// per line.
    pub fn input_config(plan: &GpioPlan) -> Config {
        let mut config = Config::default();
        config.on_chip(plan.chip.as_str());
        for spec in plan.inputs.values() {
            config
                .with_line(spec.offset)
                .as_input()
                .with_edge_detection(EdgeDetection::BothEdges);
            if !plan.debounce.is_zero() {
                config.with_debounce_period(plan.debounce);
            }
            if spec.active_low {
                config.as_active_low();
            } else {
                config.as_active_high();
            }
        }
        config
    }

    fn open_error(plan: &GpioPlan, error: gpiocdev::Error) -> PlcError {
        PlcError::Open {
            device: format!("GPIO chip {}", plan.chip),
            reason: format!("cannot request the lines: {error}"),
        }
    }

    /// Output lines held on the chip.
    pub struct CdevOutputs {
        request: Request,
        offsets: BTreeMap<OutputLine, u32>,
        chip: String,
    }

    impl CdevOutputs {
        pub fn open(plan: &GpioPlan) -> Result<CdevOutputs, PlcError> {
            let request = Request::from_config(output_config(plan))
                .with_consumer("bedsight")
                .request()
                .map_err(|e| open_error(plan, e))?;
            Ok(CdevOutputs {
                request,
                offsets: plan.outputs.iter().map(|(line, spec)| (*line, spec.offset)).collect(),
                chip: plan.chip.clone(),
            })
        }
    }

    impl GpioOutputPort for CdevOutputs {
        fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError> {
            let Some(&offset) = self.offsets.get(&line) else {
                return Ok(());
            };
            self.request
                .set_value(offset, if active { Value::Active } else { Value::Inactive })
                .map_err(|e| PlcError::Link {
                    link: format!("GPIO {} line {offset} ({})", self.chip, line.name()),
                    reason: e.to_string(),
                })
        }

        fn describe(&self) -> String {
            self.chip.clone()
        }
    }

    /// Input lines watched on the chip.
    pub struct CdevInputs {
        request: Request,
        lines: BTreeMap<u32, InputLine>,
    }

    impl CdevInputs {
        pub fn open(plan: &GpioPlan) -> Result<CdevInputs, PlcError> {
            let request = Request::from_config(input_config(plan))
                .with_consumer("bedsight")
                .request()
                .map_err(|e| open_error(plan, e))?;
            Ok(CdevInputs {
                request,
                lines: plan.inputs.iter().map(|(line, spec)| (spec.offset, *line)).collect(),
            })
        }
    }

    impl GpioInputPort for CdevInputs {
        fn wait_edge(&mut self, timeout: Duration) -> Result<Option<InputEdge>, PlcError> {
            let link = |e: gpiocdev::Error| PlcError::Link {
                link: "GPIO inputs".into(),
                reason: e.to_string(),
            };
            if !self.request.wait_edge_event(timeout).map_err(link)? {
                return Ok(None);
            }
            let event = self.request.read_edge_event().map_err(link)?;
            let Some(&line) = self.lines.get(&event.offset) else {
                return Ok(None);
            };
            Ok(Some(InputEdge {
                line,
                active: event.kind == EdgeKind::Rising,
                at: Instant::now(),
            }))
        }
    }
}

/// Raspberry Pi boards through `rppal` (BCM pin numbers as offsets; `chip` is ignored).
/// Polarity is applied here, since rppal drives physical levels.
#[cfg(feature = "rppal")]
pub mod rpi {
    use super::*;
    use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};

    fn open_error(error: rppal::gpio::Error) -> PlcError {
        PlcError::Open {
            device: "Raspberry Pi GPIO".into(),
            reason: error.to_string(),
        }
    }

    pub struct RppalOutputs {
        pins: BTreeMap<OutputLine, (OutputPin, bool)>,
    }

    impl RppalOutputs {
        pub fn open(plan: &GpioPlan) -> Result<RppalOutputs, PlcError> {
            let gpio = Gpio::new().map_err(open_error)?;
            let mut pins = BTreeMap::new();
            for (line, spec) in &plan.outputs {
                let pin = gpio.get(spec.offset as u8).map_err(open_error)?;
                // Inactive at start.
                let pin = if spec.active_low {
                    pin.into_output_high()
                } else {
                    pin.into_output_low()
                };
                pins.insert(*line, (pin, spec.active_low));
            }
            Ok(RppalOutputs { pins })
        }
    }

    impl GpioOutputPort for RppalOutputs {
        fn set(&mut self, line: OutputLine, active: bool) -> Result<(), PlcError> {
            if let Some((pin, active_low)) = self.pins.get_mut(&line) {
                if active != *active_low {
                    pin.set_high();
                } else {
                    pin.set_low();
                }
            }
            Ok(())
        }

        fn describe(&self) -> String {
            "Raspberry Pi GPIO".into()
        }
    }

    pub struct RppalInputs {
        gpio: Gpio,
        pins: Vec<(InputLine, InputPin, bool)>,
    }

    impl RppalInputs {
        pub fn open(plan: &GpioPlan) -> Result<RppalInputs, PlcError> {
            let gpio = Gpio::new().map_err(open_error)?;
            let mut pins = Vec::new();
            for (line, spec) in &plan.inputs {
                let mut pin = gpio.get(spec.offset as u8).map_err(open_error)?.into_input();
                let debounce = (!plan.debounce.is_zero()).then_some(plan.debounce);
                pin.set_interrupt(Trigger::Both, debounce).map_err(open_error)?;
                pins.push((*line, pin, spec.active_low));
            }
            Ok(RppalInputs { gpio, pins })
        }
    }

    impl GpioInputPort for RppalInputs {
        fn wait_edge(&mut self, timeout: Duration) -> Result<Option<InputEdge>, PlcError> {
            let watched: Vec<&InputPin> = self.pins.iter().map(|(_, pin, _)| pin).collect();
            let event = self
                .gpio
                .poll_interrupts(&watched, false, Some(timeout))
                .map_err(|e| PlcError::Link {
                    link: "Raspberry Pi GPIO inputs".into(),
                    reason: e.to_string(),
                })?;
            let Some((pin, event)) = event else { return Ok(None) };
            let Some((line, _, active_low)) = self.pins.iter().find(|(_, p, _)| p.pin() == pin.pin()) else {
                return Ok(None);
            };
            let rising = event.trigger == Trigger::RisingEdge;
            Ok(Some(InputEdge {
                line: *line,
                active: rising != *active_low,
                at: Instant::now(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::{trigger_channel, Trigger};
    use gpiocdev::line::{Direction, EdgeDetection, Value};

    fn plan(mode: VerdictMode) -> GpioPlan {
        let line = |offset, active_low| LineSpec { offset, active_low };
        GpioPlan {
            chip: "/dev/gpiochip0".into(),
            outputs: [
                (OutputLine::Ready, line(5, false)),
                (OutputLine::Busy, line(6, true)),
                (OutputLine::Pass, line(13, false)),
                (OutputLine::Nok, line(19, false)),
                (OutputLine::Code0, line(26, false)),
                (OutputLine::Code1, line(21, false)),
                (OutputLine::Alive, line(20, false)),
            ]
            .into(),
            inputs: [
                (InputLine::LayerReady, line(16, true)),
                (InputLine::Ack, line(12, false)),
            ]
            .into(),
            verdict_mode: mode,
            debounce: Duration::from_millis(20),
        }
    }

    #[test]
    fn verdict_codes_tell_the_nok_verdicts_apart() {
        let code = |v| {
            let lines = verdict_lines(v);
            (lines[0].1, lines[1].1, lines[2].1, lines[3].1)
        };
        assert_eq!(code(Verdict::Pass), (true, false, false, false));
        assert_eq!(code(Verdict::Recoat), (false, true, false, true));
        assert_eq!(code(Verdict::Pause), (false, true, true, false));
        assert_eq!(code(Verdict::Review), (false, true, true, true));
        assert_eq!(code(Verdict::Fault), (false, true, false, false));
    }

    #[test]
    fn line_configuration_for_the_character_device() {
        let plan = plan(VerdictMode::Level);
        let outputs = cdev::output_config(&plan);
        assert_eq!(outputs.num_lines(), 7);
        let busy = outputs.line_config(6).unwrap();
        assert_eq!(busy.direction, Some(Direction::Output));
        assert!(busy.active_low);
        assert_eq!(busy.value, Some(Value::Inactive));
        assert!(!outputs.line_config(5).unwrap().active_low);
        let inputs = cdev::input_config(&plan);
        assert_eq!(inputs.num_lines(), 2);
        let layer_ready = inputs.line_config(16).unwrap();
        assert_eq!(layer_ready.direction, Some(Direction::Input));
        assert_eq!(layer_ready.edge_detection, Some(EdgeDetection::BothEdges));
        assert_eq!(layer_ready.debounce_period, Some(Duration::from_millis(20)));
        assert!(layer_ready.active_low);
        assert!(!inputs.line_config(12).unwrap().active_low);
    }

    #[test]
    fn a_missing_chip_is_named() {
        let mut plan = plan(VerdictMode::Level);
        plan.chip = "/dev/gpiochip-bedsight-none".into();
        let error = cdev::CdevOutputs::open(&plan).err().unwrap().to_string();
        assert!(error.contains("GPIO chip /dev/gpiochip-bedsight-none"), "{error}");
    }

    #[test]
    fn two_roles_on_one_offset_are_refused() {
        let mut plan = plan(VerdictMode::Level);
        plan.inputs.insert(
            InputLine::Ack,
            LineSpec {
                offset: 5,
                active_low: false,
            },
        );
        assert_eq!(plan.check().unwrap_err(), "lines ready and ack are both offset 5");
    }

    #[test]
    fn debounce_drops_edges_inside_the_period() {
        let mut debouncer = Debouncer::new(Duration::from_millis(20));
        let start = Instant::now();
        assert!(debouncer.accept(start));
        assert!(!debouncer.accept(start + Duration::from_millis(5)));
        assert!(debouncer.accept(start + Duration::from_millis(25)));
    }

    #[test]
    fn a_layer_through_the_twin_in_level_mode() {
        let (twin, outputs, inputs) = SimulatedGpio::new();
        let plan = plan(VerdictMode::Level);
        let acknowledged = Arc::new(AtomicBool::new(false));
        let mut lines = GpioOutputs::new(outputs, &plan, acknowledged.clone()).unwrap();
        let (gate, mut queue) = trigger_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = spawn_gpio_inputs(
            Box::new(inputs),
            Some(gate),
            acknowledged,
            Duration::from_millis(20),
            stop.clone(),
        );

        lines.set_state(LoopState::Ready).unwrap();
        assert!(twin.level(OutputLine::Ready) && !twin.level(OutputLine::Busy));
        // A bouncing LAYER_READY: one request.
        twin.pulse(InputLine::LayerReady);
        twin.pulse(InputLine::LayerReady);
        let request = queue.wait(Duration::from_secs(2)).unwrap().expect("a layer request");
        assert_eq!((request.layer, request.source), (None, TriggerSource::Gpio));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(queue.wait(Duration::from_millis(10)).unwrap(), None);
        assert_eq!(queue.busy_refusals(), 0);

        lines.set_state(LoopState::Capturing).unwrap();
        assert!(!twin.level(OutputLine::Ready) && twin.level(OutputLine::Busy));
        let mut message = VerdictMessage::fault(1);
        message.verdict = Verdict::Pause;
        lines.publish(&message).unwrap();
        queue.layer_done();
        assert!(
            twin.level(OutputLine::Nok)
                && twin.level(OutputLine::Code1)
                && !twin.level(OutputLine::Code0)
                && !twin.level(OutputLine::Pass)
        );
        assert!(twin.level(OutputLine::Ready) && !twin.level(OutputLine::Busy));
        // Level mode: held until ACK.
        std::thread::sleep(Duration::from_millis(30));
        lines.tick().unwrap();
        assert!(twin.level(OutputLine::Nok));
        twin.pulse(InputLine::Ack);
        let deadline = Instant::now() + Duration::from_secs(2);
        while twin.level(OutputLine::Nok) {
            assert!(Instant::now() < deadline, "ACK did not clear NOK");
            std::thread::sleep(Duration::from_millis(5));
            lines.tick().unwrap();
        }
        assert!(!twin.level(OutputLine::Code1));

        lines.heartbeat().unwrap();
        lines.heartbeat().unwrap();
        let alive: Vec<bool> = twin
            .history()
            .into_iter()
            .filter(|(line, _)| *line == OutputLine::Alive)
            .map(|(_, level)| level)
            .collect();
        assert_eq!(alive, vec![false, true, false], "ALIVE is a square wave");
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
    }

    #[test]
    fn pulse_mode_drops_the_verdict_after_the_pulse() {
        let (twin, outputs, _inputs) = SimulatedGpio::new();
        let plan = plan(VerdictMode::Pulse(Duration::from_millis(30)));
        let mut lines = GpioOutputs::new(outputs, &plan, Arc::new(AtomicBool::new(false))).unwrap();
        let mut message = VerdictMessage::fault(1);
        message.verdict = Verdict::Pass;
        lines.publish(&message).unwrap();
        lines.tick().unwrap();
        assert!(twin.level(OutputLine::Pass));
        std::thread::sleep(Duration::from_millis(40));
        lines.tick().unwrap();
        assert!(!twin.level(OutputLine::Pass) && !twin.level(OutputLine::Nok));
    }
}
