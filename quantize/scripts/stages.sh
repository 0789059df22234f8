# Sourced after common.sh by build-default-model.sh and leave-camera-out.sh: the training stages
# of the default model that both run. The caller sets `resume` (1 carries stages on, see
# build-default-model.sh) and calls common_options before the 1024x1024 stages.

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

# weak_stages WORK: from WORK/run-l, the stages that read every real layer's image-level label
# (N, O, Q, R), then the head of its own draw, and the ensemble: R's 2 best checkpoints and the
# head (WORK/run/ensemble.pt).
weak_stages() {
    local work=$1
    # N, O, Q: absence and presence on every real layer, limited on the defective layers to the
    # classes whose image labels can be trusted (a clean layer keeps every class absent)
    # super-elevation's presence pooled over its own k (0.01 % of a layer, about the box's smallest
    # defect): a part's tip standing proud is a speck, and the 0.2 % that suits a scratch made the
    # network paint the dark rim of uneven beds super-elevation to fill it (realbed.py, TOP_K_SHARE)
    # (Incompleteness's absence on the Deformation beds, --weak-absent-classes, lost the uneven
    # beds: quantize/README.md, "A part's tip, and incompleteness's absence".)
    local weak=(--weak-weight 1 --weak-layers all --weak-classes super-elevation,streaking,hopping
        --presence-top-k super-elevation=0.0001 "${frozen[@]}" --plant-batch 4)
    stage_after "$work/run-l" "$work/run-n" 8 "${weak[@]}" --batch-size 2 --lr 1.5e-4 --seed 5
    stage_after "$work/run-n" "$work/run-o" 8 "${weak[@]}" --batch-size 2 --lr 1e-4 --seed 6
    stage_after "$work/run-o" "$work/run-q" 16 "${weak[@]}" --batch-size 4 --lr 1e-4 --seed 8
    stage_after "$work/run-q" "$work/run" 18 "${weak[@]}" --batch-size 4 --lr 5e-5 --seed 9 --mask-absence-weight 3
    # One more member: a head of its own random draw trained on R's best trunk. R's checkpoints
    # differ in one small head and never disagree; a head from another start parts from them where
    # the data did not pin it, and the box's uncertainty then says where it is wrong (issue 19).
    # The first calibrate names R's best checkpoint, the trunk it learns on. (Two such heads beside
    # R's three said it better but cost 40 % more time and 525 MiB: quantize/README.md, "Members
    # of their own random draw".)
    bt calibrate --run "$work/run" --members 1
    local best
    best="$work/run/checkpoints/$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["trunk_checkpoint"])' "$work/run/calibration.json")"
    train_stage "$work/run-head-22" 24 "${common[@]}" --init "$best" --freeze-trunk --fresh-head "${weak[@]}" \
        --batch-size 4 --lr 1e-3 --seed 22 --mask-absence-weight 3
    bt calibrate --run "$work/run" --members 2 --head-runs "$work/run-head-22"
}
