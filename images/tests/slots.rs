//! A/B slots: install into the idle slot, atomic pointers, rollback, refusal on a failed
//! self-test, and recovery after an install killed between unpack and switch.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use images::{active_generation, pack, ImageError, Manifest, ModelImage, PackInput, SelfTestOutcome, Slot, Slots};
use tempfile::TempDir;

const MANIFEST: &str = r##"
format_version = "1.0"
name = "slot-test"
version = "VERSION"
architecture = "isdnet-sr"

[input]
width = 8
height = 8
channels = 1
mean = [0.5]
std = [0.25]

[ensemble]
members = 1
temperatures = [1.0]

[[classes]]
name = "background"
colour = "#000000"
defect = false
"##;

/// A packed image (graphs are stand-in bytes: slots never run them) with a self-test.
fn image(dir: &Path, version: &str) -> ModelImage {
    let graph = dir.join(format!("{version}.onnx"));
    fs::write(&graph, format!("graph {version}")).unwrap();
    let png = dir.join("sample.png");
    fs::write(&png, b"\x89PNG\r\n\x1a\nstand-in").unwrap();
    let manifest = Manifest::parse(&MANIFEST.replace("VERSION", version), "test").unwrap();
    let out = dir.join(format!("{version}.bsimg"));
    let input = PackInput {
        manifest,
        fp32_graph: &graph,
        int8_graph: None,
        selftest: Some((&png, &png)),
        training_weights: None,
        signing_key: None,
    };
    pack(&input, &out).unwrap();
    ModelImage::open(&out).unwrap()
}

fn passing(_: &Path, _: &ModelImage) -> Result<SelfTestOutcome, String> {
    Ok(SelfTestOutcome {
        agreement: 1.0,
        pixels: 64,
        backend: "test".into(),
        graph: "int8".into(),
        class_iou: BTreeMap::from([("streaking".to_string(), 0.93)]),
    })
}

fn state() -> (TempDir, PathBuf) {
    let temp = TempDir::new().unwrap();
    let state = temp.path().join("state");
    (temp, state)
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn install_unpacks_into_slot_a_then_b_and_switches_atomically() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    assert_eq!(slots.active().unwrap(), None);
    assert_eq!(active_generation(&state).unwrap(), None);

    let first = image(temp.path(), "1");
    let report = slots.install(&first, Some("alice"), passing).unwrap();
    assert_eq!((report.slot, report.previous), (Slot::A, None));
    assert_eq!(fs::read_to_string(state.join("active")).unwrap(), "a\n");
    assert!(!state.join("previous").exists());
    assert_eq!(
        tree(&slots.slot_dir(Slot::A)),
        [
            "image.bsimg",
            "manifest.toml",
            "model.onnx",
            "selftest/expected_mask.png",
            "selftest/input.png",
            "status.toml"
        ]
    );
    let status = slots.status(Slot::A).unwrap().unwrap();
    assert_eq!((status.name.as_str(), status.version.as_str()), ("slot-test", "1"));
    assert_eq!(status.manifest_sha256, first.manifest_sha256());
    assert_eq!(status.signed_by.as_deref(), Some("alice"));
    assert!(status.selftest_passed());
    assert_eq!(
        status.selftest_class_iou,
        BTreeMap::from([("streaking".to_string(), 0.93)])
    );
    assert_eq!(
        active_generation(&state).unwrap().unwrap().manifest_sha256,
        first.manifest_sha256()
    );

    let second = image(temp.path(), "2");
    let report = slots.install(&second, None, passing).unwrap();
    assert_eq!((report.slot, report.previous), (Slot::B, Some(Slot::A)));
    assert_eq!(fs::read_to_string(state.join("active")).unwrap(), "b\n");
    assert_eq!(fs::read_to_string(state.join("previous")).unwrap(), "a\n");
    let generation = slots.active_generation().unwrap().unwrap();
    assert_eq!(
        (generation.slot, generation.manifest_sha256),
        (Slot::B, second.manifest_sha256())
    );
    let (slot, path, status) = slots.active_image().unwrap().unwrap();
    assert_eq!((slot, status.version.as_str()), (Slot::B, "2"));
    assert_eq!(
        ModelImage::open(&path).unwrap().manifest_sha256(),
        second.manifest_sha256()
    );

    // No temporary pointer, lock or staging folder is left behind.
    let mut top: Vec<String> = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["active", "previous", "slots"]);
    let mut in_slots: Vec<String> = fs::read_dir(state.join("slots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    in_slots.sort();
    assert_eq!(in_slots, ["a", "b"]);

    // A third install replaces the previous slot (a), keeping the active one (b) as previous.
    let third = image(temp.path(), "3");
    let report = slots.install(&third, None, passing).unwrap();
    assert_eq!((report.slot, report.previous), (Slot::A, Some(Slot::B)));
    assert_eq!(slots.status(Slot::A).unwrap().unwrap().version, "3");
    assert_eq!(slots.status(Slot::B).unwrap().unwrap().version, "2");
}

#[test]
fn rollback_switches_back_and_forth_and_refuses_without_a_previous_image() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    let message = slots.rollback().unwrap_err().to_string();
    assert!(message.contains("nothing to roll back"), "{message}");

    slots.install(&image(temp.path(), "1"), None, passing).unwrap();
    let message = slots.rollback().unwrap_err().to_string();
    assert!(message.contains("no previous model image"), "{message}");

    slots.install(&image(temp.path(), "2"), None, passing).unwrap();
    assert_eq!(slots.rollback().unwrap(), (Slot::A, Slot::B));
    assert_eq!(slots.active().unwrap(), Some(Slot::A));
    assert_eq!(slots.previous().unwrap(), Some(Slot::B));
    assert_eq!(slots.rollback().unwrap(), (Slot::B, Slot::A));
    assert_eq!(
        slots.status(slots.active().unwrap().unwrap()).unwrap().unwrap().version,
        "2"
    );

    let views = slots.list().unwrap();
    assert!(views[1].active && views[0].previous);
}

