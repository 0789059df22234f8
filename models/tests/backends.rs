//! Both backends on the project's default model: they load it, check it against its manifest,
//! and agree on the fused probabilities.
//!
//! Needs ONNX Runtime (`ORT_DYLIB_PATH`, or a library `find_onnxruntime` finds: the project's test
//! command points `ORT_DYLIB_PATH` at the venv's) and `assets/default-model/`. Without them these
//! tests fail and say so; they do not skip.

mod common;

use std::time::Instant;

use models::{fuse, load_backend, preprocess_gray, BackendChoice, Fused, ModelError, ModelSpec};

fn require_onnxruntime() {
    if models::find_onnxruntime().is_none() {
        panic!(
            "no ONNX Runtime library: set ORT_DYLIB_PATH to libonnxruntime.so (for example \
             ~/.cache/bedsight/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0)"
        );
    }
}

fn input_for(spec: &ModelSpec) -> Vec<f32> {
    let bed = common::synthetic_bed(spec.input.width, spec.input.height);
    let mut input = vec![0.0f32; spec.input.len()];
    if spec.input.channels == 1 {
        preprocess_gray(&bed, &spec.input, &mut input).unwrap();
    } else {
        models::preprocess(&image::DynamicImage::ImageLuma8(bed), &spec.input, &mut input).unwrap();
    }
    input
}

/// Runs `runs` inferences and returns the logits of the last and the mean time per run.
fn run(backend: &mut dyn models::Backend, input: &[f32], logits_len: usize, runs: usize) -> (Vec<f32>, f64) {
    backend.infer(input).unwrap(); // warm-up
    let start = Instant::now();
    for _ in 0..runs {
        backend.infer(input).unwrap();
    }
    let per_run = start.elapsed().as_secs_f64() * 1000.0 / runs as f64;
    let logits = backend.infer(input).unwrap().to_vec();
    assert_eq!(logits.len(), logits_len);
    (logits, per_run)
}

#[test]
fn ort_and_tract_agree_on_the_default_model() {
    require_onnxruntime();
    let (graph, spec) = common::default_model();
    let input = input_for(&spec);

    let mut ort = load_backend(BackendChoice::Ort, &graph, &spec, None).unwrap();
    assert_eq!(ort.info().name, "ort");
    assert!(
        ["TensorRT", "CUDA", "CPU"].contains(&ort.info().execution_provider.as_str()),
        "{:?}",
        ort.info()
    );
    let mut tract = load_backend(BackendChoice::Tract, &graph, &spec, None).unwrap();
    assert_eq!(
        (tract.info().name.as_str(), tract.info().execution_provider.as_str()),
        ("tract", "tract")
    );

    let (ort_logits, ort_ms) = run(ort.as_mut(), &input, spec.logits_len(), 3);
    let (tract_logits, tract_ms) = run(tract.as_mut(), &input, spec.logits_len(), 3);
    let (width, height) = (spec.input.width as usize, spec.input.height as usize);
    let mut ort_fused = Fused::new(width, height, spec.classes.len());
    let mut tract_fused = Fused::new(width, height, spec.classes.len());
    let start = Instant::now();
    fuse(&ort_logits, spec.members, &spec.temperatures, &mut ort_fused);
    let fuse_ms = start.elapsed().as_secs_f64() * 1000.0;
    fuse(&tract_logits, spec.members, &spec.temperatures, &mut tract_fused);
    eprintln!(
        "default model {}x{}x{}, M={}, K={}: ort ({}) {ort_ms:.1} ms, tract {tract_ms:.1} ms per inference; fuse {fuse_ms:.1} ms",
        spec.input.channels,
        height,
        width,
        spec.members,
        spec.classes.len(),
        ort.info().execution_provider
    );

    let worst = ort_fused
        .probabilities
        .iter()
        .zip(&tract_fused.probabilities)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // fp32 on the CPU: 1e-4. TensorRT runs fp16 and CUDA may use TF32, so on a GPU the two
    // backends agree only to about 1e-2.
    let tolerance = if ort.info().execution_provider == "CPU" {
        1e-4
    } else {
        1e-2
    };
    assert!(
        worst <= tolerance,
        "ort ({}) and tract probabilities differ by up to {worst}",
        ort.info().execution_provider
    );
    let worst_uncertainty = ort_fused
        .uncertainty
        .iter()
        .zip(&tract_fused.uncertainty)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst_uncertainty <= tolerance,
        "ort and tract uncertainty differ by up to {worst_uncertainty}"
    );
    // The trunk's pooled features (the default model carries a domain check): both backends
    // return them, as closely as the probabilities.
    assert_eq!(
        (ort.features().len(), tract.features().len()),
        (spec.features_len(), spec.features_len())
    );
    assert!(spec.features_len() > 0, "the default model has a domain check");
    for (a, b) in ort.features().iter().zip(tract.features()) {
        assert!(
            (a - b).abs() <= tolerance * a.abs().max(1.0),
            "features ort {:?}, tract {:?}",
            ort.features(),
            tract.features()
        );
    }

    // Probabilities are a distribution at every pixel.
    let pixels = width * height;
    for p in (0..pixels).step_by(97) {
        let total: f32 = (0..spec.classes.len())
            .map(|k| ort_fused.probabilities[k * pixels + p])
            .sum();
        assert!((total - 1.0).abs() < 1e-4);
    }
}

