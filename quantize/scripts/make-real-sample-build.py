#!/usr/bin/env python3
"""Write assets/sample-build-real/: a few real powder-bed layers from the PBLM folders, taken from
the held-out test split (bedsight_train.layers.held_out_split) so that no model trained by
bedsight-train has seen them, as the box's camera path makes them beds: turned to the bed's
convention, the camera's flat field divided out and the bed cut out by the label map's corners
(label map pblm, [cameras.*]), at 1024x1024 (the default model's input size), in label folders
(the loader's layout), with the licence and attribution beside them.

    quantize/scripts/make-real-sample-build.py /work/shared/data/pblm assets/sample-build-real
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from PIL import Image

from bedsight_train.layers import CameraViews, flat_field_references, held_out_split, load_label_map, scan_layer_folders

# Layers per label folder: every label shown, the common ones twice.
PER_LABEL = {"No_Defect": 1, "Powder_Uneven": 2, "Powder_Uneven_With_Scratch": 2, "Deformation_With_Scratch": 2, "Plateform_Powder_Uneven": 1}
SIZE = 1024


def main(source: Path, out: Path) -> None:
    label_map = load_label_map(Path("pblm"))
    found = scan_layer_folders(source, label_map)
    names = [f"{label}/{path.name}" for label, path in found]
    split = held_out_split(names)
    # the held-out test split; for a label with too few layers there, its validation split
    # (never trained on either: it only ranks checkpoints and fits the temperature)
    test = sorted(split["test"], key=lambda i: hashlib.sha256(names[i].encode()).digest())
    val = sorted(split["val"], key=lambda i: hashlib.sha256(names[i].encode()).digest())
    views = CameraViews(label_map, flat_field_references(label_map, found))
    if out.exists():
        shutil.rmtree(out)
    rows = []
    for label, count in PER_LABEL.items():
        picked = [i for i in test + val if found[i][0] == label][:count]
        for n, i in enumerate(picked, 1):
            path = found[i][1]
            target = out / label / f"{label.lower()}-{n}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            # made a bed exactly as the loader makes one for training and evaluate-layers
            Image.fromarray(views.bed(label, path, SIZE)).save(target, optimize=True)
            which = "test" if i in split["test"] else "validation"
            rows.append(f"| `{label}/{target.name}` | `{names[i]}` | {which} | {', '.join(label_map.labels[label]) or 'clean'} |")
    shutil.copy(source / "LICENSE", out / "LICENSE")
    (out / "README.md").write_text(
        "# Real powder-bed layers (a second sample build)\n\n"
        f"{len(rows)} real layer photographs from the public PBLM dataset (MIT licence, copyright 2024 Brian Cheng; "
        "see LICENSE in this folder), made beds as the box's camera path makes them: turned so the recoater travels left "
        "to right, the camera's lighting divided out (the flat field of its first clean training layer; the Plateform "
        "camera has no clean layer and keeps its lighting) and the bed cut out of the photograph by its corners "
        "(quantize/bedsight_train/label_maps/pblm.toml, [cameras.*]), at 1024x1024 grey. "
        "Each folder is the dataset's image-level label; they come from the held-out test split that "
        "`bedsight-train train` never trains on (or, for a label with too few layers there, from the validation "
        "split, which only ranks checkpoints and fits the temperature: the table says which). Replay them with\n\n"
        "    bedsight demo --build real\n\n"
        "or `bedsight analyze assets/sample-build-real/*/*.png`. Made by `quantize/scripts/make-real-sample-build.py`.\n\n"
        "| file | original | split | layer classes (label_maps/pblm.toml) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