#[test]
fn a_failed_self_test_changes_nothing() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    slots.install(&image(temp.path(), "1"), None, passing).unwrap();
    slots.install(&image(temp.path(), "2"), None, passing).unwrap();
    let before = (tree(&state), fs::read(state.join("active")).unwrap());

    let low = |_: &Path, _: &ModelImage| {
        Ok(SelfTestOutcome {
            agreement: 0.5,
            pixels: 64,
            backend: "test".into(),
            graph: "int8".into(),
            class_iou: BTreeMap::new(),
        })
    };
    let error = slots.install(&image(temp.path(), "3"), None, low).unwrap_err();
    assert!(matches!(error, ImageError::SelfTest { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("50.00%") && message.contains("99%") && message.contains("not activated"),
        "{message}"
    );
    assert_eq!(before, (tree(&state), fs::read(state.join("active")).unwrap()));

    // 99.5% of the pixels agree, but the graph lost the streaks: the background hid it.
    let lost_class = |_: &Path, _: &ModelImage| {
        Ok(SelfTestOutcome {
            agreement: 0.995,
            pixels: 65_536,
            backend: "test".into(),
            graph: "int8".into(),
            class_iou: BTreeMap::from([("streaking".to_string(), 0.0), ("incompleteness".to_string(), 0.91)]),
        })
    };
    let message = slots
        .install(&image(temp.path(), "3"), None, lost_class)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("streaking IoU 0.00")
            && !message.contains("incompleteness")
            && message.contains("0.80 required"),
        "{message}"
    );
    assert_eq!(before, (tree(&state), fs::read(state.join("active")).unwrap()));

    let broken = |_: &Path, _: &ModelImage| Err("the graph does not load".to_string());
    let message = slots
        .install(&image(temp.path(), "4"), None, broken)
        .unwrap_err()
        .to_string();
    assert!(message.contains("the graph does not load"), "{message}");
    assert_eq!(before, (tree(&state), fs::read(state.join("active")).unwrap()));
    // The previous image is still there to roll back to.
    assert_eq!(slots.rollback().unwrap(), (Slot::A, Slot::B));
}

