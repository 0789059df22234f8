//! The hardware seam of bedsight: everything that touches a device lives here, each behind a
//! small trait with the real driver and a simulated twin side by side.
//!
//! `hal` owns the camera (replay from a folder or from memory; V4L2 comes with the run loop),
//! the verdict codes the PLC hears and the outputs that carry them. It knows nothing about
//! models, configuration files, HTTP or JSON; the appliance wires it to the pipeline.

pub mod camera;
pub mod plc;

pub use camera::{Camera, CameraError, Frame, ReplayCamera};
pub use plc::{Outputs, PlcError, SimulatedPlc, Verdict, VerdictMessage};
