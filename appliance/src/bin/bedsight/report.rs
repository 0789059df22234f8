//! `bedsight report`: the build report, one self-contained HTML file, from the journal and the
//! layer images that `bedsight run` wrote.

use std::path::{Path, PathBuf};

use anyhow::Result;

use appliance::config::Config;

/// Finds the journal and the image folder (given, else the configuration's, else the state
/// folder's) and writes the report (given, else build-report.html beside the journal).
pub fn write(
    config: Option<&Path>,
    journal: Option<PathBuf>,
    images: Option<PathBuf>,
    out: Option<PathBuf>,
    state_dir: &Path,
) -> Result<()> {
    let (config_file, base_dir) = match config {
        Some(path) => (
            Config::load(path)?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (Config::embedded(), PathBuf::new()),
    };
    let journal = journal.unwrap_or_else(|| config_file.journal_file(&base_dir, state_dir));
    let images = images
        .or_else(|| config_file.images_folder(&base_dir, state_dir))
        .filter(|folder| folder.is_dir());
    let out = out.unwrap_or_else(|| journal.with_file_name("build-report.html"));
    appliance::web::report::write(&journal, images.as_deref(), &out, &config_file)?;
    println!("report: {}", out.display());
    Ok(())
}
