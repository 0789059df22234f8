#!/usr/bin/env bash
# Rebuild the default model image that ships in the repository, and the demo's sample builds.
#
#   quantize/scripts/build-default-model.sh          # REAL_LAYERS defaults to ../shared/data/pblm
#   REAL_LAYERS=/path/to/pblm quantize/scripts/build-default-model.sh
#   RESUME=1 quantize/scripts/build-default-model.sh   # carry on an interrupted build in $WORK
#
# The model judges the bed at the camera's resolution (1024x1024, about 0.24 mm per pixel on a
# 250 mm bed) and learns real beds (bedsight-train train --real-layers, realbed.py): pixel losses on
# synthetic layers and on synthetic defects planted on the clean real layers, and the weak losses
# of the real layers' image-level labels. It is the chain of runs that gave the best held-out
# real-bed figures measured here (README of quantize/, "Real beds": stage 0, the stages with the
# clean beds as background, K, L, then N, O and Q with the weak losses on every real layer, and R):
#   stage 0   whole synthetic 256x256 layers (the patterns' scale: hopping and lattice apart);
#   stage 1-2 1024x1024 layers on 256-px crops, half of them shrunk from larger windows, the clean
#             real beds background everywhere (--weak-layers clean);
#   K, L      BatchNorm frozen at its running statistics (the box normalises with them), twice
#             the planted crops in L;
#   N, O, Q   absence and presence on every real layer (--weak-layers all), Q with twice the
#             synthetic crops per step; super-elevation's presence pooled over a speck's area;
#   R         Q carried on at a low rate with the absence of every class a synthetic crop's mask
#             does not hold, on its top k pixels too (--mask-absence-weight): the part edges of
#             synthetic beds, which Q calls streaking, become background; 18 epochs, since after
#             6 a support lattice's edge was still called hopping. R's two best checkpoints
#             are two of the ensemble's members;
#   head      a head drawn afresh and trained alone on R's best trunk (--freeze-trunk
#             --fresh-head, 24 epochs, the R recipe at 1e-3): the third member, which disagrees
#             with R's two where the box is wrong (calibrate --head-runs).
# The real layers reach the network as the box's camera path delivers them: the label map's
# cameras cut the bed out of each photograph and divide the camera's lighting out (flat field: from
# a clean layer, or for the Plateform camera, which has none, the median of its training layers).
# The fully convolutional graph is exported at 1024x1024. REAL_LAYERS is a folder of label
# folders of real layers (the PBLM photographs) with the label map LABEL_MAP (default: pblm,
# quantize/bedsight_train/label_maps/pblm.toml); its held-out split (the last fifth of each
# folder) is never trained on, and its validation layers rank the checkpoints.
#
# Needs a `bedsight` binary (BEDSIGHT_BIN, PATH, or target/): the model is packed and judged by it
# on the held-out real layers before anything in assets/ changes. Writes assets/sample-build/ (the
# synthetic layers `bedsight demo` replays), assets/sample-build-real/ (held-out real layers made
# beds, `bedsight demo --build real`), assets/default-model/ (the unpacked model: manifest.toml,
# model.onnx, model.int8.onnx, selftest/, report.md, metrics.json, real-eval.md, report/*.png) and
# assets/default.bsimg, only when the model passes the sample-build check and the real-bed gate.
# Intermediate files go to $WORK (default out/default-model-build, ignored by git). About an hour
# and three quarters on two idle CPU cores (BEDSIGHT_TRAIN_THREADS=2; an epoch takes about a minute);
# everything is seeded, so a rerun gives the same data and nearly the same model (PyTorch on CPU
# is not bit-for-bit deterministic across machines).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
build_setup "$repo/out/default-model-build"
layers="${LAYERS:-160}"
size=1024          # the camera's resolution: the graph is exported at the bed's full size
description="$(model_description)"

synth_once "$work/data/dataset.toml" --out "$work/data" --layers "$layers" --size "$size" --seed 11
synth_once "$work/sample-build/layers.toml" --sample-build --out "$work/sample-build" --size "$size" --seed 2026
synth_once "$work/data-alt/dataset.toml" --generator alt --out "$work/data-alt" --layers 40 --size "$size" --seed 5
# Stage 0: the same widths on whole synthetic 256x256 layers, where the periodic patterns'
# pitch (5-11 px) lets hopping and lattice be told apart; at 1024x1024 alone one of the two
# always took the other's pixels.
synth_once "$work/data-256/dataset.toml" --out "$work/data-256" --layers "$layers" --size 256 --seed 11
train_stage "$work/run-stage0" 60 --arch isdnet-sr --data "$work/data-256" --crop 128 --batch-size 8 \
    --lr 2e-3 --class-weights inverse-sqrt --seed 0

# Every 1024x1024 stage starts from the last checkpoint of the one before it (stages.sh)
common_options "$work/data" "$real_layers" "$label_map"
# the clean real beds background everywhere, BatchNorm free to move to the new scale
clean=(--weak-weight 1 --weak-layers clean)
stage_after "$work/run-stage0" "$work/run-stage1" 8 "${clean[@]}" --batch-size 2 --lr 2e-3 --lr-schedule constant --seed 0
stage_after "$work/run-stage1" "$work/run-stage2" 6 "${clean[@]}" --batch-size 2 --lr 1e-3 --lr-schedule cosine --seed 1
# K, L: BatchNorm frozen (stages.sh)
stage_after "$work/run-stage2" "$work/run-k" 10 "${clean[@]}" "${frozen[@]}" --batch-size 2 --lr 5e-4 --seed 2
stage_after "$work/run-k" "$work/run-l" 10 "${clean[@]}" "${frozen[@]}" --plant-batch 4 --batch-size 2 --lr 2.5e-4 --seed 3
# N, O, Q, R and the head of its own draw, from L (stages.sh)
weak_stages "$work"
finish_model "$work" "$version" "$description" "$real_layers" "$label_map" "quantize/scripts/build-default-model.sh"
echo "default model rebuilt in $(( ($(date +%s) - start) / 60 )) min"
