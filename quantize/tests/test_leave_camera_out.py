"""quantize/scripts/leave-camera-out.py: real layers split by camera, the camera left out with
every folder of it, the label maps and hand labels of each side; a camera with clean layers, an
unknown camera or a missing folder refused by name, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bedsight_train.layers import load_label_map

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "quantize" / "scripts" / "leave-camera-out.py"
FOLDERS = ["No_Defect", "Powder_Uneven", "Powder_Uneven_With_Scratch", "Deformation_With_Scratch", "Plateform_Powder_Uneven"]


def run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "quantize")}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env)


def layers(tmp_path: Path) -> Path:
    root = tmp_path / "pblm"
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True)
    return root


def test_a_camera_is_left_out_whole_with_its_labels_and_hand_labels(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"format": "x", "classes": ["incompleteness"], "layers": [
        {"image": "Powder_Uneven/a.jpg", "regions": []}, {"image": "Plateform_Powder_Uneven/b.jpg", "regions": []}]}))
    out = tmp_path / "out"
    result = run(layers(tmp_path), "pblm", labels, "pblm-plate", out)
    assert result.returncode == 0, result.stderr

    assert sorted(p.name for p in (out / "real-layers").iterdir()) == sorted(FOLDERS[:4])
    assert [p.name for p in (out / "foreign-layers").iterdir()] == ["Plateform_Powder_Uneven"]
    assert (out / "foreign-layers" / "Plateform_Powder_Uneven").resolve() == (tmp_path / "pblm" / "Plateform_Powder_Uneven").resolve()
    shipped = load_label_map(Path("pblm"))
    kept, left = load_label_map(out / "label-map.toml"), load_label_map(out / "foreign-label-map.toml")
    assert kept.labels == {f: shipped.labels[f] for f in FOLDERS[:4]} and left.labels == {"Plateform_Powder_Uneven": ["incompleteness"]}
    assert kept.classes == left.classes == shipped.classes and kept.recoater_travel == left.recoater_travel == "down"
    assert left.camera("Plateform_Powder_Uneven").bed_corners == shipped.camera("Plateform_Powder_Uneven").bed_corners
    assert kept.camera("No_Defect").flat_field_from == "No_Defect" and kept.camera("Plateform_Powder_Uneven") is None
    assert [e["image"] for e in json.loads((out / "labels.json").read_text())["layers"]] == ["Powder_Uneven/a.jpg"]


def test_a_camera_with_clean_layers_an_unknown_one_or_a_missing_folder_is_refused(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"layers": []}))
    root = layers(tmp_path)
    out = tmp_path / "out"
    refused = run(root, "pblm", labels, "pblm-1024", out)
    assert refused.returncode == 2 and "the folder(s) No_Defect are clean layers" in refused.stderr
    refused = run(root, "pblm", labels, "pblm-nope", out)
    assert refused.returncode == 2 and "no camera pblm-nope (its cameras: pblm-1024, pblm-plate)" in refused.stderr
    (root / "Deformation_With_Scratch").rmdir()
    refused = run(root, "pblm", labels, "pblm-plate", out)
    assert refused.returncode == 2 and f"{root}: no label folder Deformation_With_Scratch" in refused.stderr
    assert not out.exists()