#[test]
fn auto_runs_on_onnxruntime_when_it_loads() {
    require_onnxruntime();
    let (graph, spec) = common::default_model();
    let backend = load_backend(BackendChoice::Auto, &graph, &spec, None).unwrap();
    assert_eq!(backend.info().name, "ort", "{:?}", backend.info());
    assert!(backend.info().detail.contains("libonnxruntime"), "{:?}", backend.info());
}

/// The same graph with a manifest that disagrees: each backend refuses it and names the
/// disagreement.
#[test]
fn a_graph_that_disagrees_with_the_manifest_is_refused() {
    require_onnxruntime();
    let (graph, spec) = common::default_model();
    let contract_error = |choice: BackendChoice, spec: &ModelSpec| -> String {
        match load_backend(choice, &graph, spec, None) {
            Err(error @ ModelError::Contract(_)) => error.to_string(),
            Err(other) => panic!("{choice:?}: expected a contract error, got {other}"),
            Ok(_) => panic!("{choice:?}: a graph that disagrees with the manifest was accepted"),
        }
    };
    for choice in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut more_members = spec.clone();
        more_members.members += 2;
        more_members.temperatures.extend([1.0, 1.0]);
        let message = contract_error(choice, &more_members);
        let expected = format!(
            "graph returns {} members, manifest says {}",
            spec.members,
            spec.members + 2
        );
        assert!(message.contains(&expected), "{choice:?}: {message}");

        let mut more_classes = spec.clone();
        more_classes.classes.push(models::ClassInfo {
            name: "extra".into(),
            colour: [1, 2, 3],
            defect: true,
        });
        let message = contract_error(choice, &more_classes);
        let expected = format!(
            "graph returns {} classes, manifest lists {}",
            spec.classes.len(),
            spec.classes.len() + 1
        );
        assert!(message.contains(&expected), "{choice:?}: {message}");
    }
}

/// A layer-level head (a multi-task model): both backends return its logits, and read with its
/// temperature they agree to 1e-4. A layer head that the graph does not have the classes of is
/// named; the same graph read as an older manifest without a head loads and reads no layer logits.
#[test]
fn a_layer_head_runs_alike_on_both_backends_and_must_match_the_graph() {
    require_onnxruntime();
    let (graph, spec) = common::layer_head_model();
    let head = spec
        .layer_head
        .as_ref()
        .expect("tests/data/layer-head-256.bsimg has a layer head");
    let input = input_for(&spec);
    let mut probabilities = Vec::new();
    for choice in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut backend = load_backend(choice, &graph, &spec, None).unwrap();
        backend.infer(&input).unwrap();
        assert_eq!(backend.layer_logits().len(), head.classes.len());
        let mut layer = vec![0.0f32; spec.layer_logits_len()];
        models::layer_probabilities(backend.layer_logits(), head.temperature, &mut layer);
        probabilities.push(layer);
    }
    for (a, b) in probabilities[0].iter().zip(&probabilities[1]) {
        assert!(
            (a - b).abs() <= 1e-4 && (0.0..=1.0).contains(a),
            "layer probabilities ort {:?}, tract {:?}",
            probabilities[0],
            probabilities[1]
        );
    }
    for choice in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut more_layer_classes = spec.clone();
        let head = more_layer_classes
            .layer_head
            .as_mut()
            .expect("tests/data/layer-head-256.bsimg has a layer head");
        head.classes.push("extra".into());
        let layer_classes = head.classes.len();
        let message = match load_backend(choice, &graph, &more_layer_classes, None) {
            Err(error @ ModelError::Contract(_)) => error.to_string(),
            Err(other) => panic!("{choice:?}: expected a contract error, got {other}"),
            Ok(_) => panic!("{choice:?}: a layer head the graph lacks was accepted"),
        };
        let expected = format!(
            "graph returns {} layer classes, manifest lists {layer_classes}",
            layer_classes - 1
        );
        assert!(message.contains(&expected), "{choice:?}: {message}");

        let mut without_head = spec.clone();
        without_head.layer_head = None;
        let backend = load_backend(choice, &graph, &without_head, None).unwrap();
        assert!(backend.layer_logits().is_empty());
    }
}

/// An input of the wrong size is an error, not a panic; the logits come back at the graph's size.
#[test]
fn infer_checks_its_input() {
    let (graph, spec) = common::default_model();
    let mut tract = load_backend(BackendChoice::Tract, &graph, &spec, None).unwrap();
    let error = tract.infer(&vec![0.0; spec.input.len() - 1]).unwrap_err();
    assert!(matches!(error, ModelError::Input(_)), "{error}");
    assert_eq!(
        tract.infer(&vec![0.0; spec.input.len()]).unwrap().len(),
        spec.logits_len()
    );
}

