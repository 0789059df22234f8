//! The stable suite's half of fuzzing (docs/fuzzing.md): every seed and every input that once
//! crashed a fuzz target (fuzz/seeds/<target>/, fuzz/regressions/<target>/) goes through the
//! same harness function the target runs, so a fixed crash stays fixed without nightly or
//! cargo-fuzz.

#[path = "../../fuzz/harness/appliance.rs"]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn journals_that_were_seeds_or_crashes() {
    assert!(
        replay("journal_reader", harness::journal_reader, &[]) >= 1,
        "the seeds are there"
    );
}

#[test]
fn configurations_that_were_seeds_or_crashes() {
    assert!(
        replay("config", harness::config, &["assets/bedsight.toml"]) >= 1,
        "the seeds are there"
    );
}