#[test]
fn an_install_killed_between_unpack_and_switch_is_cleaned_up_on_the_next_open() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    let first = image(temp.path(), "1");
    slots.install(&first, None, passing).unwrap();

    // The self-test runs after the unpack and before the switch; a panic there stops the install
    // as a kill would: no clean-up code runs.
    let second = image(temp.path(), "2");
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = slots.install(&second, None, |staged, _| {
            assert!(staged.is_file());
            panic!("killed");
        });
    }));
    assert!(killed.is_err());
    assert!(state.join("slots/install.lock").exists());
    assert!(state.join("slots/b.staging/model.onnx").exists());
    assert_eq!(fs::read_to_string(state.join("active")).unwrap(), "a\n");

    let reopened = Slots::open(&state).unwrap();
    let recovered = reopened.recovered.join("\n");
    assert!(
        recovered.contains("b.staging") && recovered.contains("did not finish"),
        "{recovered}"
    );
    assert!(
        recovered.contains("slot a") && recovered.contains("unchanged"),
        "{recovered}"
    );
    assert!(!state.join("slots/install.lock").exists());
    assert!(!state.join("slots/b.staging").exists());
    assert_eq!(reopened.active().unwrap(), Some(Slot::A));
    assert_eq!(
        active_generation(&state).unwrap().unwrap().manifest_sha256,
        first.manifest_sha256()
    );
    // Opening again finds nothing more to do.
    assert!(Slots::open(&state).unwrap().recovered.is_empty());
}

#[test]
fn a_slot_moved_in_but_never_activated_is_removed_and_a_live_install_is_left_alone() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    slots.install(&image(temp.path(), "1"), None, passing).unwrap();
    // As if a process (long gone) had moved slot b into place and died before switching.
    let b = slots.slot_dir(Slot::B);
    fs::create_dir_all(&b).unwrap();
    fs::copy(slots.slot_dir(Slot::A).join("status.toml"), b.join("status.toml")).unwrap();
    let lock = state.join("slots/install.lock");
    fs::write(
        &lock,
        "slot = \"b\"\npid = 4294967295\nstarted_at = \"2026-11-25T00:00:00Z\"\n",
    )
    .unwrap();
    let reopened = Slots::open(&state).unwrap();
    assert!(
        reopened.recovered.join("\n").contains("never activated"),
        "{:?}",
        reopened.recovered
    );
    assert!(!b.exists() && !lock.exists());
    assert_eq!(reopened.active().unwrap(), Some(Slot::A));

    // A lock held by a running process (pid 1, always running) is another install at work.
    fs::create_dir_all(state.join("slots/b.staging")).unwrap();
    fs::write(&lock, "slot = \"b\"\npid = 1\nstarted_at = \"2026-11-25T00:00:00Z\"\n").unwrap();
    let mut reopened = Slots::open(&state).unwrap();
    assert!(reopened.recovered.is_empty());
    assert!(state.join("slots/b.staging").exists());
    let message = reopened
        .install(&image(temp.path(), "2"), None, passing)
        .unwrap_err()
        .to_string();
    assert!(message.contains("another install is running"), "{message}");
    assert!(reopened
        .rollback()
        .unwrap_err()
        .to_string()
        .contains("install is running"));
}

#[test]
fn a_damaged_pointer_is_named() {
    let (_temp, state) = state();
    let slots = Slots::open(&state).unwrap();
    fs::write(state.join("active"), "c\n").unwrap();
    let message = slots.active().unwrap_err().to_string();
    assert!(message.contains("active") && message.contains("\"c\""), "{message}");
    fs::write(state.join("active"), "b\n").unwrap();
    let message = active_generation(&state).unwrap_err().to_string();
    assert!(
        message.contains("slot b") && message.contains("no installed image"),
        "{message}"
    );
}

#[test]
fn an_image_without_a_self_test_is_refused() {
    let (temp, state) = state();
    let mut slots = Slots::open(&state).unwrap();
    let graph = temp.path().join("g.onnx");
    fs::write(&graph, "graph").unwrap();
    let input = PackInput {
        manifest: Manifest::parse(&MANIFEST.replace("VERSION", "1"), "test").unwrap(),
        fp32_graph: &graph,
        int8_graph: None,
        selftest: None,
        training_weights: None,
        signing_key: None,
    };
    let out = temp.path().join("bare.bsimg");
    pack(&input, &out).unwrap();
    let message = slots
        .install(&ModelImage::open(&out).unwrap(), None, passing)
        .unwrap_err()
        .to_string();
    assert!(message.contains("no self-test sample"), "{message}");
    assert_eq!(slots.active().unwrap(), None);
}