/// The default model's self-test sample (`selftest/input.png`, and the mask the Python tools got
/// from the fp32 graph through onnxruntime and their own fusion, `selftest/expected_mask.png`):
/// preprocess → infer → fuse here gives the same mask on both backends. A pixel may only differ
/// where the top two fused probabilities are within 1e-3 (a near tie).
#[test]
fn selftest_sample_gives_the_expected_mask_on_both_backends() {
    require_onnxruntime();
    let (graph, spec) = common::default_model();
    let dir = common::default_model_dir();
    let layer = image::open(dir.join("selftest/input.png")).expect("selftest/input.png");
    let expected = image::open(dir.join("selftest/expected_mask.png"))
        .expect("selftest/expected_mask.png")
        .to_luma8();
    let mut input = vec![0.0f32; spec.input.len()];
    models::preprocess(&layer, &spec.input, &mut input).unwrap();
    let (width, height) = (spec.input.width as usize, spec.input.height as usize);
    assert_eq!((expected.width() as usize, expected.height() as usize), (width, height));

    for choice in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut backend = load_backend(choice, &graph, &spec, None).unwrap();
        let mut fused = Fused::new(width, height, spec.classes.len());
        fuse(
            backend.infer(&input).unwrap(),
            spec.members,
            &spec.temperatures,
            &mut fused,
        );
        let pixels = width * height;
        let mut differing = 0;
        for (p, (&ours, &theirs)) in fused.mask.iter().zip(expected.as_raw()).enumerate() {
            if ours == theirs {
                continue;
            }
            differing += 1;
            let mut probabilities: Vec<f32> = (0..spec.classes.len())
                .map(|k| fused.probabilities[k * pixels + p])
                .collect();
            probabilities.sort_by(|a, b| b.total_cmp(a));
            assert!(
                probabilities[0] - probabilities[1] < 1e-3,
                "{choice:?}: pixel ({}, {}) is class {ours}, expected {theirs}, with a clear margin {:?}",
                p % width,
                p / width,
                &probabilities[..2]
            );
        }
        eprintln!("{choice:?}: {differing} of {pixels} mask pixels differ from expected_mask.png (near ties only)");
    }
}

/// The INT8 QDQ graph (the image's default graph) loads and runs on both backends and its mask
/// stays close to the fp32 one: at least 99% of the self-test pixels agree.
#[test]
fn int8_graph_runs_on_both_backends() {
    require_onnxruntime();
    let (_, spec) = common::default_model();
    let dir = common::default_model_dir();
    let graph = std::fs::read(dir.join("model.int8.onnx")).expect("model.int8.onnx");
    let layer = image::open(dir.join("selftest/input.png")).unwrap();
    let expected = image::open(dir.join("selftest/expected_mask.png")).unwrap().to_luma8();
    let mut input = vec![0.0f32; spec.input.len()];
    models::preprocess(&layer, &spec.input, &mut input).unwrap();
    let (width, height) = (spec.input.width as usize, spec.input.height as usize);
    for choice in [BackendChoice::Ort, BackendChoice::Tract] {
        let mut backend = load_backend(choice, &graph, &spec, None).unwrap();
        let mut fused = Fused::new(width, height, spec.classes.len());
        fuse(
            backend.infer(&input).unwrap(),
            spec.members,
            &spec.temperatures,
            &mut fused,
        );
        let agreeing = fused.mask.iter().zip(expected.as_raw()).filter(|(a, b)| a == b).count();
        let share = agreeing as f64 / (width * height) as f64;
        assert!(
            share >= 0.99,
            "{choice:?}: INT8 mask agrees with the fp32 one on {:.2}% of pixels",
            share * 100.0
        );
    }
}

/// Which graph `[model] precision = "auto"` picks rests on this: whether the ONNX Runtime the
/// box loads lists TensorRT (the JetPack build does, the CPU build these machines carry does
/// not), as onnxruntime itself says through Python; tract never has it.
#[test]
fn tensorrt_is_built_in_where_onnx_runtime_lists_it() {
    require_onnxruntime();
    assert!(!models::tensorrt_built_in(BackendChoice::Tract));
    let library = models::find_onnxruntime().expect("found (require_onnxruntime)");
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.X -> .../site-packages
    let Some(site_packages) = library.ancestors().nth(3).filter(|p| p.ends_with("site-packages")) else {
        eprintln!(
            "{}: not a Python package's library; only tract is checked",
            library.display()
        );
        return;
    };
    let python = site_packages.ancestors().nth(3).expect("prefix").join("bin/python");
    let listed = std::process::Command::new(&python)
        .args([
            "-c",
            "import onnxruntime; print('TensorrtExecutionProvider' in onnxruntime.get_available_providers())",
        ])
        .output()
        .expect("the package's python runs");
    let listed = String::from_utf8_lossy(&listed.stdout).trim() == "True";
    assert_eq!(models::tensorrt_built_in(BackendChoice::Ort), listed);
    assert_eq!(models::tensorrt_built_in(BackendChoice::Auto), listed);
}
