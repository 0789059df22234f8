#!/usr/bin/env bash
# Rebuild the default model image that ships in the repository, and the demo's sample build.
#
#   quantize/scripts/build-default-model.sh          # REAL_LAYERS defaults to ../shared/data/pblm
#   REAL_LAYERS=/path/to/pblm quantize/scripts/build-default-model.sh
#
# The model judges the bed at the camera's resolution (1024x1024, about 0.24 mm per pixel on a
# 250 mm bed) and learns real beds (bedsight-train train --real-layers, realbed.py): pixel losses
# on synthetic layers and on synthetic defects planted on the clean real layers, weak losses on the
# image-level labelled real layers (a class absent from a label is absent everywhere; a class
# present is somewhere), and lighting changes on every input. It trains on 256x256 crops and the
# fully convolutional graph runs on the whole bed. REAL_LAYERS is a folder of label folders of
# real layers (the PBLM photographs) with the label map LABEL_MAP (default: pblm,
# quantize/bedsight_train/label_maps/pblm.toml); its held-out split (the last fifth of each
# folder) is never trained on.
#
# Writes assets/sample-build/ (the layers `bedsight demo` replays), assets/default-model/ (the
# unpacked model: manifest.toml, model.onnx, model.int8.onnx, selftest/, report.md, metrics.json,
# report/*.png) and, when a `bedsight` binary is found (BEDSIGHT_BIN, PATH, or target/), packs
# assets/default.bsimg. Intermediate files go to $WORK (default out/default-model-build, ignored
# by git), with the synthetic test sets of both generators evaluated in eval-*/. About 1-2 hours
# on two CPU cores; everything is seeded, so a rerun gives the same data and nearly the same model
# (PyTorch on CPU is not bit-for-bit deterministic across machines).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work="${WORK:-$repo/out/default-model-build}"
assets="$repo/assets"
layers="${LAYERS:-200}"
size=1024          # the camera's resolution: the graph is exported at the bed's full size
crop=256           # training crops (the network is fully convolutional)
epochs="${EPOCHS:-12}"
members=3
version="${VERSION:-$(date +%Y.%m.%d)}"
real_layers="${REAL_LAYERS:-$repo/../shared/data/pblm}"
label_map="${LABEL_MAP:-pblm}"
lr="${LR:-2e-3}"
if [[ ! -d "$real_layers" ]]; then
    echo "real layers $real_layers: not found; set REAL_LAYERS to a folder of label folders (e.g. the PBLM photographs)" >&2
    exit 2
fi
description="ISDNet-SR (seed 000) checkpoint ensemble, 3 heads on one trunk, judging the bed at 1024x1024; trained on synthetic layers, synthetic defects planted on real clean beds and image-level labelled real layers ($(basename "$real_layers")) under weak pixel losses"
init=()
if [[ -n "${INIT:-}" ]]; then
    init=(--init "$INIT")
fi

rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)

bt synth --out "$work/data" --layers "$layers" --size "$size" --seed 11
bt synth --sample-build --out "$work/sample-build" --size "$size" --seed 2026
bt synth --generator alt --out "$work/data-alt" --layers 40 --size "$size" --seed 5
bt train --arch isdnet-sr --data "$work/data" --epochs "$epochs" --out "$work/run" \
    --crop "$crop" --batch-size 2 --lr "$lr" --class-weights inverse-sqrt --seed 0 \
    --real-layers "$real_layers" --label-map "$label_map" --max-layers-per-label "${MAX_LAYERS_PER_LABEL:-150}" "${init[@]}"
bt calibrate --run "$work/run" --members "$members"
bt export --run "$work/run" -o "$work/model/model.onnx" --name bedsight-real --version "$version" \
    --description "$description"
bt quantize --model "$work/model/model.onnx" --data "$work/data" -o "$work/model/model.int8.onnx" --margin 0.02 --calibration-images 16
bt evaluate --model "$work/model/model.onnx" --data "$work/data" --split test --out "$work/eval-fp32"
bt evaluate --model "$work/model/model.int8.onnx" --data "$work/data" --split test --out "$work/eval-int8"
# the second generator, never trained on: how much of the first one's figure is the generator
bt evaluate --model "$work/model/model.onnx" --data "$work/data-alt" --split all --out "$work/eval-alt-fp32"

mkdir -p "$assets"
# checks the model on the sample build; replaces assets/default-model and assets/sample-build only if it passes
"$py" -m bedsight_train.default_model --work "$work" --assets "$assets" --command "quantize/scripts/build-default-model.sh"

if "$py" -c "from bedsight_train.pack import find_bedsight_bin; import sys; sys.exit(0 if find_bedsight_bin() else 1)" 2>/dev/null; then
    bt pack --model "$assets/default-model/model.onnx" --int8 "$assets/default-model/model.int8.onnx" \
        --manifest "$assets/default-model/manifest.toml" \
        --selftest-input "$assets/default-model/selftest/input.png" \
        --selftest-mask "$assets/default-model/selftest/expected_mask.png" \
        -o "$assets/default.bsimg"
    # the real figures, as the box judges: the held-out split and the hand-labelled layers
    "$py" -m bedsight_train.real_eval --model "$assets/default.bsimg" --layers "$real_layers" \
        --labels "$repo/quantize/real-eval/labels.json" --split test --out "$work/eval-real"
else
    echo "no bedsight binary found: skipped packing assets/default.bsimg and the real figures (run \`bedsight-train pack\` later)"
fi
echo "default model rebuilt in $(( ($(date +%s) - start) / 60 )) min"
