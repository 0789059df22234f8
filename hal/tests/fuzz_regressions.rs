//! The stable suite's half of fuzzing (docs/fuzzing.md): every seed and every input that once
//! crashed a fuzz target (fuzz/seeds/<target>/, fuzz/regressions/<target>/) goes through the
//! same harness function the target runs, so a fixed crash stays fixed without nightly or
//! cargo-fuzz.

#[path = "../../fuzz/harness/hal.rs"]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn modbus_requests_that_were_seeds_or_crashes() {
    assert!(
        replay("modbus_request", harness::modbus_request, &[]) >= 6,
        "the seeds are there"
    );
}

#[test]
fn serial_lines_that_were_seeds_or_crashes() {
    assert!(
        replay("serial_line", harness::serial_line, &[]) >= 1,
        "the seeds are there"
    );
}
