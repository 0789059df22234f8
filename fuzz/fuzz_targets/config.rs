#![no_main]

#[path = "../harness/appliance.rs"]
#[allow(dead_code)] // each target uses one function of its crate's harness
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config(data));
