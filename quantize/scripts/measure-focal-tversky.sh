#!/usr/bin/env bash
# Seed 001's Focal Tversky loss against each architecture's own loss: the same data, seed and budget
# (quantize/README.md, `--focal-tversky`, gives the figures). Writes out/exp-ftl/; about 15 minutes
# on two cores. Per class IoU: each run's eval/metrics.json (test split) and eval-alt/metrics.json
# (the second generator).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source quantize/scripts/common.sh
export BEDSIGHT_TRAIN_THREADS=2
W=out/exp-ftl
mkdir -p $W
[ -f $W/data/dataset.toml ] || bt --quiet synth --out $W/data --layers 160 --size 256 --seed 21
[ -f $W/alt/dataset.toml ] || bt --quiet synth --generator alt --out $W/alt --layers 40 --size 256 --seed 22
for arch in isdnet-sr am-segnet; do
  for loss in base ftl; do
    run=$W/$arch-$loss
    extra=(); [ $loss = ftl ] && extra=(--focal-tversky)
    bt --quiet train --arch $arch --data $W/data --epochs 12 --batch-size 8 --seed 0 --class-weights inverse-sqrt --out $run/run --overwrite "${extra[@]}"
    bt --quiet calibrate --run $run/run --members 3
    bt --quiet export --run $run/run -o $run/model/model.onnx
    bt --quiet evaluate --model $run/model/model.onnx --data $W/data --split test --out $run/eval
    bt --quiet evaluate --model $run/model/model.onnx --data $W/alt --split all --out $run/eval-alt
  done
done
