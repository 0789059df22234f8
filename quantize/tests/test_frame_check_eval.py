"""The box's frame checks on real frames (the PBLM photographs kept in tests/data/pblm), through
`bedsight analyze` as `frame_check_eval` runs them: each corruption a camera can suffer is kept
from the model by its own check, and the clean frame by none. The table over hundreds of real
layers is docs/frame-checks.md's."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bedsight_train import frame_check_eval as fce
from bedsight_train.real_eval import default_config_path, find_binary

# the PBLM photographs kept in the repository (tests/data/pblm/README.md)
PBLM = Path(__file__).resolve().parent / "data" / "pblm"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    binary = find_binary()
    assert binary is not None, "the bedsight binary is needed (./test.sh builds it and sets BEDSIGHT_BIN)"
    root = tmp_path_factory.mktemp("layers")
    # one build of two layers: No_Defect 0001 commissions it, 0018 is judged (the other folders
    # kept here have one photograph each, which would be their own commissioning frame)
    shutil.copytree(PBLM / "No_Defect", root / "No_Defect")
    out = tmp_path_factory.mktemp("frame-checks")
    return fce.evaluate(root, "pblm", 4, out, binary, default_config_path().read_text(), progress=False)


def test_clean_real_frames_pass_every_check(report):
    assert report["layers"] == ["No_Defect/converted_ 0018.jpg"]
    assert report["false_alarm_layers"] == []


@pytest.mark.parametrize("kind", list(fce.CORRUPTIONS))
def test_each_corruption_is_kept_from_the_model_by_its_check(report, kind):
    d = report["detection"][kind]
    assert (d["frames"], d["detected"], d["fired_instead"]) == (1, 1, {})


def test_a_corrupted_frame_changes_only_what_the_camera_would():
    rng = np.random.default_rng(0)
    frame = rng.integers(60, 120, (64, 64)).astype(np.uint8)
    corners = np.array([[8, 8], [56, 8], [56, 56], [8, 56]], dtype=float)
    assert (fce.corrupt(frame, "repeat", corners, rng) == frame).all()
    bar = fce.corrupt(frame, "dark_bar", corners, rng)
    changed = bar != frame
    # a bar across the travel: whole bed-height columns, 6 % of the bed wide, nothing outside the bed
    cols = np.nonzero(changed.any(axis=0))[0]
    assert 1 <= len(cols) <= 4 and changed[:8].sum() == 0 and changed[57:].sum() == 0
    assert (bar[changed] == 15).all()
    noisy = fce.corrupt(frame, "repeat_noise", corners, rng).astype(int) - frame
    assert 1.0 < noisy.std() < 3.0
