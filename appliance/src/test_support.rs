//! What the unit tests of several modules share (test builds only).

/// The product's class names in index order, as the default model's manifest lists them.
pub fn class_names() -> Vec<String> {
    [
        "background",
        "super-elevation",
        "incompleteness",
        "hopping",
        "streaking",
        "lattice",
    ]
    .map(String::from)
    .to_vec()
}
