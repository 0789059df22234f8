//! The appliance: where `hal`, `models` and `images` meet. The `bedsight` binary
//! (`bin/bedsight/`) parses the command line and calls into these groups, each in its own folder
//! and each opening with what it owns and what it must not touch:
//!
//! - `config`: the configuration file, one module per table (type, defaults, checks);
//! - `model`: loading a model image into a backend;
//! - `judge`: one layer from frame to verdict, and the build's memory across layers;
//! - `record`: what is kept of a layer (journal, images, the files and JSON of one layer);
//! - `web`: what people see of a build (dashboard, `/metrics`, the HTML build report);
//! - `service`: the appliance loop of `bedsight run`, which wires them to the hardware.

pub mod config;
pub mod judge;
pub mod model;
pub mod record;
pub mod service;
#[cfg(test)]
mod test_support;
pub mod web;
