#!/usr/bin/env bash
# AM-SegNet's small layout against seed 002's (`--preset paper`, models/am_segnet.py lists the
# departures and why): the same data, seed, loss and budget as measure-focal-tversky.sh (160
# synthetic layers at 256 px, 12 epochs, 3 members; its base-loss AM-SegNet run is the small one
# here), judged on the test split and on the second generator. Writes out/exp-am-layouts/ and
# prints one line per layout (quantize/README.md, "AM-SegNet", gives the figures).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source quantize/scripts/common.sh
W=out/exp-am-layouts
mkdir -p $W
[ -f $W/data/dataset.toml ] || bt --quiet synth --out $W/data --layers 160 --size 256 --seed 21
[ -f $W/alt/dataset.toml ] || bt --quiet synth --generator alt --out $W/alt --layers 40 --size 256 --seed 22
for preset in small paper; do
  run=$W/$preset
  bt --quiet train --arch am-segnet --preset $preset --data $W/data --epochs 12 --batch-size 8 --seed 0 \
      --class-weights inverse-sqrt --out $run/run --overwrite
  bt --quiet calibrate --run $run/run --members 3
  bt --quiet export --run $run/run -o $run/model/model.onnx
  bt --quiet evaluate --model $run/model/model.onnx --data $W/data --split test --out $run/eval
  bt --quiet evaluate --model $run/model/model.onnx --data $W/alt --split all --out $run/eval-alt
done
"$py" - "$W" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
for preset in ("small", "paper"):
    run = json.loads((w / preset / "run" / "run.json").read_text())
    hist = json.loads((w / preset / "run" / "history.json").read_text())
    test = json.loads((w / preset / "eval" / "metrics.json").read_text())
    alt = json.loads((w / preset / "eval-alt" / "metrics.json").read_text())
    export = json.loads((w / preset / "model" / "model.export.json").read_text())
    iou = " ".join(f"{v:.2f}" for v in test["iou"])
    print(f"{preset}: {run['parameters'] / 1e6:.2f} M parameters, {hist['train_seconds'] / 60:.1f} min; MIoU test {test['miou']:.3f}, "
          f"second generator {alt['miou']:.3f}; IoU per class (test) {iou}; "
          f"onnxruntime {export['timing']['ensemble_ms']:.1f} ms per 256x256 layer (3 members)")
PY
