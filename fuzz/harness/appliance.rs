//! What the appliance fuzz targets do with one input; shared with the stable suite's replay
//! (appliance/tests/fuzz_regressions.rs).

/// A journal file's bytes (a torn, corrupt or foreign file on the box's disk) through the
/// reader that `bedsight journal check/export` and the open-time repair use: records or one
/// error, and what it keeps ends inside the file.
pub fn journal_reader(data: &[u8]) {
    if let Ok(contents) = appliance::record::journal::scan(std::path::Path::new("fuzz.bsj"), data) {
        assert!(contents.good_end <= contents.file_len);
    }
}

/// A configuration file (bedsight.toml) through the loader every command uses: a
/// configuration or one error, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = appliance::config::Config::parse(text, "fuzz/bedsight.toml");
    }
}
