//! What the PLC hears: the verdict codes and the outputs that carry them.

use std::fmt;

/// What the PLC is told to do with a layer (DESIGN.md, "Verdicts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The layer is good: go on and melt it.
    Pass,
    /// Spread this layer again (bounded retries, then PAUSE).
    Recoat,
    /// The model is not sure enough to decide: a person must.
    Review,
    /// Stop the build for an operator.
    Pause,
    /// The appliance itself cannot judge (no camera, no model, a frame it cannot use).
    Fault,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Pass,
        Verdict::Recoat,
        Verdict::Review,
        Verdict::Pause,
        Verdict::Fault,
    ];

    /// The word on the wire and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Recoat => "RECOAT",
            Verdict::Review => "REVIEW",
            Verdict::Pause => "PAUSE",
            Verdict::Fault => "FAULT",
        }
    }

    /// Parses the wire word (`PASS`, `RECOAT`, ...), case-insensitively.
    pub fn parse(word: &str) -> Option<Verdict> {
        Verdict::ALL
            .into_iter()
            .find(|verdict| verdict.as_str().eq_ignore_ascii_case(word))
    }

    /// How much attention the verdict asks for; the pipeline keeps the most severe one.
    /// PASS < RECOAT < REVIEW < PAUSE < FAULT.
    pub fn severity(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many per-class areas the PLC outputs carry (Modbus holding registers 11-16).
pub const CLASSES_ON_WIRE: usize = 6;

/// One layer's verdict as the PLC receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictMessage {
    pub layer: u32,
    pub verdict: Verdict,
    pub defect_count: u32,
    pub total_defect_area_mm2: f64,
    /// The largest single defect's area.
    pub largest_defect_area_mm2: f64,
    /// Defect area per class, indexed by the model image's class index (0 is background and
    /// stays 0); classes past `CLASSES_ON_WIRE` are counted in the total only.
    pub class_areas_mm2: [f64; CLASSES_ON_WIRE],
    /// The layer's uncertainty score, 0..1.
    pub uncertainty_score: f64,
    /// The rule that decided the verdict: rule kind x 256 + class index, 0 for none
    /// (docs/tracks.md lists the kinds).
    pub reason_code: u16,
}

impl VerdictMessage {
    /// A FAULT for `layer`: nothing measured.
    pub fn fault(layer: u32) -> VerdictMessage {
        VerdictMessage {
            layer,
            verdict: Verdict::Fault,
            defect_count: 0,
            total_defect_area_mm2: 0.0,
            largest_defect_area_mm2: 0.0,
            class_areas_mm2: [0.0; CLASSES_ON_WIRE],
            uncertainty_score: 0.0,
            reason_code: 0,
        }
    }

    /// The serial line protocol's answer: `VERDICT <n> <word> <defects> <area_mm2> <uncertainty>`.
    pub fn to_line(&self) -> String {
        format!(
            "VERDICT {} {} {} {:.2} {:.3}",
            self.layer,
            self.verdict,
            self.defect_count,
            // + 0.0 turns a -0.0 (the float sum of nothing) into 0.0.
            self.total_defect_area_mm2 + 0.0,
            self.uncertainty_score + 0.0
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlcError {
    #[error("PLC link {link}: {reason}")]
    Link { link: String, reason: String },
    /// A device named in the configuration cannot be opened at start.
    #[error("{device}: {reason}")]
    Open { device: String, reason: String },
}

/// Where the appliance is in its loop, as the PLC sees it (Modbus holding register 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopState {
    /// Waiting for a layer trigger.
    Ready = 0,
    /// A trigger was accepted; the camera is capturing.
    Capturing = 1,
    /// The frame is being analysed.
    Analysing = 2,
    /// A verdict is ready (until the PLC acknowledges it or triggers the next layer).
    VerdictReady = 3,
    /// The appliance cannot judge layers right now (camera or model missing).
    Fault = 4,
}

/// Something that carries verdicts to the printer's PLC.
pub trait Outputs {
    /// Tells the PLC one layer's verdict.
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError>;
    /// Tells the PLC where the loop is (READY/BUSY lines, the state register). Default: nothing.
    fn set_state(&mut self, _state: LoopState) -> Result<(), PlcError> {
        Ok(())
    }
    /// Called once a second by the loop while it is alive (heartbeat register, ALIVE line).
    fn heartbeat(&mut self) -> Result<(), PlcError> {
        Ok(())
    }
    /// Called every few tens of milliseconds by the loop (ends verdict pulses). Default: nothing.
    fn tick(&mut self) -> Result<(), PlcError> {
        Ok(())
    }
    fn describe(&self) -> String;
}

/// Several outputs at once: each hears every call; the first error is returned after all ran.
impl Outputs for Vec<Box<dyn Outputs + Send>> {
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError> {
        first_error(self.iter_mut().map(|output| output.publish(message)))
    }

    fn set_state(&mut self, state: LoopState) -> Result<(), PlcError> {
        first_error(self.iter_mut().map(|output| output.set_state(state)))
    }

    fn heartbeat(&mut self) -> Result<(), PlcError> {
        first_error(self.iter_mut().map(|output| output.heartbeat()))
    }

    fn tick(&mut self) -> Result<(), PlcError> {
        first_error(self.iter_mut().map(|output| output.tick()))
    }

    fn describe(&self) -> String {
        if self.is_empty() {
            return "no PLC outputs".into();
        }
        self.iter()
            .map(|output| output.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn first_error(results: impl Iterator<Item = Result<(), PlcError>>) -> Result<(), PlcError> {
    let mut first = Ok(());
    for result in results {
        if first.is_ok() {
            first = result;
        }
    }
    first
}

/// The simulated twin of a PLC: it keeps every line it hears, the way the serial line protocol
/// would carry it, so a demo or a test can show and check what the printer was told.
#[derive(Debug, Default, Clone)]
pub struct SimulatedPlc {
    pub heard: Vec<String>,
}

impl Outputs for SimulatedPlc {
    fn publish(&mut self, message: &VerdictMessage) -> Result<(), PlcError> {
        self.heard.push(message.to_line());
        Ok(())
    }

    fn describe(&self) -> String {
        "simulated PLC (logs what it hears)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_words_round_trip_and_rank_by_severity() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::parse(verdict.as_str()), Some(verdict));
        }
        assert_eq!(Verdict::parse("recoat"), Some(Verdict::Recoat));
        assert_eq!(Verdict::parse("MAYBE"), None);
        assert!(Verdict::Pass.severity() < Verdict::Recoat.severity());
        assert!(Verdict::Review.severity() < Verdict::Pause.severity());
        assert!(Verdict::Pause.severity() < Verdict::Fault.severity());
    }

    #[test]
    fn the_simulated_plc_hears_the_serial_protocol_line() {
        let mut plc = SimulatedPlc::default();
        let message = VerdictMessage {
            layer: 17,
            verdict: Verdict::Recoat,
            defect_count: 2,
            total_defect_area_mm2: 12.345,
            largest_defect_area_mm2: 10.0,
            class_areas_mm2: [0.0, 0.0, 0.0, 12.345, 0.0, 0.0],
            uncertainty_score: 0.0421,
            reason_code: 0,
        };
        plc.publish(&message).unwrap();
        assert_eq!(plc.heard, vec!["VERDICT 17 RECOAT 2 12.35 0.042".to_string()]);
    }
}
