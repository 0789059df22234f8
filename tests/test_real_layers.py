"""Real powder-bed layers (assets/sample-build-real: held-out PBLM photographs, made beds as the
camera path makes them) through the box with the shipped model: each layer judged as its label
folder says, the same verdicts on ONNX Runtime and tract, and the real build replayed by `bedsight
demo --build real`. And the layer-level head (model format 1.1) on an image that has one
(tests/data/layer-head-256.bsimg, the default image before the real-bed model): its class and
confidence in what `bedsight analyze` shows, its REVIEW gate and threshold; an image of format 1.0
(no layer head) still loads and judges."""
import json
import re
import tomllib
from pathlib import Path

from conftest import ASSETS, REPO, analyze_json, run

REAL = ASSETS / "sample-build-real"
LABELS = tomllib.loads((REPO / "quantize" / "bedsight_train" / "label_maps" / "pblm.toml").read_text())["labels"]
LAYER_CLASSES = {"incompleteness", "streaking", "super-elevation"}
LAYER_HEAD = REPO / "tests" / "data" / "layer-head-256.bsimg"
OLD_IMAGE = REPO / "tests" / "data" / "model-format-1.0.bsimg"
# A clean layer of the 256x256 synthetic sample build the layer-head image was shipped with.
SYNTHETIC_CLEAN_256 = REPO / "tests" / "data" / "synthetic-clean-256.png"


def real_layers():
    layers = sorted(REAL.glob("*/*.png"))
    assert len(layers) >= 6, layers
    return layers


def test_each_real_layer_is_judged_as_its_label_folder_says():
    """A clean bed PASS with nothing found and familiar to the domain check; a defective bed
    stopped, by a rule on a class its label names (the verdict comes from the defect the layer
    carries, not from something else on the bed)."""
    layers = real_layers()
    result, objects = analyze_json(*layers)
    assert result.returncode == 0, result.stderr
    assert len(objects) == len(layers)
    for path, report in zip(layers, objects):
        label = LABELS[path.parent.name]
        found = {d["class"] for d in report["defects"]}
        assert report["layer_class"] is None, report["layer_class"]  # the shipped model has no layer head
        if not label:
            assert (report["verdict"], report["reasons"], found) == ("PASS", [], set()), (path.name, report["reasons"])
            assert report["domain"]["familiar"], (path.name, report["domain"])
            continue
        assert report["verdict"] in ("RECOAT", "PAUSE"), (path.name, report["verdict"], report["reasons"])
        fired = {reason.split(":")[0] for reason in report["reasons"] if "→" in reason}
        assert fired & set(label), (path.name, label, report["reasons"])


def test_a_part_standing_proud_stops_the_printer_however_small():
    """The Deformation bed whose tip the box finds (14 mm², a tip about 4 mm across, dragging the
    scratches beside it) is PAUSE by the super-elevation rule: a recoat cannot fix a part standing
    proud, and under the former 15 mm² limit the box told the operator of incompleteness and
    scratches alone and asked for a recoat. The bed where it finds no tip is RECOAT."""
    layers = sorted((REAL / "Deformation_With_Scratch").glob("*.png"))
    result, objects = analyze_json(*layers)
    assert result.returncode == 0, result.stderr
    tips = [[d for d in report["defects"] if d["class"] == "super-elevation"] for report in objects]
    assert [len(t) for t in tips] == [1, 0], [(p.name, t) for p, t in zip(layers, tips)]
    (tip,) = tips[0]
    assert 5.0 <= tip["area_mm2"] < 15.0, tip
    assert objects[0]["verdict"] == "PAUSE", objects[0]["reasons"]
    assert objects[0]["reasons"][0] == f"super-elevation: largest defect {tip['area_mm2']:.2f} mm² > 0.00 mm² → PAUSE", objects[0]["reasons"]
    assert objects[1]["verdict"] == "RECOAT", objects[1]["reasons"]
    assert not any(r.startswith("super-elevation") for r in objects[1]["reasons"]), objects[1]["reasons"]


def test_the_members_disagree_on_defective_real_beds_not_on_the_clean_one():
    """Issue 19: members that never disagree (one run's checkpoints, which differ in a small head)
    give every layer an uncertainty score of 0, and the score the PLC reads says nothing. The
    shipped members (two checkpoints of one run and a head of its own random draw on their trunk)
    are unsure of part of every defective real bed, and of none of the clean one."""
    layers = real_layers()
    result, objects = analyze_json(*layers)
    assert result.returncode == 0, result.stderr
    for path, report in zip(layers, objects):
        score = report["uncertainty"]["score"]
        if LABELS[path.parent.name]:
            assert score > 0.0, (path.name, report["uncertainty"])
        else:
            assert score == 0.0, (path.name, report["uncertainty"])


