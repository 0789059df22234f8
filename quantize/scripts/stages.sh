# Sourced after common.sh by build-default-model.sh, build-default-model-from-q.sh and
# leave-camera-out.sh: the training stages of the default model, and what follows them. The caller
# sets `resume` (1 carries stages on, see build-default-model.sh) and calls common_options before
# the 1024x1024 stages.

# build_setup DEFAULT_WORK: what both default-model builds read from the environment (WORK,
# VERSION, REAL_LAYERS, LABEL_MAP, RESUME) into `work`, `version`, `real_layers`, `label_map`
# and `resume`, the real layers checked, the binary found, and `start` set. RESUME=1 carries on
# a build that stopped (a session that ended, a power cut): the data already written in $WORK is
# kept, each training stage resumes from its last checkpoint (train --resume: the weights, the
# optimiser, the schedule and the random state, so the result is the uninterrupted build's), and
# a stage already complete is not trained again; everything after training reruns. Without it
# $WORK starts empty.
build_setup() {
    work="${WORK:-$1}"
    version="${VERSION:-$(date +%Y.%m.%d)}"
    real_layers="${REAL_LAYERS:-$repo/../shared/data/pblm}"
    label_map="${LABEL_MAP:-pblm}"
    resume="${RESUME:-0}"
    if [[ ! -d "$real_layers" ]]; then
        echo "real layers $real_layers: not found; set REAL_LAYERS to a folder of label folders (e.g. the PBLM photographs)" >&2
        exit 2
    fi
    need_bedsight_bin
    if [[ "$resume" != 1 ]]; then
        rm -rf "$work"
    fi
    mkdir -p "$work"
    start=$(date +%s)
}

# model_description [HOW]: the manifest's description of a model these stages build; HOW says
# where its training differs from the full build's (from a committed stage, say)
model_description() {
    echo "ISDNet-SR (seed 000) ensemble, 3 heads on one trunk (2 checkpoints of one run, 1 head of its own random draw), judging the bed at 1024x1024; trained on synthetic layers, synthetic defects planted on the clean real beds of $(basename "$real_layers") and the weak losses of its image-level labels, ${1:+$1, }checkpoints ranked on its validation real layers"
}

# synth_once MARKER ARGS...: write a dataset unless RESUME=1 finds it complete (its MARKER file,
# written last)
synth_once() {
    local marker=$1
    shift
    if [[ "$resume" == 1 && -f "$marker" ]]; then
        echo "kept $(dirname "$marker")"
    else
        bt synth "$@"
    fi
}

# train_stage RUN EPOCHS ARGS...: train a stage, or with resume=1 carry it on from its last
# checkpoint (or skip it when all its epochs are there)
train_stage() {
    local run=$1 epochs=$2
    shift 2
    local done=0
    if [[ "$resume" == 1 && -d "$run/checkpoints" ]]; then
        done=$(find "$run/checkpoints" -name 'epoch-*.pt' | wc -l)
    fi
    if (( done >= epochs )); then
        echo "kept $run ($done epochs)"
    elif (( done > 0 )); then
        bt train --out "$run" --epochs "$epochs" "$@" --resume
    else
        bt train --out "$run" --epochs "$epochs" "$@"
    fi
}

# common_options DATA REAL_LAYERS LABEL_MAP: sets `common`, the options of every 1024x1024 stage:
# 256-px crops (the network is fully convolutional), half of them over a pixel of a class the
# layer holds (with uniform crops streaking and lattice were never learnt), half shrunk from
# windows up to the whole bed (stage 0's scale), beside the real layers of the label map
common_options() {
    common=(--arch isdnet-sr --data "$1" --crop 256 --class-weights inverse-sqrt
        --foreground-share 0.5 --min-scale 0.25
        --real-layers "$2" --label-map "$3" --max-layers-per-label 150)
}

# stage_after PREVIOUS RUN EPOCHS ARGS...: train RUN from PREVIOUS's last checkpoint
stage_after() {
    local previous=$1 run=$2 epochs=$3
    shift 3
    train_stage "$run" "$epochs" "${common[@]}" --init "$(ls "$previous/checkpoints/"*.pt | sort | tail -n 1)" "$@"
}

# BatchNorm frozen from K on, so that training normalises as the box does (small mixed batches of
# synthetic and real crops left the running statistics fitting neither domain)
frozen=(--freeze-batch-norm --lr-schedule cosine)

