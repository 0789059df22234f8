"""bedsight_train.build_replay: a folder of layers replayed as a build through the real
`bedsight run` (replay camera, timer trigger, journal read back), and its summary by hand."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bedsight_train import build_replay as br
from bedsight_train import real_eval as re_
from bedsight_train.common import BadInput
from bedsight_train.layers import load_label_map

REPO = Path(__file__).resolve().parents[2]
PBLM = Path(__file__).resolve().parent / "data" / "pblm"
MODEL = REPO / "assets" / "default.bsimg"
CONFIG = REPO / "assets" / "bedsight.toml"
CLEAN = "No_Defect/converted_ 0018.jpg"
UNEVEN = "Powder_Uneven/converted_ 0646.jpg"
REFERENCE = "No_Defect/converted_ 0001.jpg"


def _record(layer, verdict, rule="", outcome=""):
    return {"layer": layer, "verdict": verdict, "rule": rule, "reason": f"{rule} said {verdict}", "recoat_outcome": outcome}


def test_a_build_summarised_by_hand():
    records = [
        _record(1, "PASS"),
        _record(2, "RECOAT", "rules.incompleteness.limit"),
        _record(2, "PASS", outcome="fixed"),
        _record(3, "RECOAT", "rules.streaking.limit"),
        _record(3, "PAUSE", "rules.incompleteness.track.after_recoat", outcome="not fixed"),
        _record(4, "REVIEW", "domain"),
    ]
    names = [f"F/{n}.jpg" for n in range(6)]
    s = br.summarise(records, names)
    assert s["photographs"] == 6 and s["layers"] == 4
    assert s["verdicts"] == {"PASS": 2, "RECOAT": 2, "REVIEW": 1, "PAUSE": 1, "FAULT": 0}
    assert s["stops"] == 2
    assert s["first_stop"] == {
        "photograph": 5, "name": "F/4.jpg", "layer": 3, "verdict": "PAUSE",
        "rule": "rules.incompleteness.track.after_recoat", "reason": "rules.incompleteness.track.after_recoat said PAUSE",
    }
    assert s["rules"] == {"rules.incompleteness.limit": 1, "rules.streaking.limit": 1, "rules.incompleteness.track.after_recoat": 1, "domain": 1}
    assert s["rule_classes"] == {"incompleteness": 2, "streaking": 1}
    assert (s["recoats_fixed"], s["recoats_not_fixed"]) == (1, 1)
    # a build the box never stopped
    calm = br.summarise([_record(1, "PASS"), _record(2, "PASS")], ["a", "b"])
    assert calm["first_stop"] is None and calm["stops"] == 0 and calm["rule_classes"] == {}
    with pytest.raises(ValueError):
        br.summarise(records, names[:2])


def test_rule_classes():
    assert br.rule_class("rules.super-elevation.track.max_layers") == "super-elevation"
    assert br.rule_class("rules.streaking.limit") == "streaking"
    assert br.rule_class("recoat.max_retries") is None
    assert br.rule_class("fault") is None


def test_the_run_configuration_adds_camera_trigger_and_model_to_the_analysis_one(tmp_path):
    text = br.run_config(CONFIG.read_text(), tmp_path / "m.bsimg", tmp_path / "frames")
    doc = tomllib.loads(text)
    assert doc["model"]["image"] == str((tmp_path / "m.bsimg").resolve())
    assert doc["model"]["min_defect_area_mm2"] == tomllib.loads(CONFIG.read_text())["model"]["min_defect_area_mm2"]
    assert doc["camera"] == {"kind": "replay", "folder": str((tmp_path / "frames").resolve())}
    assert doc["trigger"] == {"kind": "timer", "interval_ms": br.INTERVAL_MS}
    assert doc["dashboard"] == {"enabled": False} and doc["record"] == {"enabled": False}
    # the rules are the analysis configuration's, untouched
    assert doc["rules"] == tomllib.loads(CONFIG.read_text())["rules"]
    # no [model] table: one is added
    assert tomllib.loads(br.run_config("[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n", tmp_path / "m.bsimg", tmp_path / "f"))["model"]["image"].endswith("m.bsimg")


@pytest.mark.parametrize("extra, named", [('[camera]\nkind = "v4l2"\n', "[camera]"), ('[dashboard]\nenabled = true\n', "[dashboard]")])
def test_a_configuration_with_its_own_camera_or_dashboard_is_refused(tmp_path, extra, named):
    with pytest.raises(BadInput, match=r"it has \[.*" + named.strip("[]")):
        br.run_config(CONFIG.read_text() + "\n" + extra, tmp_path / "m.bsimg", tmp_path / "f")
    with pytest.raises(BadInput, match=r"\[model\] image is set"):
        br.run_config('[model]\nimage = "x.bsimg"\n', tmp_path / "m.bsimg", tmp_path / "f")


def _camera_frames(tmp_path, binary):
    """The two repository layers of the 1024 camera as turned PNGs, and its configuration (bed
    corners, flat field from the reference layer), as real_eval sets the box up."""
    lmap = load_label_map(Path("pblm"))
    camera = lmap.camera("No_Defect")
    work = tmp_path / "work"
    pngs = {}
    for name in (CLEAN, UNEVEN):
        layer = re_.Layer(name=name, label=name.split("/")[0], source=PBLM / name, split="test")
        re_.write_turned_png(layer, work / "layers" / layer.label, lmap.quarter_turns)
        layer.corners_px = re_.bed_corners_px(camera, *layer.png_size)
        pngs[name] = layer
    config, _ = re_._camera_config(binary, CONFIG, camera, pngs[CLEAN], [PBLM / REFERENCE], work, lmap.quarter_turns)
    return {n: l.png for n, l in pngs.items()}, config


def test_the_photograph_after_a_recoat_is_the_re_spread_layer(tmp_path, require_bin):
    """An uneven bed (RECOAT under the shipped configuration) followed by a clean one: the box
    judges the clean photograph as layer 1 spread again, and the recoat as fixed."""
    binary = require_bin
    pngs, config = _camera_frames(tmp_path, binary)
    alone = re_.run_box(binary, MODEL, config, [pngs[UNEVEN], pngs[CLEAN]], tmp_path / "alone")
    # judged alone, as real_eval judges them
    assert alone[str(pngs[UNEVEN])]["verdict"] == "RECOAT"
    assert alone[str(pngs[CLEAN])]["verdict"] == "PASS"

    records = br.replay(binary, MODEL, config.read_text(), [pngs[UNEVEN], pngs[CLEAN]], tmp_path / "build")

    assert [(r["layer"], r["verdict"], r["recoat_outcome"]) for r in records] == [(1, "RECOAT", ""), (1, "PASS", "fixed")]
    assert records[0]["rule"] == "rules.incompleteness.limit"
    s = br.summarise(records, [UNEVEN, CLEAN])
    assert s["layers"] == 1 and s["first_stop"] is None and s["recoats_fixed"] == 1


def test_an_uneven_bed_still_there_after_its_recoat_pauses_the_build(tmp_path, require_bin):
    """The uneven bed, then the clean one, then the uneven one again: layer 2's incompleteness is
    still there after its recoat (the third photograph stands in for the re-spread bed), so the
    incompleteness track's after_recoat rule PAUSEs, the first stop for a person."""
    binary = require_bin
    pngs, config = _camera_frames(tmp_path, binary)
    order = [pngs[CLEAN], pngs[UNEVEN], pngs[UNEVEN]]
    # the same photograph twice in a row is the box's frozen-camera FAULT: a copy that differs
    # by grain is not at hand, so the re-spread bed is made: the photograph's grain (what a
    # 3-px blur takes away) moved 16 px along the recoat inside the middle of the bed, where the
    # box compares grain (it covers the middle half of the bed's box), and the rest (the bed's
    # lighting, its uneven patch, its rim) left where it was. (Mirrored top to bottom, as it once
    # was, its lighting stood upside down under the camera's flat field, and the box rightly
    # found what that made of the rim; the whole photograph moved brings the chamber's wall in.)
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    respread = tmp_path / "uneven-respread.png"
    with Image.open(pngs[UNEVEN]) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    lighting = ndimage.gaussian_filter(pixels, 3)
    grain = pixels - lighting
    h, w = pixels.shape
    middle = np.s_[h // 5:h - h // 5, w // 5:w - w // 5]
    grain[middle] = np.roll(grain[middle], 16, axis=1)
    Image.fromarray(np.clip(lighting + grain + 0.5, 0, 255).astype(np.uint8)).save(respread)
    order[2] = respread

    records = br.replay(binary, MODEL, config.read_text(), order, tmp_path / "build")

    assert [(r["layer"], r["verdict"]) for r in records] == [(1, "PASS"), (2, "RECOAT"), (2, "PAUSE")]
    assert records[2]["rule"] == "rules.incompleteness.track.after_recoat"
    assert records[2]["recoat_outcome"] == "not fixed"
    s = br.summarise(records, ["clean", "uneven", "uneven re-spread"])
    assert s["first_stop"]["photograph"] == 3 and s["first_stop"]["verdict"] == "PAUSE"
    assert s["rule_classes"] == {"incompleteness": 2}


def test_evaluate_real_reports_each_folder_as_a_build(tmp_path, require_bin):
    """`real_eval --as-build` on the repository's layers: one build per folder; a build of one
    photograph is judged as `bedsight analyze` judged it (no history yet)."""
    binary = require_bin
    layers = tmp_path / "pblm"
    for name in (CLEAN, UNEVEN, REFERENCE):
        (layers / name).parent.mkdir(parents=True, exist_ok=True)
        (layers / name).symlink_to(PBLM / name)
    report = re_.evaluate_real(MODEL, layers, None, tmp_path / "out", split="test", config=CONFIG, bedsight_bin=binary, progress=False, as_build=True)
    builds = report["builds"]
    assert set(builds) == {"No_Defect", "Powder_Uneven"}
    for layer in report["layers"]:
        b = builds[layer["folder"]]
        assert b["photographs"] == 1 and b["layers"] == 1
        assert b["verdicts"][layer["verdict"]] == 1
    assert builds["No_Defect"]["verdicts"]["PASS"] == 1 and builds["No_Defect"]["first_stop"] is None
    assert builds["Powder_Uneven"]["verdicts"]["RECOAT"] == 1 and builds["Powder_Uneven"]["rules"] == {"rules.incompleteness.limit": 1}
    md = (tmp_path / "out" / "real-eval.md").read_text()
    assert "## As a build (bedsight run)" in md
    assert "| No_Defect | clean | 1 | 1 | 1 | 0 | 0 | 0 | 0 | none | none |" in md


def test_a_loop_that_does_not_start_is_one_error_with_the_boxs_message(tmp_path, require_bin):
    """A model image that is not there: `bedsight run` refuses to start, and the replay says so
    with the binary's own words instead of waiting for photographs."""
    binary = require_bin
    photo = tmp_path / "layer.png"
    from PIL import Image

    Image.new("L", (64, 64), 120).save(photo)
    with pytest.raises(BadInput, match=r"run exited with status [1-9]\d* before the last photograph: .*no-such-model\.bsimg"):
        br.replay(binary, tmp_path / "no-such-model.bsimg", CONFIG.read_text(), [photo], tmp_path / "build", timeout_s=60)


def test_the_report_rows_by_hand_a_folder_of_two_set_ups_is_two_builds():
    one = br.summarise([_record(1, "PASS")], ["A/1.jpg"])
    two = br.summarise([_record(1, "RECOAT", "rules.incompleteness.limit"), _record(1, "PAUSE", "rules.incompleteness.track.after_recoat", "not fixed")], ["B/1.jpg", "B/2.jpg"])
    builds = {"A": {"folder": "A", **one}, "B @ cam@896x1024": {"folder": "B", **two}}
    rows = [line for line in br.markdown(builds, {"A": [], "B": ["incompleteness"]}) if line.startswith("| A") or line.startswith("| B")]
    assert rows == [
        "| A | clean | 1 | 1 | 1 | 0 | 0 | 0 | 0 | none | none |",
        "| B @ cam@896x1024 | incompleteness | 2 | 1 | 0 | 1 | 0 | 1 | 0 | photograph 2 (layer 1): PAUSE, rules.incompleteness.track.after_recoat | incompleteness 2 |",
    ]


def test_model_image_is_set_under_a_model_header_that_ends_the_file(tmp_path):
    text = br.run_config("[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n[model]", tmp_path / "m.bsimg", tmp_path / "f")
    assert tomllib.loads(text)["model"] == {"image": str((tmp_path / "m.bsimg").resolve())}