def test_demo_replays_the_real_build(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--build", "real", "--out", out)
    assert result.returncode == 0, result.stderr
    layers = real_layers()
    lines = [l for l in result.stdout.splitlines() if re.match(r"\[\s*\d+/\d+\] layer", l)]
    assert len(lines) == len(layers), result.stdout
    # each line ends with the layer's file, as the build holds it
    assert [l.rsplit("  ", 1)[-1] for l in lines] == [p.relative_to(REAL).as_posix() for p in layers], lines
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(l["image"]).as_posix() for l in summary["layers"]] == [p.relative_to(REAL).as_posix() for p in layers]
    # what analyze says of each layer, the demo says too
    _, objects = analyze_json(*layers)
    assert [l["verdict"] for l in summary["layers"]] == [o["verdict"] for o in objects]
    assert all(l["layer_class"] is None for l in summary["layers"])


def test_the_layer_head_class_and_its_confidence_are_in_what_analyze_shows():
    layers = real_layers()
    result, objects = analyze_json("--model", LAYER_HEAD, *layers)
    assert result.returncode == 0, result.stderr
    assert len(objects) == len(layers)
    for path, report in zip(layers, objects):
        call = report["layer_class"]
        assert call is not None, f"{path.name}: no layer_class from the layer-head image"
        assert set(call["probabilities"]) == LAYER_CLASSES
        assert all(0.0 <= p <= 1.0 for p in call["probabilities"].values())
        top = max(call["probabilities"], key=call["probabilities"].get)
        if call["defective"]:
            assert call["class"] == top and call["confidence"] == call["probabilities"][top] >= call["threshold"]
        else:
            assert call["class"] == "clean" and abs(call["confidence"] - (1 - call["probabilities"][top])) < 1e-3
        # the gate: called defective by the head, nothing segmented -> REVIEW, with the reason
        if call["defective"] and not report["defects"]:
            assert report["verdict"] == "REVIEW", report
            assert any(r.startswith(f"layer classifier: {top} p = ") for r in report["reasons"]), report["reasons"]

    text = run("analyze", "--model", LAYER_HEAD, layers[0])
    assert text.returncode == 0, text.stderr
    assert re.search(r"layer class (clean|incompleteness|streaking|super-elevation) \(\d+%\)", text.stdout), text.stdout


def blind_config(tmp_path):
    """The shipped configuration with segmentation told to measure nothing (every component below
    min_defect_area_mm2)."""
    config = (ASSETS / "bedsight.toml").read_text().replace("min_defect_area_mm2 = 5.0 ", "min_defect_area_mm2 = 1000000.0 ")
    assert "min_defect_area_mm2 = 1000000.0" in config
    (tmp_path / "blind.toml").write_text(config)
    return tmp_path / "blind.toml"


def test_a_layer_the_classifier_calls_defective_with_nothing_segmented_is_review(tmp_path):
    """Segmentation blind: the real layers the head calls defective are REVIEW with the
    classifier's reason; a clean synthetic layer, which the head calls clean, stays PASS."""
    layers = real_layers()
    result, objects = analyze_json("--model", LAYER_HEAD, "--config", blind_config(tmp_path), SYNTHETIC_CLEAN_256, *layers)
    assert result.returncode == 0, result.stderr
    synthetic, real = objects[0], objects[1:]
    assert synthetic["defects"] == [] and synthetic["layer_class"]["class"] == "clean" and synthetic["verdict"] == "PASS", synthetic
    for report in real:
        call = report["layer_class"]
        assert report["defects"] == []
        if call["defective"]:
            assert report["verdict"] == "REVIEW", report
            [reason] = report["reasons"]
            assert reason.startswith(f"layer classifier: {call['class']} p = ") and reason.endswith("but segmentation found no defect → REVIEW"), reason
        else:
            assert report["verdict"] == "PASS", report
    # this head calls real powder defective (most of these layers are): the gate has work to do
    assert sum(r["verdict"] == "REVIEW" for r in real) >= 1, [r["layer_class"] for r in real]


