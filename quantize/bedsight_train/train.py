"""`bedsight-train train`: train ISDNet-SR or AM-SegNet from scratch, a checkpoint per epoch.

Algorithm 1 step 1 of seed 000: train, compute the evaluation metrics on the validation set and
save the checkpoint after every epoch. Each checkpoint records its validation CPA, IoU, MPA, MIoU
(Eq. 24-27) and Score = 0.5 MPA + 0.5 MIoU (Eq. 28), which `calibrate` ranks by.

A run folder holds run.json (architecture, widths, classes, normalisation, split), history.json,
checkpoints/epoch-NNNN.pt and curves.png.

With `--layers DIR --label-map FILE` it trains the multi-task network of `multitask.py` (seed 004):
the same segmentation training plus a layer-level classification head on image-level labelled
layers; each checkpoint then also records the head's validation macro F1 and ranks by
0.5 Score + 0.5 macro F1 (`rank`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .calibrate import RUN_LABEL_MAPS
from .common import BadInput, limit_threads, read_toml
from .losses import LOSSES, focal_tversky_loss
from .metrics import confusion, segmentation_metrics
from .models import ARCHS, SIZE_MULTIPLE, build_model, device_of, make_config, preset_widths

# Learning rates: seed 000 §4.2 trains ISDNet-SR with Adam at a constant, "relatively large"
# learning rate (0.01) so that checkpoints along the way differ (§3.2.1); on our small CPU budget
# a constant 3e-3 converges more reliably. Seed 002 §3.1 trains AM-SegNet with Adam from 1e-3 with
# annealing.
DEFAULT_LR = {"isdnet-sr": 3e-3, "am-segnet": 1e-3}


@dataclass
class TrainOptions:
    arch: str
    data: Path
    epochs: int
    out: Path
    batch_size: int = 8
    lr: float | None = None
    seed: int = 0
    split_seed: int = 0
    widths: dict[str, Any] = field(default_factory=dict)  # architecture config overrides
    preset: str = "small"  # named widths (models.PRESETS) that `widths` overrides
    crop: int | None = None  # train on random square crops of this size (full images if None)
    class_weights: str = "none"  # "none" or "inverse-sqrt"
    focal_tversky: bool = False  # add seed 001's Focal Tversky loss (Eq. 1) to the architecture's loss
    sr_weight: float = 0.1  # weight of L_MSE for ISDNet-SR
    photometric: float = 0.15  # random gain 1 +- this and offset +- this/3 (0..1 scale); 0 turns it off
    foreground_share: float = 0.0  # share of crops placed over a pixel of a class the layer holds (_augment)
    min_scale: float = 1.0  # with a crop, half the crops are shrunk from windows up to crop / min_scale wide (_augment)
    freeze_batch_norm: bool = False  # BatchNorm normalises with its running statistics and keeps them (fine-tuning)
    overwrite: bool = False  # replace the checkpoints of an earlier run in the same folder
    max_steps_per_epoch: int | None = None  # for tests
    progress: bool = True
    # multi-task mode (multitask.py): image-level labelled layer folders and their label map
    layers: Path | None = None
    label_map: Path | None = None
    layer_weight: float = 0.5  # w in L = L_seg + w L_layer
    layer_batch_size: int = 4
    max_layers_per_label: int | None = None  # per split, to bound a recipe's time
    mixed_sizes: str = "resize"  # layers of another size than the first: "resize" or "refuse"
    init: Path | None = None  # start from this checkpoint's weights (same architecture)
    # with --init: keep its trunk as it is and train the head alone (an ensemble member of its own
    # beside that checkpoint's heads, calibrate --head-runs) ...
    freeze_trunk: bool = False
    # ... and draw that head afresh from --seed instead of starting from the checkpoint's
    fresh_head: bool = False
    # real-bed mode (realbed.py): image-level labelled real layers (with --label-map) under weak
    # pixel losses, and synthetic defects planted on their clean layers
    real_layers: Path | None = None
    plant_batch: int = 2  # crops of clean real layers with planted defects per step (pixel losses)
    real_batch: int = 2  # crops of real layers per step (absence losses)
    mil_every: int = 4  # one whole defective real layer every this many steps (presence and absence)
    weak_layers: str = "all"  # which real layers the weak losses read: all, or the clean ones only
    weak_weight: float = 1.0  # weight of the weak losses beside the pixel losses
    weak_classes: list[str] | None = None  # the classes the weak losses speak of (None: all)
    weak_absent_classes: list[str] | None = None  # and those whose absence alone they speak of
    presence_top_k: dict[str, float] | None = None  # L_pres's k per class, a share of the layer (realbed.TOP_K_SHARE elsewhere)
    mask_absence_weight: float = 0.0  # weight of realbed.mask_absence_loss on the synthetic crops
    real_val_layers: int = 12  # validation real layers judged whole after each epoch
    # "cosine": the learning rate falls along a cosine to 5 % of --lr over the run (AM-SegNet always
    # anneals, seed 002 §3.1); "constant": it stays at --lr; "snapshot": `cycles` cosine cycles, each
    # restarting at --lr (snapshot_factor). None: the architecture's default.
    lr_schedule: str | None = None
    cycles: int = 1  # the snapshot schedule's cycles (calibrate takes each member from another)
    device: str = "cpu"  # cpu, cuda or auto (pick_device)
    # carry on an interrupted run in --out from its last checkpoint: the weights, the optimiser's
    # and the learning-rate schedule's state, the random generators and the history (the same
    # options are required: they are compared with the run's run.json)
    resume: bool = False


def _check_run_folder(out: Path, arch: str, overwrite: bool) -> None:
    run_json = out / "run.json"
    if run_json.exists():
        try:
            previous = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            raise BadInput(f"{run_json}: not valid JSON; remove the run folder or pick another") from None
        if previous.get("arch") != arch:
            raise BadInput(
                f"{run_json}: this run folder holds a {previous.get('arch')} run; training {arch} here would "
                "mix checkpoints of two architectures. Pick another --out."
            )
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir():
        from .models import load_checkpoint

        existing = sorted(ckpt_dir.glob("*.pt"))
        for path in existing:
            load_checkpoint(path, expect_arch=arch)
        if existing and not overwrite:
            raise BadInput(
                f"{ckpt_dir}: holds {len(existing)} checkpoint(s) of an earlier run, which calibrate would mix with "
                "the new ones; pass --overwrite to replace them, or pick another --out"
            )


def _last_checkpoint(out: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    """The last checkpoint of the run in `out`, for --resume; refused when there is none or it
    was written before checkpoints carried the optimiser's state."""
    from .models import load_checkpoint

    if not (out / "run.json").is_file():
        raise BadInput(f"--resume: {out} holds no run (no run.json); start it without --resume")
    checkpoints = sorted((out / "checkpoints").glob("epoch-*.pt"))
    if not checkpoints:
        raise BadInput(f"--resume: {out / 'checkpoints'} holds no checkpoint; start the run again without --resume")
    saved = load_checkpoint(checkpoints[-1], expect_arch=arch)
    if "optimiser" not in saved:
        raise BadInput(f"--resume: {checkpoints[-1]} has no optimiser state (written by an older bedsight-train); start a new run with --init {checkpoints[-1]}")
    return checkpoints[-1], saved


