#!/usr/bin/env python3
"""Split a folder of real layers by camera for leave-camera-out.sh: the cameras the model learns
from, and the cameras left out, whose layers stand in for a machine it never saw.

    quantize/scripts/leave-camera-out.py REAL_LAYERS LABEL_MAP LABELS_JSON CAMERA[,CAMERA..] OUT

Writes OUT/real-layers/ and OUT/foreign-layers/ (links to the label folders of each side),
OUT/label-map.toml and OUT/foreign-label-map.toml (the label map's labels and cameras of each
side, its classes and recoater travel on both) and OUT/labels.json (the hand-labelled layers of
the kept folders). A camera is left out whole, with every folder of it; one whose folders hold a
clean label is refused, since the stages before N (build-default-model.sh) learnt from the clean
layers and those runs are reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bedsight_train.common import BadInput, read_toml, toml_dumps
from bedsight_train.layers import load_label_map


def split(real_layers: Path, label_map: str, labels_json: Path, cameras: list[str], out: Path) -> None:
    lmap = load_label_map(Path(label_map))
    doc = read_toml(lmap.path)
    unknown = [c for c in cameras if c not in doc.get("cameras", {})]
    if unknown:
        raise BadInput(f"{lmap.path}: no camera {', '.join(unknown)} (its cameras: {', '.join(doc.get('cameras', {})) or 'none'})")
    left = [f for c in cameras for f in doc["cameras"][c]["folders"]]
    clean = [f for f in left if not lmap.labels[f]]
    if clean:
        raise BadInput(f"camera(s) {', '.join(cameras)}: the folder(s) {', '.join(clean)} are clean layers, which the stages before N learnt from; leave out a camera without clean layers")
    kept = [f for f in lmap.labels if f not in left]
    if not any(not lmap.labels[f] for f in kept):
        raise BadInput(f"leaving out {', '.join(cameras)} leaves no clean folder to train on")
    missing = [f for f in lmap.labels if not (real_layers / f).is_dir()]
    if missing:
        raise BadInput(f"{real_layers}: no label folder {', '.join(missing)}")
    hand = json.loads(Path(labels_json).read_text())

    out.mkdir(parents=True, exist_ok=True)
    for side, folders, names in (("real-layers", kept, [c for c in doc["cameras"] if c not in cameras]), ("foreign-layers", left, cameras)):
        (out / side).mkdir(exist_ok=True)
        for folder in folders:
            link = out / side / folder
            if link.is_symlink():
                link.unlink()
            link.symlink_to((real_layers / folder).resolve(), target_is_directory=True)
        side_doc = {k: v for k, v in doc.items() if k not in ("labels", "cameras")}
        side_doc["labels"] = {f: doc["labels"][f] for f in folders}
        side_doc["cameras"] = {c: doc["cameras"][c] for c in names}
        (out / ("label-map.toml" if side == "real-layers" else "foreign-label-map.toml")).write_text(
            f"# {lmap.path} with the camera(s) {', '.join(cameras)} {'left out' if side == 'real-layers' else 'alone'} (leave-camera-out.py)\n" + toml_dumps(side_doc)
        )
    hand["layers"] = [e for e in hand.get("layers", []) if e["image"].split("/", 1)[0] in kept]
    (out / "labels.json").write_text(json.dumps(hand, indent=1) + "\n")
    print(f"kept {', '.join(kept)}; left out {', '.join(left)} (camera {', '.join(cameras)}); {len(hand['layers'])} hand-labelled layers kept")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    try:
        split(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), [c for c in sys.argv[4].split(",") if c], Path(sys.argv[5]))
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
