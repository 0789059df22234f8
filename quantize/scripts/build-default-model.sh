#!/usr/bin/env bash
# Rebuild the default model image that ships in the repository, and the demo's sample build.
#
#   REAL_LAYERS=/path/to/pblm quantize/scripts/build-default-model.sh
#
# With REAL_LAYERS (a folder of label folders of real layers, e.g. the PBLM photographs) it trains
# the multi-task network (bedsight-train train --layers, seed 004): the segmentation heads on the
# synthetic layers and a layer-level classification head on the real ones, with the label map
# LABEL_MAP (default: pblm, quantize/bedsight_train/label_maps/pblm.toml), and reports the head on
# the folders' held-out test split. Without it, segmentation only, as before. INIT=checkpoint.pt
# starts from an earlier run's weights (a fine-tune: fewer EPOCHS suffice).
#
# Writes assets/sample-build/ (the layers `bedsight demo` replays), assets/default-model/ (the
# unpacked model: manifest.toml, model.onnx, model.int8.onnx, selftest/, report.md, metrics.json,
# report/*.png) and, when a `bedsight` binary is found (BEDSIGHT_BIN, PATH, or target/), packs
# assets/default.bsimg. Intermediate files go to $WORK (default out/default-model-build, ignored
# by git). About 15-20 minutes on two CPU cores; everything is seeded, so a rerun gives the same
# data and nearly the same model (PyTorch on CPU is not bit-for-bit deterministic across machines).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work="${WORK:-$repo/out/default-model-build}"
assets="$repo/assets"
layers="${LAYERS:-640}"
size=256           # input size: 256x256 keeps CPU training feasible (the paper trains at 1024x1024)
epochs="${EPOCHS:-60}"
members=3
version="${VERSION:-$(date +%Y.%m.%d)}"
real_layers="${REAL_LAYERS:-}"
label_map="${LABEL_MAP:-pblm}"
lr="${LR:-2e-3}"
multitask=()
if [[ -n "$real_layers" ]]; then
    multitask=(--layers "$real_layers" --label-map "$label_map" --max-layers-per-label "${MAX_LAYERS_PER_LABEL:-200}" --layer-weight "${LAYER_WEIGHT:-0.5}")
fi
description="ISDNet-SR (seed 000) checkpoint ensemble, 3 heads on one trunk, trained on synthetic 256x256 powder-bed layers; a demo model, not one for a real printer"
if [[ -n "$real_layers" ]]; then
    description="ISDNet-SR (seed 000) checkpoint ensemble, 3 segmentation heads on one trunk trained on synthetic 256x256 layers, and a layer-level classification head on the shared encoder (seed 004) trained on real powder-bed layers ($(basename "$real_layers")); a demo model, not one for a real printer"
fi
if [[ -n "${INIT:-}" ]]; then
    multitask+=(--init "$INIT")
fi

rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)

bt synth --out "$work/data" --layers "$layers" --size "$size" --seed 11
bt synth --sample-build --out "$work/sample-build" --size "$size" --seed 2026
bt train --arch isdnet-sr --data "$work/data" --epochs "$epochs" --out "$work/run" \
    --crop 128 --batch-size 8 --lr "$lr" --class-weights inverse-sqrt --seed 0 "${multitask[@]}"
bt calibrate --run "$work/run" --members "$members"
bt export --run "$work/run" -o "$work/model/model.onnx" --name bedsight-synthetic --version "$version" \
    --description "$description"
bt quantize --model "$work/model/model.onnx" --data "$work/data" -o "$work/model/model.int8.onnx" --margin 0.02 --calibration-images 64
bt evaluate --model "$work/model/model.onnx" --data "$work/data" --split test --out "$work/eval-fp32"
bt evaluate --model "$work/model/model.int8.onnx" --data "$work/data" --split test --out "$work/eval-int8"
if [[ -n "$real_layers" ]]; then
    bt evaluate-layers --model "$work/model/model.int8.onnx" --layers "$real_layers" --label-map "$label_map" --split test --out "$work/eval-layers"
fi

mkdir -p "$assets"
# checks the model on the sample build; replaces assets/default-model and assets/sample-build only if it passes
"$py" -m bedsight_train.default_model --work "$work" --assets "$assets" --command "quantize/scripts/build-default-model.sh"

if "$py" -c "from bedsight_train.pack import find_bedsight_bin; import sys; sys.exit(0 if find_bedsight_bin() else 1)" 2>/dev/null; then
    bt pack --model "$assets/default-model/model.onnx" --int8 "$assets/default-model/model.int8.onnx" \
        --manifest "$assets/default-model/manifest.toml" \
        --selftest-input "$assets/default-model/selftest/input.png" \
        --selftest-mask "$assets/default-model/selftest/expected_mask.png" \
        -o "$assets/default.bsimg"
else
    echo "no bedsight binary found: skipped packing assets/default.bsimg (run \`bedsight-train pack\` later)"
fi
echo "default model rebuilt in $(( ($(date +%s) - start) / 60 )) min"