# run.json keys that may differ between a run and its resumption: none of them changes what is trained
# "preset": its widths are in "config", which is compared (runs from before presets have none)
RESUME_MAY_DIFFER = {"parameters", "preset"}


def _check_same_run(run_json: Path, run_info: dict[str, Any]) -> None:
    """--resume carries on the same run: every option that shapes it must be the run's."""
    previous = json.loads(run_json.read_text())
    differ = sorted(k for k in set(previous) | set(run_info) if k not in RESUME_MAY_DIFFER and previous.get(k) != run_info.get(k))
    if differ:
        detail = "; ".join(f"{k}: the run has {previous.get(k)!r}, this command {run_info.get(k)!r}" for k in differ)
        raise BadInput(f"--resume: the command is not the run's in {run_json} ({detail}); give the run's own options")


def _restore(path: Path, saved: dict[str, Any], model, layer_head, optimiser, scheduler, rng) -> int:
    """Load a checkpoint's full state for --resume; returns the first epoch still to train."""
    model.load_state_dict(saved["state_dict"])
    if layer_head is not None and saved.get("layer_head"):
        layer_head.load_state_dict(saved["layer_head"]["state_dict"])
    optimiser.load_state_dict(saved["optimiser"])
    if scheduler is not None:
        if saved.get("scheduler") is None:
            raise BadInput(f"--resume: {path} was written without a learning-rate schedule; this command has one")
        scheduler.load_state_dict(saved["scheduler"])
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    return int(saved["epoch"]) + 1


