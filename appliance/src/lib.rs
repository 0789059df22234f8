//! The parts of the appliance that tests, the benchmark and the fuzz targets use from outside
//! the `bedsight` binary: the configuration loader, the model loader, the layer pipeline and
//! its decision rules, and the journal. The binary (`main.rs`) re-exports them under the same
//! names, so `crate::config` and friends read the same everywhere.

pub mod config;
pub mod decide;
pub mod defect_map;
pub mod journal;
pub mod layer_class;
pub mod model;
pub mod pipeline;
pub mod reason;
