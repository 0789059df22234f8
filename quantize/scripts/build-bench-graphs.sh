#!/usr/bin/env bash
# The graphs `bedsight bench` times at the paper's input size: an ISDNet-SR ensemble of 5 heads on
# one trunk (fp32 and INT8) and the same network with one head, at SIZE x SIZE (default 1024).
#
#   quantize/scripts/build-bench-graphs.sh            # -> out/bench-graphs/isdnet-sr-1024/
#   SIZE=512 quantize/scripts/build-bench-graphs.sh   # -> out/bench-graphs/isdnet-sr-512/
#
# The weights are trained for a few epochs on a dozen synthetic layers only: they are there to
# give the graph real shapes and operators, not to find defects. Inference time does not depend
# on the weights (dense convolutions), so the timings hold for a trained model of the same
# architecture. About 10-20 minutes on two shared CPU cores at 1024.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-$HOME/.cache/bedsight/venv/bin/python}"
size="${SIZE:-1024}"
work="${WORK:-$repo/out/bench-graphs-build/$size}"
out="${OUT:-$repo/out/bench-graphs/isdnet-sr-$size}"
export BEDSIGHT_TRAIN_THREADS="${BEDSIGHT_TRAIN_THREADS:-1}"

if ! "$py" -c "import bedsight_train" 2>/dev/null; then
    "$(dirname "$py")/pip" install -q -e "$repo/quantize"
fi
bt() { "$py" -m bedsight_train.cli --quiet "$@"; }

rm -rf "$work" "$out"
mkdir -p "$work" "$out/one-member"
bt synth --out "$work/data" --layers 12 --size "$size" --seed 7
# 5 epochs: one checkpoint each, the 5 members of the ensemble.
bt train --arch isdnet-sr --data "$work/data" --epochs 5 --out "$work/run" --crop 128 --batch-size 4 --seed 0
bt calibrate --run "$work/run" --members 5
bt export --run "$work/run" -o "$out/model.onnx" --name "bench-isdnet-sr-$size" \
    --description "ISDNet-SR, 5 heads on one trunk, ${size}x${size}, barely trained: for timing only"
# --margin 1: the weights are not trained enough for the INT8 accuracy check to mean anything.
bt quantize --model "$out/model.onnx" --data "$work/data" -o "$out/model.int8.onnx" --margin 1 --calibration-images 4
bt calibrate --run "$work/run" --members 1
bt export --run "$work/run" -o "$out/one-member/model.onnx" --name "bench-isdnet-sr-$size-one-member" \
    --description "ISDNet-SR, 1 head, ${size}x${size}, barely trained: for timing only"
echo "bench graphs in $out"