def _history_until(path: Path, empty: dict[str, Any], epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """The run's history up to the end of epoch `epochs` (what came after the last checkpoint is
    dropped: it is trained again)."""
    history = json.loads(path.read_text()) if path.is_file() else empty
    history["epochs"] = [e for e in history.get("epochs", []) if e["epoch"] <= epochs]
    for key in empty:
        if key.startswith("step_"):
            history[key] = history.get(key, [])[: epochs * steps_per_epoch]
    history.pop("train_seconds", None)
    return history


def _on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with its tensors on the CPU: checkpoints load anywhere."""
    return {k: v.detach().cpu() for k, v in state.items()}


def snapshot_factor(step: int, steps_per_cycle: int) -> float:
    """The snapshot schedule's learning rate at `step` (from 0) as a share of --lr: Huang et al.,
    "Snapshot ensembles: train 1, get M for free" (ICLR 2017; seed 000's reference [37]), Eq. 2,
    alpha(t) = alpha_0 / 2 (cos(pi mod(t - 1, ceil(T / M)) / ceil(T / M)) + 1) with t = step + 1:
    each cycle starts at alpha_0 and falls to near 0 at its end, where the checkpoint is a member;
    the restart then carries the weights away to another minimum, so members differ more than
    neighbouring checkpoints of one slow descent."""
    return 0.5 * (math.cos(math.pi * (step % steps_per_cycle) / steps_per_cycle) + 1.0)


def class_weight_vector(masks: np.ndarray, k: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "inverse-sqrt":
        raise BadInput(f"--class-weights {mode!r}: expected none or inverse-sqrt")
    freq = data_mod.class_frequencies(masks, k)
    w = 1.0 / np.sqrt(np.maximum(freq, 1e-4))
    w = w / (w * freq).sum()  # keep the average weight per pixel at 1
    return torch.tensor(w, dtype=torch.float32)


def pick_device(name: str) -> torch.device:
    """--device: cpu, cuda (refused where PyTorch has no CUDA device), or auto (cuda where there
    is one, else cpu)."""
    if name not in ("cpu", "cuda", "auto"):
        raise BadInput(f"--device {name!r}: expected cpu, cuda or auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: PyTorch sees no CUDA device here (torch.cuda.is_available() is false); use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, inputs: np.ndarray, batch_size: int = 4) -> np.ndarray:
    model.eval()
    device = device_of(model)
    out = []
    for i in range(0, len(inputs), batch_size):
        out.append(model(torch.from_numpy(inputs[i : i + batch_size]).to(device)).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, inputs: np.ndarray, masks: np.ndarray, k: int, batch_size: int = 4) -> dict:
    model.eval()
    device = device_of(model)
    conf = np.zeros((k, k), dtype=np.int64)
    for i in range(0, len(inputs), batch_size):
        logits = model(torch.from_numpy(inputs[i : i + batch_size]).to(device))
        conf += confusion(logits.argmax(1).cpu().numpy(), masks[i : i + batch_size], k)
    metrics = segmentation_metrics(conf)
    metrics["confusion"] = conf.tolist()
    return metrics


def train(opts: TrainOptions) -> dict:
    """Train and return the history (per-step losses, per-epoch validation metrics)."""
    if opts.arch not in ARCHS:
        raise BadInput(f"--arch {opts.arch!r}: expected one of {', '.join(ARCHS)}")
    if opts.epochs < 1:
        raise BadInput("--epochs must be at least 1")
    if not 0.0 <= opts.foreground_share <= 1.0:
        raise BadInput(f"--foreground-share {opts.foreground_share}: a share, from 0 to 1")
    if not 0.0 < opts.min_scale <= 1.0:
        raise BadInput(f"--min-scale {opts.min_scale}: a scale, above 0 and at most 1")
    if opts.min_scale < 1.0 and opts.crop is None:
        raise BadInput("--min-scale shrinks windows to the crop: give --crop")
    if opts.cycles != 1 and opts.lr_schedule != "snapshot":
        raise BadInput(f"--cycles {opts.cycles}: cycles belong to --lr-schedule snapshot")
    if opts.lr_schedule == "snapshot" and (opts.cycles < 1 or opts.epochs % opts.cycles):
        raise BadInput(f"--cycles {opts.cycles}: a whole number of epochs per cycle (--epochs {opts.epochs}), so that each cycle ends on a checkpoint")
    if opts.mask_absence_weight < 0:
        raise BadInput(f"--mask-absence-weight {opts.mask_absence_weight}: a weight, 0 or more")
    if opts.mask_absence_weight and opts.real_layers is None:
        raise BadInput("--mask-absence-weight belongs to the real-bed mode: give --real-layers")
    for flag, on in (("--fresh-head", opts.fresh_head), ("--freeze-trunk", opts.freeze_trunk)):
        if on and opts.init is None:
            raise BadInput(f"{flag} trains a head on another checkpoint's trunk: give that checkpoint with --init")
    limit_threads()
    toml_path = Path(opts.data) / "dataset.toml"
    if toml_path.is_file() and read_toml(toml_path).get("test_only"):
        raise BadInput(f"{opts.data}: a test set (dataset.toml says test_only = true, e.g. the second generator's): never train on it")
    ds = data_mod.load_dataset(opts.data, progress=opts.progress)
    h, w = ds.size
    multiple = SIZE_MULTIPLE[opts.arch]
    if h % multiple or w % multiple:
        raise BadInput(f"{opts.data}: images are {w}x{h}; {opts.arch} needs sides that are multiples of {multiple}")
    if opts.crop is not None and (opts.crop % multiple or opts.crop > min(h, w)):
        raise BadInput(f"--crop {opts.crop}: must be a multiple of {multiple} and at most {min(h, w)}")
    split = data_mod.dataset_split(ds, seed=opts.split_seed)
    layer_data = None
    if opts.layers is not None or (opts.label_map is not None and opts.real_layers is None):
        from . import multitask

        if opts.layers is None or opts.label_map is None:
            raise BadInput("multi-task training needs both --layers (the labelled layer folders) and --label-map")
        if opts.arch != "isdnet-sr":
            raise BadInput(f"multi-task training (--layers) reads ISDNet-SR's fused encoder; --arch {opts.arch} has none")
        if h != w:
            raise BadInput(f"{opts.data}: images are {w}x{h}; multi-task training resizes the layers to a square input")
        layer_data = multitask.load_layer_data(opts.layers, opts.label_map, h, [c.name for c in ds.classes], opts.max_layers_per_label, opts.mixed_sizes, opts.progress)
    real = None
    if opts.real_layers is not None:
        from . import realbed

        if opts.label_map is None:
            raise BadInput("--real-layers needs --label-map (which label folder carries which classes)")
        seg_names = [c.name for c in ds.classes]
        for option, names in (("--weak-classes", opts.weak_classes), ("--weak-absent-classes", opts.weak_absent_classes)):
            for name in names or []:
                if name not in seg_names[1:]:
                    raise BadInput(f"{option} {name}: not a defect class of {opts.data} ({', '.join(seg_names[1:])})")
        for name in sorted(set(opts.weak_absent_classes or []) & set(opts.weak_classes if opts.weak_classes is not None else seg_names[1:])):
            raise BadInput(f"--weak-absent-classes {name}: --weak-classes already speaks of its absence and presence")
        for name, share in (opts.presence_top_k or {}).items():
            if name not in seg_names[1:]:
                raise BadInput(f"--presence-top-k {name}: not a defect class of {opts.data} ({', '.join(seg_names[1:])})")
            if not 0.0 < share <= 1.0:
                raise BadInput(f"--presence-top-k {name}={share}: the share of a layer's pixels must be in (0, 1]")
        real = realbed.load_real_layers(opts.real_layers, opts.label_map, h, list(ds.classes), opts.max_layers_per_label, opts.mixed_sizes, opts.real_val_layers, opts.progress, opts.weak_classes, opts.presence_top_k, opts.weak_absent_classes)
        if opts.crop is None or opts.crop > h:
            raise BadInput("--real-layers trains on crops: give --crop")
    device = pick_device(opts.device)
    if opts.resume and opts.overwrite:
        raise BadInput("--resume carries on the run in --out; --overwrite would delete it: give one of them")
    resume = _last_checkpoint(opts.out, opts.arch) if opts.resume else None
    if resume is None:
        _check_run_folder(opts.out, opts.arch, opts.overwrite)
    k = ds.num_classes
    train_ds, val_ds = ds.subset(split["train"]), ds.subset(split["val"])
    mean, std = data_mod.normalisation(train_ds.images)
    widths = {**preset_widths(opts.arch, opts.preset), **opts.widths}
    init = None
    if opts.init is not None:
        from .models import load_checkpoint

        init = load_checkpoint(opts.init, expect_arch=opts.arch)
        if opts.preset != "small":
            raise BadInput(f"--preset {opts.preset} with --init: the checkpoint's widths are used; give one of them")
        widths = {**{key: v for key, v in init["config"].items() if key not in ("in_channels", "num_classes")}, **opts.widths}
        if "input" in init:  # the weights learnt under their own input normalisation: keep it
            mean, std = float(init["input"]["mean"][0]), float(init["input"]["std"][0])
    # seeded before the weights are drawn, so that one --seed gives one model (on one machine and
    # thread count); seeding only the training stream left every run's starting weights random
    torch.manual_seed(opts.seed)
    try:
        config = make_config(opts.arch, 1, k, widths)
        model = build_model(opts.arch, config.to_dict())
    except (TypeError, ValueError) as e:
        raise BadInput(f"--widths: {e}") from None
    layer_head = None
    if layer_data is not None:
        layer_head = multitask.new_layer_head(config.sr[0], len(layer_data.train.label_map.classes))
    if init is not None:
        try:
            model.load_state_dict(init["state_dict"])
        except RuntimeError as e:
            raise BadInput(f"{opts.init}: weights do not fit this run ({str(e).splitlines()[0]})") from None
        saved_head = init.get("layer_head")
        if layer_head is not None and saved_head and saved_head["classes"] == layer_data.train.label_map.classes:
            layer_head.load_state_dict(saved_head["state_dict"])
        if opts.fresh_head:
            # a head of its own random initialisation: members that start apart settle in other
            # minima and part where the data did not pin them (Fort et al. 2019; Lee et al. 2015's
            # M heads on a shared trunk), where a run's checkpoints stay in one (seed 000 Alg. 1)
            for module in model.head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    if opts.freeze_trunk:
        for p in model.trunk.parameters():
            p.requires_grad_(False)

    out = opts.out
    for stale in sorted((out / "checkpoints").glob("*.pt")) if opts.overwrite else []:
        stale.unlink()
    for stale in ("ensemble.pt", "calibration.json", "calibration.md", "reliability.png"):
        if (out / stale).exists():
            (out / stale).unlink()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if resume is None:
        data_mod.save_split(out / "split.json", ds, split)
    schedule = opts.lr_schedule or ("cosine" if opts.arch == "am-segnet" else "constant")
    if schedule not in ("cosine", "constant", "snapshot"):
        raise BadInput(f"lr schedule {schedule!r}: expected cosine, constant or snapshot")
    run_info = {
        "arch": opts.arch,
        "preset": opts.preset,
        "config": config.to_dict(),
        "data": str(Path(opts.data).resolve()),
        "classes": [{"name": c.name, "colour": c.colour, "defect": c.defect} for c in ds.classes],
        "input": {"width": w, "height": h, "channels": 1, "mean": [mean], "std": [std]},
        "recoater_direction": ds.recoater_direction,
        "mm_per_px": ds.mm_per_px,
        "split_seed": opts.split_seed,
        "seed": opts.seed,
        "lr": opts.lr or DEFAULT_LR[opts.arch],
        "lr_schedule": schedule,
        **({"cycles": opts.cycles} if schedule == "snapshot" else {}),  # only then: older runs resume as they were
        "batch_size": opts.batch_size,
        "crop": opts.crop,
        "class_weights": opts.class_weights,
        "focal_tversky": opts.focal_tversky,
        "sr_weight": opts.sr_weight,
        "photometric": opts.photometric,
        "foreground_share": opts.foreground_share,
        "min_scale": opts.min_scale,
        **({"freeze_batch_norm": True} if opts.freeze_batch_norm else {}),  # only when set: older runs resume as they were
        **({"fresh_head": True} if opts.fresh_head else {}),
        **({"freeze_trunk": True} if opts.freeze_trunk else {}),
        "epochs": opts.epochs,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "init": str(opts.init) if opts.init else None,
    }
    if layer_data is not None:
        run_info["layers"] = {
            "root": str(Path(opts.layers).resolve()),
            "label_map": str(layer_data.train.label_map.path.resolve()),
            "classes": layer_data.train.label_map.classes,
            "max_per_label": opts.max_layers_per_label,
            "mixed_sizes": opts.mixed_sizes,
            "layer_weight": opts.layer_weight,
            "train_layers": len(layer_data.train.names),
            "val_layers": len(layer_data.val.names),
            "pos_weight": [float(v) for v in layer_data.pos_weight],
        }
    if real is not None:
        run_info["real_layers"] = {
            "root": str(Path(opts.real_layers).resolve()),
            "label_map": str(real.label_map.path.resolve()),
            "train_layers": len(real.train.names),
            "max_per_label": opts.max_layers_per_label,
            "clean_train_layers": int(len(real.clean)),
            "val_layers": len(real.val.names),
            "plant_batch": opts.plant_batch,
            "real_batch": opts.real_batch,
            "mil_every": opts.mil_every,
            "weak_layers": opts.weak_layers,
            "weak_weight": opts.weak_weight,
            "top_k_share": realbed.TOP_K_SHARE,
            "split": "per label folder, the last 20 % of layers (or whole dates) are test, the 10 % before them validation (layers.held_out_split)",
        }
        if opts.weak_classes is not None:  # only when given: runs made before the option resume as they were
            run_info["real_layers"]["weak_classes"] = real.weak_classes
        if opts.weak_absent_classes:  # likewise
            run_info["real_layers"]["weak_absent_classes"] = opts.weak_absent_classes
        if opts.mask_absence_weight:  # likewise
            run_info["real_layers"]["mask_absence_weight"] = opts.mask_absence_weight
        if opts.presence_top_k:  # likewise
            run_info["real_layers"]["presence_top_k"] = dict(sorted(opts.presence_top_k.items()))
    if resume is not None:
        _check_same_run(out / "run.json", run_info)
    (out / "run.json").write_text(json.dumps(run_info, indent=1))
    # the label maps beside run.json: `calibrate` and `export` read them again, maybe after the
    # checkout the run was trained in is gone (calibrate.run_label_map)
    if layer_data is not None:
        shutil.copyfile(layer_data.train.label_map.path, out / RUN_LABEL_MAPS["layers"])
    if real is not None:
        shutil.copyfile(real.label_map.path, out / RUN_LABEL_MAPS["real_layers"])

    # the training stream seeded anew: it does not depend on how many draws the network's widths took
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    x_train = data_mod.to_input(train_ds.images, mean, std)
    y_train = train_ds.masks.astype(np.int64)
    x_val = data_mod.to_input(val_ds.images, mean, std)
    weights = class_weight_vector(train_ds.masks, k, opts.class_weights)
    paper_loss = LOSSES[opts.arch]

    def loss_fn(logits, aux, target, image, class_weights=None, sr_weight=0.1):
        """The architecture's loss, plus seed 001's Focal Tversky loss with --focal-tversky (for
        small defects, whose pixels the cross-entropy's average drowns)."""
        total, parts = paper_loss(logits, aux, target, image, class_weights=class_weights, sr_weight=sr_weight)
        if opts.focal_tversky:
            ftl = focal_tversky_loss(logits, target)
            total = total + ftl
            parts["ftl"] = float(ftl.detach())
        return total, parts
    parameters = [p for p in model.parameters() if p.requires_grad] + (list(layer_head.parameters()) if layer_head is not None else [])
    optimiser = torch.optim.Adam(parameters, lr=run_info["lr"])
    if layer_data is not None:
        x_layers = data_mod.to_input(layer_data.train.images, mean, std)
        y_layers = layer_data.train.targets
        x_layers_val = data_mod.to_input(layer_data.val.images, mean, std)
    steps_per_epoch = int(np.ceil(len(x_train) / opts.batch_size))
    if opts.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, opts.max_steps_per_epoch)
    scheduler = None
    if run_info["lr_schedule"] == "cosine":  # annealed learning rate (seed 002 §3.1 for AM-SegNet)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=opts.epochs * steps_per_epoch, eta_min=run_info["lr"] * 0.05)
    elif run_info["lr_schedule"] == "snapshot":
        steps_per_cycle = opts.epochs // opts.cycles * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: snapshot_factor(step, steps_per_cycle))

    history: dict[str, Any] = {"arch": opts.arch, "step_loss": [], "epochs": []}
    if layer_data is not None:
        history.update(step_seg_loss=[], step_layer_loss=[])
    if real is not None:
        history.update(step_seg_loss=[], step_absent_loss=[], step_present_loss=[])
    started = time.time()
    first_epoch = 1
    if resume is not None:
        path, saved = resume
        first_epoch = _restore(path, saved, model, layer_head, optimiser, scheduler, rng)
        history = _history_until(out / "history.json", history, first_epoch - 1, steps_per_epoch)
        started -= history["epochs"][-1]["seconds"] if history["epochs"] else 0.0
        if opts.progress:
            print(f"resuming {out} after epoch {first_epoch - 1} of {opts.epochs} ({path.name})", flush=True)
    model.to(device)
    if layer_head is not None:
        layer_head.to(device)
    if weights is not None:
        weights = weights.to(device)
    if opts.progress and device.type != "cpu":
        print(f"training on {device}", flush=True)
    from tqdm import tqdm

    for epoch in range(first_epoch, opts.epochs + 1):
        model.train()
        if opts.freeze_batch_norm:
            # batches of two to six crops from two domains (synthetic and real beds) give running
            # statistics that swing from one epoch's end to the next, and the box judges with them
            for norm in model.modules():
                if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                    norm.eval()
        if opts.freeze_trunk:
            model.trunk.eval()  # its features exactly as the box computes them: no dropout, BatchNorm's running statistics
        if layer_head is not None:
            layer_head.train()
        order = rng.permutation(len(x_train))
        epoch_losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{opts.epochs}", unit="batch", disable=not opts.progress)
        for step in bar:
            idx = order[step * opts.batch_size : (step + 1) * opts.batch_size]
            xb, yb = _augment(rng, x_train[idx], y_train[idx], opts.crop, opts.photometric, mean, std, opts.foreground_share, opts.min_scale)
            synthetic = len(xb)  # the batch's first crops; the planted real ones follow
            if real is not None:
                xp, yp = real.planted_batch(rng, opts.plant_batch, opts.crop, mean, std, opts.min_scale)
                xb, yb = np.concatenate([xb, xp]), np.concatenate([yb, yp])
            xb_t, yb_t = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
            if real is not None:
                logits, aux = model(xb_t, return_aux=True)
                seg_loss, parts = loss_fn(logits, aux, yb_t, xb_t, class_weights=weights, sr_weight=opts.sr_weight)
                if opts.weak_weight > 0:
                    weak_absent, weak_present = real.weak_step(rng, model, opts.real_batch, opts.crop, step % opts.mil_every == 0, mean, std, clean_only=opts.weak_layers == "clean")
                else:  # planted defects on real beds without the weak losses: no passes of the real layers
                    weak_absent = weak_present = seg_loss * 0.0
                loss = seg_loss + opts.weak_weight * (weak_absent + weak_present)
                if opts.mask_absence_weight:
                    # the synthetic crops only: on the planted real crops it taught the real
                    # uneven beds' texture away (README, "Part edges")
                    loss = loss + opts.mask_absence_weight * realbed.mask_absence_loss(logits[:synthetic], yb_t[:synthetic])
                history["step_seg_loss"].append(float(seg_loss.detach()))
                history["step_absent_loss"].append(float(weak_absent.detach()))
                history["step_present_loss"].append(float(weak_present.detach()))
            elif layer_head is None:
                logits, aux = model(xb_t, return_aux=True)
                loss, parts = loss_fn(logits, aux, yb_t, xb_t, class_weights=weights, sr_weight=opts.sr_weight)
            else:
                features, encoded = model.trunk.forward_with_encoded(xb_t)
                logits, aux = model.head(features, return_aux=True)
                seg_loss, parts = loss_fn(logits, aux, yb_t, xb_t, class_weights=weights, sr_weight=opts.sr_weight)
                pick = rng.integers(0, len(x_layers), opts.layer_batch_size)
                xr = torch.from_numpy(multitask.augment_layers(rng, x_layers[pick], opts.photometric, mean, std)).to(device)
                with multitask.frozen_batch_norm(model.trunk):
                    real_encoded = model.trunk.encode(xr)
                real_loss = multitask.layer_loss_real(layer_head(real_encoded), torch.from_numpy(y_layers[pick]).to(device), layer_data.pos_weight.to(device))
                masked_targets, known = multitask.mask_targets(yb_t, layer_data.mask_classes)
                masked_loss = multitask.layer_loss_masked(layer_head(encoded), masked_targets, known)
                layer_loss = real_loss + 0.5 * masked_loss
                loss = seg_loss + opts.layer_weight * layer_loss
                history["step_seg_loss"].append(float(seg_loss.detach()))
                history["step_layer_loss"].append(float(real_loss.detach()))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise RuntimeError(f"training diverged at epoch {epoch}, step {step} (loss {value}); lower --lr")
            epoch_losses.append(value)
            history["step_loss"].append(value)
            bar.set_postfix(loss=f"{value:.4f}")
        metrics = evaluate_model(model, x_val, val_ds.masks, k)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(epoch_losses)),
            "seconds": time.time() - started,
            **{key: metrics[key] for key in ("cpa", "iou", "mpa", "miou", "score", "pixel_accuracy")},
        }
        checkpoint_extra = {}
        if real is not None:
            real_metrics = real.validate(model, mean, std)
            record.update(real_metrics)
            record["rank"] = 0.5 * record["score"] + 0.5 * real_metrics["real_score"]
        if layer_head is not None:
            val_logits = multitask.layer_logits_of(model.trunk, layer_head, x_layers_val)
            probs = 1.0 / (1.0 + np.exp(-val_logits))
            layer_metrics = multitask.multilabel_metrics(probs, layer_data.val.targets, layer_data.val.label_map.classes)
            record["layer_f1"] = layer_metrics["macro_f1"]
            record["layer_bce"] = float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(val_logits), torch.from_numpy(layer_data.val.targets)))
            record["rank"] = 0.5 * record["score"] + 0.5 * record["layer_f1"]
            checkpoint_extra["layer_head"] = {"config": layer_head.cfg.to_dict(), "state_dict": _on_cpu(layer_head.state_dict()), "classes": layer_data.train.label_map.classes}
        history["epochs"].append(record)
        torch.save(
            {
                "arch": opts.arch,
                "config": config.to_dict(),
                "state_dict": _on_cpu(model.state_dict()),
                "epoch": epoch,
                "metrics": record,
                "input": run_info["input"],
                **checkpoint_extra,
                # what --resume needs to carry on exactly where this epoch ended
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
            out / "checkpoints" / f"epoch-{epoch:04d}.pt",
        )
        if opts.progress:
            print(
                f"epoch {epoch}: loss {record['train_loss']:.4f}  val MPA {record['mpa']:.4f}  "
                f"MIoU {record['miou']:.4f}  Score {record['score']:.4f}"
                + (f"  layer F1 {record['layer_f1']:.4f}" if "layer_f1" in record else "")
                + (f"  real: layer F1 {record['real_layer_f1']:.3f}, clean flagged {record['real_clean_flagged']:.4f}" if "real_score" in record else "")
                + f"  ({record['seconds']:.0f} s)",
                flush=True,
            )
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, [c.name for c in ds.classes], out / "curves.png")
    history["train_seconds"] = time.time() - started
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return history


