//! The stable suite's half of fuzzing (docs/fuzzing.md): every seed and every input that once
//! crashed a fuzz target (fuzz/seeds/<target>/, fuzz/regressions/<target>/) goes through the
//! same harness function the target runs, so a fixed crash stays fixed without nightly or
//! cargo-fuzz.

#[path = "../../fuzz/harness/images.rs"]
mod harness;

#[path = "../../fuzz/harness/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn model_images_that_were_seeds_or_crashes() {
    assert!(
        replay("model_image", harness::model_image, &["assets/default.bsimg"]) >= 1,
        "the seeds are there"
    );
}

#[test]
fn manifests_that_were_seeds_or_crashes() {
    assert!(
        replay("manifest", harness::manifest, &["assets/default-model/manifest.toml"]) >= 1,
        "the seeds are there"
    );
}
