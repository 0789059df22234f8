"""`bedsight analyze` on the sample build with the default model, as an operator would run it."""
import struct

import numpy as np
from PIL import Image

from conftest import ASSETS, MODEL_SIZE, SAMPLE_BUILD, analyze_json, run

DEFECT_CLASSES = {"super-elevation", "incompleteness", "hopping", "streaking"}


def test_every_planted_defect_is_found_with_its_class_and_clean_layers_pass(ledger):
    files = sorted(ledger)
    result, objects = analyze_json(*[SAMPLE_BUILD / f for f in files])
    assert result.returncode == 0, result.stderr
    assert len(objects) == len(files)
    for name, report in zip(files, objects):
        assert report["image"].endswith(name)
        found = {d["class"] for d in report["defects"]}
        planted_defects = ledger[name] & DEFECT_CLASSES
        if planted_defects:
            assert planted_defects <= found, f"{name}: planted {sorted(planted_defects)}, found {sorted(found)}"
            assert report["verdict"] != "PASS", f"{name}: planted {sorted(planted_defects)} but PASS"
        elif not ledger[name]:
            assert report["verdict"] == "PASS", f"{name}: clean layer got {report['verdict']}: {report['reasons']}"
            assert found == set(), f"{name}: clean layer, found {sorted(found)}"


def test_the_json_record_carries_what_the_issue_promises(ledger):
    name = next(f for f, planted in sorted(ledger.items()) if planted & DEFECT_CLASSES)
    _, [report] = analyze_json(SAMPLE_BUILD / name)
    assert report["backend"]
    assert set(report["uncertainty"]) >= {"mean", "max"}
    assert 0 <= report["uncertainty"]["mean"] <= report["uncertainty"]["max"] < 1
    assert set(report["timing_ms"]) >= {"rectify_ms", "infer_ms", "fuse_ms", "refine_ms", "measure_ms", "decide_ms", "total_ms"}
    defect = report["defects"][0]
    for key in ["class", "area_px", "area_mm2", "bbox", "centroid", "equivalent_diameter_mm", "ellipse", "mean_uncertainty"]:
        assert key in defect, key
    assert set(defect["ellipse"]) == {"theta_deg", "semi_major_px", "semi_minor_px"}
    # 250 mm over the model's width in pixels: one pixel is (250/width)^2 mm².
    assert abs(defect["area_mm2"] - defect["area_px"] * (250 / MODEL_SIZE[0]) ** 2) < 1e-2
    x, y, w, h = defect["bbox"]
    assert x <= defect["centroid"][0] <= x + w and y <= defect["centroid"][1] <= y + h


def test_out_writes_mask_uncertainty_and_overlay(tmp_path, ledger):
    name = next(f for f, planted in sorted(ledger.items()) if planted & DEFECT_CLASSES)
    stem = name.rsplit(".", 1)[0]
    _, [report] = analyze_json("--out", tmp_path, SAMPLE_BUILD / name)
    mask = np.array(Image.open(tmp_path / f"{stem}.mask.png"))
    assert mask.dtype == np.uint8 and mask.shape == (MODEL_SIZE[1], MODEL_SIZE[0])
    assert mask.max() < 6
    # The biggest defect's pixels carry its class in the mask.
    biggest = max(report["defects"], key=lambda d: d["area_px"])
    x, y, w, h = biggest["bbox"]
    class_names = ["background", "super-elevation", "incompleteness", "hopping", "streaking", "lattice"]
    assert (mask[y:y + h, x:x + w] == class_names.index(biggest["class"])).sum() >= biggest["area_px"]
    uncertainty = Image.open(tmp_path / f"{stem}.uncertainty.tiff")
    assert uncertainty.mode == "F" and uncertainty.size == MODEL_SIZE
    values = np.array(uncertainty)
    assert abs(float(values.max()) - report["uncertainty"]["max"]) < 1e-5
    overlay = Image.open(tmp_path / f"{stem}.overlay.png")
    assert overlay.mode == "RGB" and overlay.size == MODEL_SIZE


def test_a_missing_image_is_named_and_the_others_are_still_analysed(ledger):
    good = SAMPLE_BUILD / sorted(ledger)[0]
    result, objects = analyze_json(SAMPLE_BUILD / "no-such-layer.png", good)
    assert result.returncode != 0
    assert "no-such-layer.png" in result.stderr
    assert [o["verdict"] for o in objects][0] == "FAULT"
    assert objects[1]["verdict"] in {"PASS", "RECOAT", "REVIEW", "PAUSE"}


def test_wrong_channel_count_and_wrong_shape_are_refused_by_name(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (256, 256), (120, 120, 120, 255)).save(rgba)
    wide = tmp_path / "wide.png"
    Image.new("L", (512, 256), 120).save(wide)
    result, objects = analyze_json(rgba, wide)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 2, result.stderr
    assert "rgba.png" in lines[0] and "4 channels" in lines[0]
    assert "wide.png" in lines[1] and "aspect" in lines[1]
    assert [o["verdict"] for o in objects] == ["FAULT", "FAULT"]


def test_a_black_frame_is_a_fault_not_a_verdict(tmp_path):
    black = tmp_path / "black.png"
    Image.new("L", (256, 256), 0).save(black)
    result, [report] = analyze_json(black)
    assert result.returncode != 0
    assert report["verdict"] == "FAULT" and "black frame" in report["fault"]
    assert report["defects"] == []


def test_a_model_image_with_a_changed_byte_is_refused(tmp_path, ledger):
    image = bytearray((ASSETS / "default.bsimg").read_bytes())
    # Flip a byte well inside the first graph (past the manifest's tar entry).
    image[len(image) // 2] ^= 0xFF
    bad = tmp_path / "tampered.bsimg"
    bad.write_bytes(bytes(image))
    result = run("analyze", "--model", bad, SAMPLE_BUILD / sorted(ledger)[0])
    assert result.returncode != 0
    assert "tampered.bsimg" in result.stderr and "sha256" in result.stderr
    assert result.stdout == ""


def test_a_configuration_with_an_unknown_key_is_refused(tmp_path, ledger):
    config = tmp_path / "box.toml"
    config.write_text("[bed]\nwidth_mm = 250\nheight_mm = 250\ncorner = 1\n")
    result = run("analyze", "--config", config, SAMPLE_BUILD / sorted(ledger)[0])
    assert result.returncode != 0
    assert "box.toml" in result.stderr and "corner" in result.stderr
