"""Bad outside input gets one clear error naming the file, before any training starts."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bedsight_train.common import BadInput
from bt_helpers import TINY_WIDTHS


def _copy(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bedsight_train.cli", "--quiet", *map(str, args)], capture_output=True, text=True)


def test_mask_of_another_size(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    bad = sorted((data / "masks").glob("*.png"))[3]
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(bad)
    with pytest.raises(BadInput, match=bad.name):
        from bedsight_train.data import load_dataset

        load_dataset(data)
    result = _cli("train", "--arch", "isdnet-sr", "--data", data, "--epochs", 1, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_class_index_outside_the_table(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    bad = sorted((data / "masks").glob("*.png"))[0]
    mask = np.array(Image.open(bad))
    mask[0, 0] = 9
    Image.fromarray(mask).save(bad)
    result = _cli("train", "--arch", "am-segnet", "--data", data, "--epochs", 1, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert str(bad) in result.stderr and "[9]" in result.stderr and "Traceback" not in result.stderr


def test_empty_split(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    for p in sorted((data / "images").glob("*.png"))[2:]:
        p.unlink()
        (data / "masks" / p.name).unlink()
    result = _cli("train", "--arch", "isdnet-sr", "--data", data, "--epochs", 1, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert str(data) in result.stderr and "Traceback" not in result.stderr


def test_missing_mask_and_bad_table(tiny_data, tmp_path):
    from bedsight_train.data import load_dataset

    data = _copy(tiny_data, tmp_path)
    victim = sorted((data / "masks").glob("*.png"))[1]
    victim.unlink()
    with pytest.raises(BadInput, match=victim.name):
        load_dataset(data)
    (data / "dataset.toml").write_text("classes = 3\n")
    with pytest.raises(BadInput, match="dataset.toml"):
        load_dataset(data)


def test_checkpoint_from_another_architecture(tiny_data, tiny_isdnet_run, tmp_path):
    from bedsight_train.calibrate import calibrate
    from bedsight_train.models import build_model, make_config

    run = tmp_path / "run"
    shutil.copytree(tiny_isdnet_run, run)
    # training another architecture into this run folder is refused before training starts
    before = sorted((run / "checkpoints").glob("*.pt"))
    result = _cli("train", "--arch", "am-segnet", "--data", tiny_data, "--epochs", 1, "--out", run)
    assert result.returncode == 2 and "run.json" in result.stderr and "Traceback" not in result.stderr
    assert sorted((run / "checkpoints").glob("*.pt")) == before
    # a foreign checkpoint among the run's is named
    cfg = make_config("am-segnet", 1, 6, TINY_WIDTHS["am-segnet"]).to_dict()
    foreign = run / "checkpoints" / "epoch-0099.pt"
    torch.save({"arch": "am-segnet", "config": cfg, "state_dict": build_model("am-segnet", cfg).state_dict(), "epoch": 99, "metrics": {"score": 1.0}}, foreign)
    with pytest.raises(BadInput, match="epoch-0099.pt"):
        calibrate(run, members=2, progress=False)
    result = _cli("calibrate", "--run", run, "--members", 2)
    assert result.returncode == 2 and "epoch-0099.pt" in result.stderr and "am-segnet" in result.stderr


def test_not_a_checkpoint(tiny_isdnet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_isdnet_run, run)
    (run / "checkpoints" / "epoch-0050.pt").write_bytes(b"not a checkpoint")
    result = _cli("calibrate", "--run", run, "--members", 2)
    assert result.returncode == 2 and "epoch-0050.pt" in result.stderr and "Traceback" not in result.stderr


def test_run_folder_with_earlier_checkpoints(tiny_data, tiny_isdnet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_isdnet_run, run)
    before = {p.name: p.stat().st_mtime for p in (run / "checkpoints").glob("*.pt")}
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", run)
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert {p.name: p.stat().st_mtime for p in (run / "checkpoints").glob("*.pt")} == before


def test_weak_class_the_model_does_not_have(tiny_data, tmp_path):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", tmp_path / "run", "--crop", 32,
                  "--real-layers", tmp_path / "layers", "--label-map", "pblm", "--weak-classes", "super-elevation,spatter")
    assert result.returncode == 2
    assert "--weak-classes spatter: not a defect class" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "weak, message",
    [
        (("--weak-absent-classes", "spatter"), "--weak-absent-classes spatter: not a defect class"),
        (("--weak-classes", "streaking", "--weak-absent-classes", "streaking"), "--weak-absent-classes streaking: --weak-classes already speaks of its absence and presence"),
        (("--weak-absent-classes", "incompleteness"), "--weak-absent-classes incompleteness: --weak-classes already speaks of its absence and presence"),
    ],
)
def test_absent_only_weak_class_unknown_or_already_weak(tiny_data, tmp_path, weak, message):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", tmp_path / "run", "--crop", 32,
                  "--real-layers", tmp_path / "layers", "--label-map", "pblm", *weak)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "top_k, message",
    [
        ("spatter=0.001", "--presence-top-k spatter: not a defect class"),
        ("super-elevation=0", "--presence-top-k super-elevation=0.0: the share of a layer's pixels must be in (0, 1]"),
        ("super-elevation=2", "--presence-top-k super-elevation=2.0: the share of a layer's pixels must be in (0, 1]"),
        ("super-elevation", "argument --presence-top-k: 'super-elevation': expected NAME=SHARE"),
    ],
)
def test_presence_k_for_a_class_the_model_does_not_have_or_out_of_range(tiny_data, tmp_path, top_k, message):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", tmp_path / "run", "--crop", 32,
                  "--real-layers", tmp_path / "layers", "--label-map", "pblm", "--presence-top-k", top_k)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--crop", 32, "--min-scale", 0), "--min-scale 0.0: a scale, above 0 and at most 1"),
        (("--crop", 32, "--min-scale", 1.5), "--min-scale 1.5: a scale, above 0 and at most 1"),
        (("--min-scale", 0.5), "--min-scale shrinks windows to the crop: give --crop"),
    ],
)
def test_a_min_scale_out_of_range_or_without_a_crop_is_refused(tiny_data, tmp_path, args, message):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", tmp_path / "run", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "args, message",
    [
        (("--cycles", 2), "--cycles 2: cycles belong to --lr-schedule snapshot"),
        (("--lr-schedule", "snapshot", "--cycles", 3), "--cycles 3: a whole number of epochs per cycle (--epochs 4)"),
        (("--lr-schedule", "snapshot", "--cycles", 0), "--cycles 0: a whole number of epochs per cycle (--epochs 4)"),
    ],
)
def test_snapshot_cycles_that_do_not_divide_the_run_are_refused(tiny_data, tmp_path, args, message):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 4, "--out", tmp_path / "run", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize(
    "args, message",
    [
        (("--mask-absence-weight", -1), "--mask-absence-weight -1.0: a weight, 0 or more"),
        (("--mask-absence-weight", 1), "--mask-absence-weight belongs to the real-bed mode: give --real-layers"),
    ],
)
def test_a_mask_absence_weight_below_zero_or_without_real_layers_is_refused(tiny_data, tmp_path, args, message):
    result = _cli("train", "--arch", "isdnet-sr", "--data", tiny_data, "--epochs", 1, "--out", tmp_path / "run", "--crop", 32, *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()  # nothing written
