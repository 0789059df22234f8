#!/usr/bin/env bash
# Measure the model on a camera it never learnt from: the default model's recipe, with one
# camera's layers left out of training, judged through the box on its own held-out layers and on
# every layer of the camera left out (issue 19's foreign layers; no layers of other machines can
# be had here, so a camera of the training set stands in for one).
#
#   quantize/scripts/leave-camera-out.sh                    # CAMERAS defaults to pblm-plate
#   CAMERAS=pblm-plate WORK=out/leave-camera-out quantize/scripts/leave-camera-out.sh
#   RESUME=1 quantize/scripts/leave-camera-out.sh           # carry on an interrupted run
#
# It reuses the default build's runs up to L (SOURCE_WORK, default out/default-model-build, from
# build-default-model.sh): those stages learn from the synthetic layers and the clean real layers
# alone, so the camera left out must have no clean layer (leave-camera-out.py refuses one that
# has). From L it trains the build's N, O, Q, R and head of its own draw (stages.sh) on the other
# cameras' layers, exports, quantizes and packs, and writes:
#   WORK/eval-own/      real_eval on the held-out split of the cameras it learnt from
#   WORK/eval-foreign/  real_eval on every layer of the camera left out (--split all)
#   WORK/foreign/       foreign.md and foreign.json: the share the domain check calls unfamiliar
#                       on each side, the uncertainty score's, and the AUROC of the uncertainty
#                       and of the domain score for telling the two apart
# About 75 minutes on two idle CPU cores. Nothing in assets/ changes.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
source_work="${SOURCE_WORK:-$repo/out/default-model-build}"
work="${WORK:-$repo/out/leave-camera-out}"
cameras="${CAMERAS:-pblm-plate}"
real_layers="${REAL_LAYERS:-$repo/../shared/data/pblm}"
label_map="${LABEL_MAP:-pblm}"
version="${VERSION:-$(date +%Y.%m.%d)}"
resume="${RESUME:-0}"
if [[ ! -d "$source_work/run-l/checkpoints" || ! -f "$source_work/data/dataset.toml" ]]; then
    echo "$source_work: no run-l or data; run quantize/scripts/build-default-model.sh first (or set SOURCE_WORK to its WORK)" >&2
    exit 2
fi
need_bedsight_bin
if [[ "$resume" != 1 ]]; then
    rm -rf "$work"
fi
mkdir -p "$work"

PYTHONPATH="$repo/quantize" "$py" "$(dirname "${BASH_SOURCE[0]}")/leave-camera-out.py" "$real_layers" "$label_map" \
    "$repo/quantize/real-eval/labels.json" "$cameras" "$work"
ln -sfn "$source_work/run-l" "$work/run-l"
common_options "$source_work/data" "$work/real-layers" "$work/label-map.toml"
weak_stages "$work"
bt export --run "$work/run" -o "$work/model/model.onnx" --name bedsight-without-"${cameras//,/-}" --version "$version" \
    --description "the default model's recipe without the layers of camera(s) $cameras (leave-camera-out.sh)"
bt quantize --model "$work/model/model.onnx" --data "$source_work/data" -o "$work/model/model.int8.onnx" --margin 0.02 --calibration-images 16
bt pack --model "$work/model/model.onnx" -o "$work/model.bsimg"

"$py" -m bedsight_train.real_eval --model "$work/model.bsimg" --config "$repo/assets/bedsight.toml" --layers "$work/real-layers" \
    --label-map "$work/label-map.toml" --labels "$work/labels.json" --split test --out "$work/eval-own"
"$py" -m bedsight_train.real_eval --model "$work/model.bsimg" --config "$repo/assets/bedsight.toml" --layers "$work/foreign-layers" \
    --label-map "$work/foreign-label-map.toml" --split all --out "$work/eval-foreign"
"$py" -m bedsight_train.foreign --own "$work/eval-own/real-eval.json" --foreign "$work/eval-foreign/real-eval.json" --out "$work/foreign"