def _augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, crop: int | None, photometric: float = 0.0, mean: float = 0.0, std: float = 1.0, foreground: float = 0.0, min_scale: float = 1.0):
    """Random flips (they keep stripes parallel or perpendicular to the recoater as they were; no
    rotations, which would turn streaking into hopping), a random gain and offset of the grey
    levels (so that the model learns texture, not only brightness: a dark corner under uneven
    lighting is not an uncovered area), and an optional random crop. With `foreground`, that
    share of the crops is placed over a pixel of a class the layer holds (one of them chosen
    evenly, so a thin streak counts as much as a wide uncovered area): nnU-Net's foreground
    oversampling (Isensee et al., Nature Methods 2021). A uniform 256-px crop of a 1024-px layer
    rarely holds a streak or a lattice patch; measured, those two classes were not learnt at all
    without it and reached validation IoU 0.39 and 0.78 within 300 steps with half the crops
    placed so. With `min_scale` below 1, half the crops are taken from a window up to
    crop / min_scale px wide (its scale drawn log-uniformly) and shrunk to the crop: multi-scale
    training (random rescaling, as DeepLab's and PSPNet's), so that the network also sees a
    pattern at a size where a small kernel spans its period, and the context of a whole bed."""
    x, y = x.copy(), y.copy()
    for i in range(len(x)):
        if rng.random() < 0.5:
            x[i], y[i] = x[i][..., ::-1], y[i][..., ::-1]
        if rng.random() < 0.5:
            x[i], y[i] = x[i][..., ::-1, :], y[i][..., ::-1, :]
        if photometric > 0:
            # on the 0..1 scale: x' = g x + b; in normalised units: g x_n + (mean (g - 1) + b) / std
            gain = 1.0 + rng.uniform(-photometric, photometric)
            offset = rng.uniform(-photometric, photometric) / 3
            x[i] = x[i] * gain + (mean * (gain - 1.0) + offset) / std
    if crop is not None and crop < x.shape[-1]:
        h, w = x.shape[-2:]
        xs, ys = [], []
        for i in range(len(x)):
            window = min(h, w, data_mod.scaled_window(rng, crop, min_scale))
            top, left = int(rng.integers(0, h - window + 1)), int(rng.integers(0, w - window + 1))
            present = [k for k in np.unique(y[i]) if k != 0] if foreground > 0 and rng.random() < foreground else []
            if present:
                rows, cols = np.nonzero(y[i] == rng.choice(present))
                j = int(rng.integers(len(rows)))
                top = int(np.clip(rows[j] - rng.integers(0, window), 0, h - window))
                left = int(np.clip(cols[j] - rng.integers(0, window), 0, w - window))
            xi, yi = x[i, :, top : top + window, left : left + window], y[i, top : top + window, left : left + window]
            if window != crop:
                xi, yi = data_mod.shrink(xi, yi, crop)
            xs.append(xi)
            ys.append(yi)
        x, y = np.stack(xs), np.stack(ys)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def plot_curves(history: dict, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history["epochs"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = np.arange(1, len(history["step_loss"]) + 1)
    axes[0].plot(steps, history["step_loss"], lw=0.6, alpha=0.5, label="per batch")
    if epochs:
        per_epoch = len(history["step_loss"]) / len(epochs)
        axes[0].plot(np.array(epochs) * per_epoch, [e["train_loss"] for e in history["epochs"]], "o-", label="epoch mean")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[0].legend()
    for key, label in (("mpa", "MPA"), ("miou", "MIoU"), ("score", "Score")):
        axes[1].plot(epochs, [e[key] for e in history["epochs"]], "o-", label=label)
    axes[1].set(title="validation (seed 000 Eq. 26-28)", xlabel="epoch", ylim=(0, 1))
    axes[1].legend()
    for k, name in enumerate(class_names):
        axes[2].plot(epochs, [np.nan if e["iou"][k] is None else e["iou"][k] for e in history["epochs"]], "o-", ms=3, label=name)
    axes[2].set(title="validation IoU per class (Eq. 25)", xlabel="epoch", ylim=(0, 1))
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
