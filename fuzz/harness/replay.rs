//! Replays the fuzz seeds and past crashes through a harness function in the stable suite
//! (`<crate>/tests/fuzz_regressions.rs` include this file).

use std::path::Path;

/// Runs `harness` on every file of the target's seeds and regressions, and on `assets` (files
/// of the repository that `fuzz/run.sh` seeds the corpus with); returns how many. Paths are
/// from the crate's folder (`CARGO_MANIFEST_DIR` of the test).
pub fn replay(target: &str, harness: fn(&[u8]), assets: &[&str]) -> usize {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fuzz = repo.join("fuzz");
    for asset in assets {
        harness(&std::fs::read(repo.join(asset)).unwrap());
    }
    let mut count = assets.len();
    for folder in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for file in files {
            eprintln!("{target}: {}", file.display());
            harness(&std::fs::read(&file).unwrap());
            count += 1;
        }
    }
    count
}
