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

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
size="${SIZE:-1024}"
work="${WORK:-$repo/out/bench-graphs-build/$size}"
out="${OUT:-$repo/out/bench-graphs/isdnet-sr-$size}"

rm -rf "$work" "$out"
mkdir -p "$work" "$out/one-member"
bt --quiet synth --out "$work/data" --layers 12 --size "$size" --seed 7
# 5 epochs: one checkpoint each, the 5 members of the ensemble.
bt --quiet train --arch isdnet-sr --data "$work/data" --epochs 5 --out "$work/run" --crop 128 --batch-size 4 --seed 0
bt --quiet calibrate --run "$work/run" --members 5
bt --quiet export --run "$work/run" -o "$out/model.onnx" --name "bench-isdnet-sr-$size" \
    --description "ISDNet-SR, 5 heads on one trunk, ${size}x${size}, barely trained: for timing only"
# --margin 1: the weights are not trained enough for the INT8 accuracy check to mean anything.
bt --quiet quantize --model "$out/model.onnx" --data "$work/data" -o "$out/model.int8.onnx" --margin 1 --calibration-images 4
bt --quiet calibrate --run "$work/run" --members 1
bt --quiet export --run "$work/run" -o "$out/one-member/model.onnx" --name "bench-isdnet-sr-$size-one-member" \
    --description "ISDNet-SR, 1 head, ${size}x${size}, barely trained: for timing only"
echo "bench graphs in $out"
