#!/usr/bin/env bash
# The shipped default model: the chain of build-default-model.sh as it was at commit 1fb0e7f, up
# to its stage Q (quantize/checkpoints/chain-q.pt, committed), carried on over the first generator
# as synth.py now draws it (each class over the range the process gives it):
#   H     16 epochs from Q with R's recipe (the absence of every class a synthetic crop's mask does
#         not hold) at Q's rate;
#   run   H carried on 16 more epochs, another seed (H's synthetic validation MIoU still rose);
#   head  a head of its own random draw on the best trunk, the third member (stages.sh);
# then the graphs, every figure, the gates and the assets as the full build makes them
# (finish_model). The demo's sample build stays the one in assets/sample-build, drawn by synth.py
# before its ranges were widened: the tests and the demo's ledger know its layers, and the widened
# streaks and lattices are not yet learnt (quantize/README.md, "Real beds").
#
#   quantize/scripts/build-default-model-from-q.sh        # REAL_LAYERS defaults to ../shared/data/pblm
#   RESUME=1 quantize/scripts/build-default-model-from-q.sh   # carry on an interrupted build in $WORK
#
# About an hour and a quarter on two idle CPU cores (BEDSIGHT_TRAIN_THREADS=2). Intermediate files
# go to $WORK (default out/default-model-from-q, ignored by git).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"
build_setup "$repo/out/default-model-from-q"
description="$(model_description "from stage Q on over the first generator's widened ranges")"

synth_once "$work/data/dataset.toml" --out "$work/data" --layers 160 --size 1024 --seed 11
synth_once "$work/data-alt/dataset.toml" --generator alt --out "$work/data-alt" --layers 40 --size 1024 --seed 5
rm -rf "$work/sample-build"
cp -r "$repo/assets/sample-build" "$work/sample-build"

common_options "$work/data" "$real_layers" "$label_map"
train_stage "$work/run-h" 16 "${common[@]}" --init "$repo/quantize/checkpoints/chain-q.pt" "${weak[@]}" \
    --batch-size 4 --lr 1e-4 --seed 10 --mask-absence-weight 3
stage_after "$work/run-h" "$work/run" 16 "${weak[@]}" --batch-size 4 --lr 1e-4 --seed 12 --mask-absence-weight 3
members_with_own_draw "$work"
finish_model "$work" "$version" "$description" "$real_layers" "$label_map" "quantize/scripts/build-default-model-from-q.sh"
echo "default model rebuilt from Q in $(( ($(date +%s) - start) / 60 )) min"