# The weak losses of N on: absence and presence on every real layer, limited on the defective
# layers to the classes whose image labels can be trusted (a clean layer keeps every class absent);
# super-elevation's presence pooled over its own k (0.01 % of a layer, about the box's smallest
# defect): a part's tip standing proud is a speck, and the 0.2 % that suits a scratch made the
# network paint the dark rim of uneven beds super-elevation to fill it (realbed.py, TOP_K_SHARE).
# (Incompleteness's absence on the Deformation beds, --weak-absent-classes, lost the uneven beds:
# quantize/README.md, "A part's tip, and incompleteness's absence".)
weak=(--weak-weight 1 --weak-layers all --weak-classes super-elevation,streaking,hopping
    --presence-top-k super-elevation=0.0001 "${frozen[@]}" --plant-batch 4)

# weak_stages WORK: from WORK/run-l, the stages that read every real layer's image-level label
# (N, O, Q, R), then the head of its own draw, and the ensemble: R's 2 best checkpoints and the
# head (WORK/run/ensemble.pt).
weak_stages() {
    local work=$1
    stage_after "$work/run-l" "$work/run-n" 8 "${weak[@]}" --batch-size 2 --lr 1.5e-4 --seed 5
    stage_after "$work/run-n" "$work/run-o" 8 "${weak[@]}" --batch-size 2 --lr 1e-4 --seed 6
    stage_after "$work/run-o" "$work/run-q" 16 "${weak[@]}" --batch-size 4 --lr 1e-4 --seed 8
    stage_after "$work/run-q" "$work/run" 18 "${weak[@]}" --batch-size 4 --lr 5e-5 --seed 9 --mask-absence-weight 3
    members_with_own_draw "$work"
}

# members_with_own_draw WORK: one more member beside WORK/run's: a head of its own random draw
# trained on the run's best trunk. The run's checkpoints differ in one small head and never
# disagree; a head from another start parts from them where the data did not pin it, and the box's
# uncertainty then says where it is wrong (issue 19). The first calibrate names the best
# checkpoint, the trunk it learns on; the second makes the ensemble: the run's 2 best checkpoints
# and the head (WORK/run/ensemble.pt). (Two such heads beside three checkpoints said it better but
# cost 40 % more time and 525 MiB: quantize/README.md, "Members of their own random draw".)
members_with_own_draw() {
    local work=$1
    bt calibrate --run "$work/run" --members 1
    local best
    best="$work/run/checkpoints/$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["trunk_checkpoint"])' "$work/run/calibration.json")"
    train_stage "$work/run-head-22" 24 "${common[@]}" --init "$best" --freeze-trunk --fresh-head "${weak[@]}" \
        --batch-size 4 --lr 1e-3 --seed 22 --mask-absence-weight 3
    bt calibrate --run "$work/run" --members 2 --head-runs "$work/run-head-22"
}

# finish_model WORK VERSION DESCRIPTION REAL_LAYERS LABEL_MAP COMMAND: from WORK/run's ensemble,
# the graphs, every figure, the gates and the assets. Writes assets/default-model,
# assets/sample-build (from WORK/sample-build), assets/default.bsimg and assets/sample-build-real
# only when the model passes the sample-build check and the real-bed gate (default_model.py).
finish_model() {
    local work=$1 version=$2 description=$3 real_layers=$4 label_map=$5 command=$6
    local assets="$repo/assets"
    bt export --run "$work/run" -o "$work/model/model.onnx" --name bedsight-real --version "$version" \
        --description "$description"
    bt quantize --model "$work/model/model.onnx" --data "$work/data" -o "$work/model/model.int8.onnx" --margin 0.02 --calibration-images 16
    bt evaluate --model "$work/model/model.onnx" --data "$work/data" --split test --out "$work/eval-fp32"
    bt evaluate --model "$work/model/model.int8.onnx" --data "$work/data" --split test --out "$work/eval-int8"
    # the second generator, never trained on: how much of the first one's figure is the generator
    bt evaluate --model "$work/model/model.onnx" --data "$work/data-alt" --split all --out "$work/eval-alt-fp32"
    # the real figures, as the box judges: the held-out split and the hand-labelled layers, with
    # the shipped configuration (each camera's corners and flat field set as its integrator
    # would), each layer alone and each folder replayed as a build (recoats and tracks)
    bt pack --model "$work/model/model.onnx" -o "$work/model.bsimg"
    "$py" -m bedsight_train.real_eval --model "$work/model.bsimg" --config "$assets/bedsight.toml" --layers "$real_layers" \
        --label-map "$label_map" --labels "$repo/quantize/real-eval/labels.json" --split test --out "$work/eval-real" --as-build
    mkdir -p "$assets"
    # checks the model on the sample build and on the clean held-out real layers (the real-bed
    # gate); replaces assets/default-model and assets/sample-build only if both pass
    "$py" -m bedsight_train.default_model --work "$work" --assets "$assets" --command "$command"
    cp "$work/model.bsimg" "$assets/default.bsimg"
    "$py" "$repo/quantize/scripts/make-real-sample-build.py" "$real_layers" "$assets/sample-build-real"
}