def test_the_review_threshold_is_the_configurations(tmp_path):
    """Nothing segmented (as above) and review_threshold = 1.0: a layer the head called defective
    at 0.5 is now PASS unless its probability is exactly 1; the class and confidence are still
    shown. An out-of-range threshold is refused by name."""
    blind = blind_config(tmp_path)
    (tmp_path / "strict.toml").write_text(blind.read_text().replace("review_threshold = 0.5", "review_threshold = 1.0"))
    layers = real_layers()
    _, default = analyze_json("--model", LAYER_HEAD, "--config", blind, *layers)
    _, strict = analyze_json("--model", LAYER_HEAD, "--config", tmp_path / "strict.toml", *layers)
    assert any(r["verdict"] == "REVIEW" for r in default)
    for before, after in zip(default, strict):
        assert after["layer_class"]["threshold"] == 1.0
        top = max(after["layer_class"]["probabilities"].values())
        if before["verdict"] == "REVIEW" and top < 1.0:
            assert after["verdict"] == "PASS" and after["layer_class"]["class"] == "clean", after
        assert after["layer_class"]["probabilities"] == before["layer_class"]["probabilities"]
    bad = (ASSETS / "bedsight.toml").read_text().replace("review_threshold = 0.5", "review_threshold = 1.5")
    (tmp_path / "bad.toml").write_text(bad)
    result = run("analyze", "--config", tmp_path / "bad.toml", layers[0])
    assert result.returncode != 0 and "layer_classifier.review_threshold must be in (0, 1], got 1.5" in result.stderr, result.stderr


def test_a_model_image_without_a_layer_head_still_loads_and_judges():
    """The default image of before the layer head (format 1.0): verified, loaded, run; no layer
    class, and a clean layer of its own synthetic sample build still PASS."""
    info = run("image", "info", OLD_IMAGE)
    assert info.returncode == 0, info.stderr
    assert re.search(r"format\s+1\.0", info.stdout) and re.search(r"layer head\s+none", info.stdout), info.stdout
    result, [clean, real] = analyze_json("--model", OLD_IMAGE, SYNTHETIC_CLEAN_256, real_layers()[0])
    assert result.returncode == 0, result.stderr
    assert clean["layer_class"] is None and clean["verdict"] == "PASS", clean
    assert real["layer_class"] is None and real["verdict"] in ("PASS", "RECOAT", "REVIEW", "PAUSE"), real
    assert not any(r.startswith("layer classifier:") for r in real["reasons"])


def test_onnx_runtime_and_tract_judge_real_layers_alike(tmp_path):
    """The box falls back to tract when ONNX Runtime is missing: the PLC must get the same
    verdict. Under `precision = "auto"` both run the fp32 graph on these CPUs (the INT8 graph is
    slower there, and tract's QDQ arithmetic differs from ONNX Runtime's)."""
    import numpy as np
    from PIL import Image
    layers = real_layers()
    judged = {}
    for backend in ("ort", "tract"):
        out = tmp_path / backend
        result, objects = analyze_json("--backend", backend, "--out", out, *layers)
        assert result.returncode == 0, result.stderr
        assert [o["backend"].split(" ")[0] for o in objects] == [backend] * len(layers), [o["backend"] for o in objects]
        assert {o["model"]["graph"] for o in objects} == {"fp32"}
        masks = [np.array(Image.open(out / f"{path.stem}.mask.png")) for path in layers]
        judged[backend] = (objects, masks)
    (ort, ort_masks), (tract, tract_masks) = judged["ort"], judged["tract"]
    number = re.compile(r"\d+\.\d+")
    for path, a, b, mask_a, mask_b in zip(layers, ort, tract, ort_masks, tract_masks):
        # the same verdict for the same rules; the areas they measured within 0.1 % (a pixel
        # of a 1024 x 1024 mask the two runtimes' float rounding put on either side)
        assert a["verdict"] == b["verdict"], (path.name, a["reasons"], b["reasons"])
        assert [number.sub("#", r) for r in a["reasons"]] == [number.sub("#", r) for r in b["reasons"]], (path.name, a["reasons"], b["reasons"])
        for x, y in zip((float(v) for r in a["reasons"] for v in number.findall(r)), (float(v) for r in b["reasons"] for v in number.findall(r))):
            assert abs(x - y) <= 1e-3 * max(abs(x), abs(y)), (path.name, a["reasons"], b["reasons"])
        assert a["layer_class"] == b["layer_class"], path.name
        agreement = float((mask_a == mask_b).mean())
        assert agreement >= 0.999, (path.name, agreement)
