"""Multi-task training (seed 004) on a handful of real layers (the shipped real sample build, in
label folders) and synthetic ones; the layer loader's bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bt_helpers import train_tiny

REAL = Path(__file__).resolve().parents[2] / "assets" / "sample-build-real"


def sample_label_map(tmp_path: Path) -> Path:
    """pblm.toml's classes and labels for the real sample build's layers, which are PBLM
    photographs resized (not turned, no camera of their own): the map those files need."""
    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "bedsight_train" / "label_maps" / "pblm.toml").read_text())
    labels = "\n".join(f"{k} = {json.dumps(v)}" for k, v in doc["labels"].items())
    path = tmp_path / "sample-build-real.toml"
    path.write_text(f'classes = {json.dumps(doc["classes"])}\nrecoater_travel = "down"\n[labels]\n{labels}\n')
    return path


def real_layer_folders(out: Path, copies: int = 4) -> Path:
    """The real sample build, each layer `copies` times (flipped), so that the split (the last
    20 % of each folder test, the 10 % before them validation) has layers in every split."""
    for path in sorted(REAL.glob("*/*.png")):
        image = Image.open(path)
        (out / path.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else image
            flipped.save(out / path.parent.name / f"{path.stem}-{k}.png")
    return out


def test_the_held_out_split_takes_each_folders_last_layers_and_whole_dates():
    from bedsight_train.layers import held_out_split

    # 100 layers, listed out of order: the last 20 by number are test, the 10 before them val.
    names = [f"A/converted_ {i:04d}.jpg" for i in reversed(range(100))]
    split = held_out_split(names)
    number = lambda i: int(names[i][-8:-4])
    assert sorted(number(i) for i in split["test"]) == list(range(80, 100))
    assert sorted(number(i) for i in split["val"]) == list(range(70, 80))
    assert sorted(number(i) for i in split["train"]) == list(range(70))
    # another folder beside it changes nothing in this one
    more = held_out_split(names + [f"B/layer_{i:04d}.png" for i in range(500)])
    assert {k: [i for i in v if i < 100] for k, v in more.items()} == split
    # dates and times: whole dates from the end; of 20 layers, the last date's 4 are the 20 % of
    # test, the date before it (3) the validation split, though that makes 35 %
    days = {"20210901": 5, "20210902": 4, "20210903": 4, "20210904": 3, "20210905": 4}
    dated = [f"P/PowderRecoat_{d}_{10 + k:06d}.jpg" for d, n in days.items() for k in range(n)]
    split = held_out_split(dated)
    day = lambda which: sorted({dated[i].split("_")[1] for i in split[which]})
    assert day("test") == ["20210905"]
    assert day("val") == ["20210904"]
    assert day("train") == ["20210901", "20210902", "20210903"]


def test_multitask_training_lowers_both_losses_and_exports_the_layer_head(tiny_data, tmp_path):
    from bedsight_train.calibrate import calibrate
    from bedsight_train.export import export, ort_session

    layers = real_layer_folders(tmp_path / "layers")
    run = tmp_path / "run"
    label_map = sample_label_map(tmp_path)
    history = train_tiny("isdnet-sr", tiny_data, run, epochs=45, layers=layers, label_map=label_map, layer_weight=1.0, seed=1, layer_batch_size=8)
    # the run carries its label map: calibrate and export below read its copy
    label_map.unlink()
    seg, layer = np.array(history["step_seg_loss"]), np.array(history["step_layer_loss"])
    assert len(seg) == len(layer) >= 120
    # per-step losses of small batches are noisy: compare the first and the last 20 steps
    assert seg[-20:].mean() < 0.9 * seg[:20].mean(), seg
    assert layer[-20:].mean() < 0.9 * layer[:20].mean(), layer
    record = history["epochs"][-1]
    assert 0.0 <= record["layer_f1"] <= 1.0 and "rank" in record

    report = calibrate(run, members=2, progress=False)
    head = report["layer_head"]
    assert head["temperature"] > 0 and head["val_layers"] >= 1
    assert set(head["val"]["per_class"]) == {"incompleteness", "streaking", "super-elevation"}

    out = tmp_path / "model" / "model.onnx"
    export(run, out, progress=False)
    session = ort_session(out)
    # the layer head's output, then the domain check's features (domain.py)
    assert [o.name for o in session.get_outputs()] == ["logits", "layer_logits", "features"]
    logits, layer_logits, features = session.run(None, {"image": np.zeros((1, 1, 64, 64), np.float32)})
    assert logits.shape == (1, 2, 6, 64, 64) and layer_logits.shape == (1, 3) and features.shape[0] == 1
    manifest = (out.parent / "manifest.toml").read_text()
    assert 'format_version = "1.3"' in manifest and "[domain]" in manifest
    assert 'classes = ["incompleteness", "streaking", "super-elevation"]' in manifest
    assert "[layer_head]" in manifest

    # the head on the held-out test split, as the box reads it
    from bedsight_train.layer_report import evaluate_layers

    result = evaluate_layers(out, layers, sample_label_map(tmp_path), tmp_path / "eval", progress=False)
    assert int(np.sum(result["confusion"]["matrix"])) == result["layers"] > 0
    assert set(result["per_class"]) == {"incompleteness", "streaking", "super-elevation"}
    report = (tmp_path / "eval" / "layer-report.md").read_text()
    assert "| streaking |" in report and "Confusion matrix" in report


def test_an_unmapped_label_stops_training_before_it_starts(tiny_data, tmp_path):
    from bedsight_train.cli import main

    layers = real_layer_folders(tmp_path / "layers", copies=1)
    (layers / "Spatter").mkdir()
    shutil.copy(next(REAL.glob("No_Defect/*.png")), layers / "Spatter" / "a.png")
    run = tmp_path / "run"
    code = main(["--quiet", "train", "--arch", "isdnet-sr", "--data", str(tiny_data), "--epochs", "1", "--out", str(run), "--layers", str(layers), "--label-map", str(sample_label_map(tmp_path))])
    assert code == 2
    assert not (run / "checkpoints").exists() and not (run / "run.json").exists()


def test_unmapped_label_message_names_the_folder_and_the_map(tmp_path, capsys):
    from bedsight_train.common import BadInput
    from bedsight_train.layers import load_label_map, load_layer_folders

    layers = real_layer_folders(tmp_path / "layers", copies=1)
    (layers / "Spatter").mkdir()
    with pytest.raises(BadInput, match=r"label folder\(s\) Spatter are not in the label map .*pblm.toml"):
        load_layer_folders(layers, load_label_map(Path("pblm")), 64)


def test_mixed_channels_are_refused_and_mixed_sizes_resized_or_refused(tmp_path):
    from bedsight_train.common import BadInput
    from bedsight_train.layers import load_label_map, load_layer_folders

    label_map = load_label_map(sample_label_map(tmp_path))
    layers = real_layer_folders(tmp_path / "layers", copies=1)
    odd = layers / "Powder_Uneven" / "zz-small.png"
    Image.open(next(REAL.glob("Powder_Uneven/*.png"))).resize((100, 80)).save(odd)
    loaded = load_layer_folders(layers, label_map, 64)
    assert loaded.images.shape[1:] == (64, 64) and len(loaded.names) == 9
    width, height = Image.open(next(REAL.glob("*/*.png"))).size  # the real sample layers' size
    with pytest.raises(BadInput, match=rf"zz-small.png: 100x80 px, but .* is {width}x{height} px"):
        load_layer_folders(layers, label_map, 64, mixed_sizes="refuse")
    odd.unlink()
    colour = layers / "No_Defect" / "zz-colour.png"
    Image.new("RGB", (width, height), (90, 90, 90)).save(colour)
    with pytest.raises(BadInput, match=r"zz-colour.png: 3 channel\(s\), but .* has 1"):
        load_layer_folders(layers, label_map, 64)


def test_a_label_map_naming_an_unknown_class_is_refused(tmp_path):
    from bedsight_train.common import BadInput
    from bedsight_train.layers import load_label_map

    path = tmp_path / "map.toml"
    path.write_text('classes = ["streaking"]\n[labels]\nScratch = ["streaking"]\nBlob = ["spatter"]\n')
    with pytest.raises(BadInput, match=r"labels.Blob names spatter, which `classes` does not list"):
        load_label_map(path)
    assert json.dumps(load_label_map(Path("pblm")).labels)  # the shipped map loads
