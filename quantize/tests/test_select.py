import csv
import shutil

import numpy as np


def test_uncertainty_selection_puts_the_most_uncertain_first(tiny_isdnet_model, tiny_data, tmp_path):
    from bedsight_train.select import model_predictions, select
    from bedsight_train.common import load_grey

    journal = tmp_path / "review"
    shutil.copytree(tiny_data / "images", journal)
    rows = select(journal, "uncertainty", 5, tmp_path / "out", model=tiny_isdnet_model, progress=False)
    assert len(rows) == 5
    files = sorted(journal.glob("*.png"))
    preds, _ = model_predictions(tiny_isdnet_model, [load_grey(p) for p in files], progress=False)
    ranked = sorted(zip(files, preds), key=lambda fp: fp[1]["mean_uncertainty"], reverse=True)
    assert [r["file"] for r in rows] == [str(f) for f, _ in ranked[:5]]
    values = [r["mean_uncertainty"] for r in rows]
    assert values == sorted(values, reverse=True)
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 5
    assert len(list((tmp_path / "out" / "prelabels").glob("*.png"))) == 5
    with open(tmp_path / "out" / "selection.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_smile_selection_is_diverse(tiny_data, tmp_path):
    from bedsight_train.select import select, smile_order

    rows = select(tiny_data / "images", "smile", 6, tmp_path / "out", progress=False)
    assert len({r["file"] for r in rows}) == 6
    # on two well separated blobs the first two picks come from different clusters
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.3, (20, 2)), rng.normal(10, 1.0, (20, 2))])
    order, labels, spread = smile_order(points, 4)
    assert labels[order[0]] != labels[order[1]]
    assert spread[int(labels[order[0]])] >= spread[int(labels[order[1]])]  # widest cluster first


def test_select_only_review_layers(tiny_data, tmp_path):
    import json

    from bedsight_train.select import select

    journal = tmp_path / "journal"
    shutil.copytree(tiny_data / "images", journal)
    files = sorted(journal.glob("*.png"))
    with open(journal / "verdicts.jsonl", "w") as f:
        for i, p in enumerate(files):
            f.write(json.dumps({"image": p.name, "verdict": "REVIEW" if i % 3 == 0 else "PASS"}) + "\n")
    rows = select(journal, "smile", 100, tmp_path / "out", progress=False, verdict="REVIEW")
    assert sorted(r["file"] for r in rows) == sorted(str(p) for i, p in enumerate(files) if i % 3 == 0)


def _box_state(tmp_path, frames: int = 8):
    """A real box's state folder: `bedsight run` on `frames` layers of the demo's sample build
    (replayed, one every 200 ms) until they are recorded, then stopped as systemd stops it."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    from bt_helpers import bedsight_bin

    binary = bedsight_bin()
    assert binary is not None, "no bedsight binary: ./test.sh builds it (or cargo build and BEDSIGHT_BIN)"
    repo = Path(__file__).resolve().parents[2]
    camera = tmp_path / "frames"
    camera.mkdir()
    for path in sorted((repo / "assets" / "sample-build").glob("layer-*.png"))[:frames]:
        shutil.copyfile(path, camera / path.name)
    config = tmp_path / "bedsight.toml"
    config.write_text(f'[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n[camera]\nkind = "replay"\nfolder = "{camera}"\nrepeat = false\n[trigger]\nkind = "timer"\ninterval_ms = 200\n[dashboard]\nenabled = false\n')
    state = tmp_path / "state"
    process = subprocess.Popen([str(binary), "run", "--config", str(config)], env=dict(os.environ, BEDSIGHT_STATE_DIR=str(state)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            if f" layer {frames} " in line:
                break
        time.sleep(1.0)  # the recorder writes the last layer's images after its verdict
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    return state


def test_from_a_box_the_operators_marks_come_first_and_only_frames_are_candidates(tiny_data, tmp_path):
    """From a box's state folder: the layers an operator marked (false alarm, acknowledged) are
    picked first with why, whatever the strategy; then --count more; only the recorded layers'
    rectified beds are candidates, never the box's overlays, masks or uncertainty maps."""
    import json

    from bedsight_train.select import select

    state = _box_state(tmp_path)
    records = sorted((state / "images").glob("0*-L*"))
    assert len(records) >= 8, records
    with open(state / "journal" / "annotations.jsonl", "w") as f:
        f.write(json.dumps({"index": 5, "layer": 6, "action": "false-alarm", "time_ms": 1, "note": "part edge, not a defect"}) + "\n")
        f.write(json.dumps({"index": 1, "layer": 2, "action": "acknowledge", "time_ms": 2, "note": ""}) + "\n")
    rows = select(state, "smile", 3, tmp_path / "out", progress=False)
    assert [r["why"] for r in rows[:2]] == ["REVIEW acknowledged by an operator", "false alarm (marked by an operator): part edge, not a defect"]
    assert [r["file"] for r in rows[:2]] == [str(records[1] / "rectified.png"), str(records[5] / "rectified.png")]
    assert len(rows) == 5 and all(r["why"] == "smile" for r in rows[2:])
    assert all(r["file"].endswith("/rectified.png") for r in rows)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir())[:2] == [f"001-{records[1].name}.png", f"002-{records[5].name}.png"]


def test_unfamiliar_layers_are_picked_first_after_what_an_operator_marked(tmp_path, monkeypatch, capsys):
    import json
    import subprocess

    from bedsight_train import select as select_mod

    state = tmp_path / "state"
    (state / "journal").mkdir(parents=True)
    (state / "journal" / "layers.bsj").write_bytes(b"")
    frames = []
    for index in range(3):
        folder = state / "images" / f"{index:06d}-L{index + 1:05d}-PASS"
        folder.mkdir(parents=True)
        for product in ("rectified.png", "raw.png", "overlay.png", "mask.png", "uncertainty.png"):
            (folder / product).write_bytes(b"")
        frames.append(folder / "rectified.png")
    # a fourth record whose images the recorder dropped
    exported = "\n".join(json.dumps({"layer": i + 1, "verdict": "PASS", "domain": {"score": s, "threshold": 0.5, "familiar": s <= 0.5}}) for i, s in enumerate([0.2, 1.7, 0.4, 0.3]))
    (state / "journal" / "annotations.jsonl").write_text("".join(json.dumps({"index": i, "layer": i + 1, "action": "false-alarm", "time_ms": 1, "note": ""}) + "\n" for i in (2, 3)))
    monkeypatch.setattr(select_mod.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, exported, ""))
    monkeypatch.setattr("bedsight_train.pack.find_bedsight_bin", lambda: "bedsight")
    assert select_mod.find_images(state) == frames
    # the operator's mark first, though its layer comes later in the journal
    assert list(select_mod.box_priorities(state, frames).items()) == [
        (frames[2], "false alarm (marked by an operator)"),
        (frames[1], "unfamiliar to the model (domain score 1.70 > 0.50)"),
    ]
    assert f"select: record 3 (layer 4) is false alarm (marked by an operator), but {state / 'images'} holds no images of it; it cannot be labelled" in capsys.readouterr().err
