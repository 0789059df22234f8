//! The hardware seam of bedsight: everything that touches a device lives here, each behind a
//! small trait with the real driver and a simulated twin side by side.
//!
//! - cameras (`camera`, `v4l2`): `Camera::capture`; V4L2 through `v4l` (GREY/Y16/YUYV/MJPEG,
//!   frame averaging, stale-frame guard, reopen with back-off) and the replay twin;
//! - layer triggers (`trigger`, `video_trigger`): `Trigger::wait` behind a one-slot gate that
//!   answers BUSY instead of queueing; a timer twin and the recoat detector for video;
//! - the PLC (`plc`, `modbus`, `line`, `serial`, `gpio`): `Outputs::publish`; the Modbus RTU/TCP
//!   server with its register map, the serial line protocol, GPIO lines on the character
//!   device (or `rppal`), and the simulated twins.
//!
//! It knows nothing about models, configuration files, HTTP or JSON; the appliance wires it to
//! the pipeline.

pub mod camera;
pub mod gpio;
pub mod line;
pub mod modbus;
pub mod plc;
pub mod serial;
pub mod trigger;
pub mod v4l2;
pub mod video_trigger;

pub use camera::{Camera, CameraError, Frame, ReplayCamera};
pub use plc::{LoopState, Outputs, PlcError, SimulatedPlc, Verdict, VerdictMessage, CLASSES_ON_WIRE};
pub use trigger::{
    trigger_channel, Busy, LayerRequest, Trigger, TriggerError, TriggerGate, TriggerQueue, TriggerSource,
};
