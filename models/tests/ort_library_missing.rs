//! A missing or wrong ONNX Runtime library is an error (or, with Auto, a fall-back to tract),
//! never a panic. Its own test binary, so that no other test has loaded the real library into
//! the process first; one test function, because it sets `ORT_DYLIB_PATH`.

mod common;

use models::{load_backend, BackendChoice, ModelError};

#[test]
fn missing_or_wrong_onnxruntime_is_an_error_not_a_panic() {
    let (graph, spec) = common::default_model();

    // 1. ORT_DYLIB_PATH names a file that does not exist.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent");
    assert_eq!(models::find_onnxruntime(), None);
    match load_backend(BackendChoice::Ort, &graph, &spec, None) {
        Err(ModelError::RuntimeNotFound(message)) => {
            assert!(message.contains("ORT_DYLIB_PATH=/nonexistent"), "{message}")
        }
        Err(other) => panic!("expected RuntimeNotFound, got {other}"),
        Ok(_) => panic!("loaded ONNX Runtime from /nonexistent"),
    }
    let auto = load_backend(BackendChoice::Auto, &graph, &spec, None).unwrap();
    assert_eq!(auto.info().name, "tract");
    assert!(auto.info().detail.contains("/nonexistent"), "{:?}", auto.info());

    // 2. A file that is not a shared library at all.
    let folder = tempfile::tempdir().unwrap();
    let not_a_library = folder.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"this is not an ELF file").unwrap();
    std::env::set_var("ORT_DYLIB_PATH", &not_a_library);
    match load_backend(BackendChoice::Ort, &graph, &spec, None) {
        Err(ModelError::RuntimeLoad { path, reason }) => {
            assert_eq!(path, not_a_library);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("expected RuntimeLoad, got {other}"),
        Ok(_) => panic!("loaded a text file as ONNX Runtime"),
    }
    let auto = load_backend(BackendChoice::Auto, &graph, &spec, None).unwrap();
    assert_eq!(auto.info().name, "tract");

    // 3. A real shared library that is not ONNX Runtime (no OrtGetApiBase).
    let other_library = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .expect("no libm.so.6 to stand in for a wrong library");
    std::env::set_var("ORT_DYLIB_PATH", other_library);
    match load_backend(BackendChoice::Ort, &graph, &spec, None) {
        Err(ModelError::RuntimeLoad { reason, .. }) => {
            assert!(reason.contains("OrtGetApiBase"), "{reason}")
        }
        Err(other) => panic!("expected RuntimeLoad, got {other}"),
        Ok(_) => panic!("loaded libm as ONNX Runtime"),
    }
    std::env::remove_var("ORT_DYLIB_PATH");
}
