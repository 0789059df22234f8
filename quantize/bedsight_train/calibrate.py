"""`bedsight-train calibrate`: choose the ensemble members and fit their temperatures.

Seed 000 Algorithm 1, steps 2-4:
- rank every checkpoint of the run by its validation Score = 0.5 MPA + 0.5 MIoU (Eq. 28) and take
  the top M (of a snapshot-schedule run, the best of each of M cycles: choose_members); the best
  one supplies the trunk, feature extraction and fusion (§3.2.1, Eq. 14), and each of the M
  supplies one segmentation head S_i;
- for each member (best trunk + head i) fit a temperature T_i on the validation split by minimising
  the negative log-likelihood of softmax(z / T_i) (Eq. 19-20);
- report each member's ECE with 10 bins before and after (Eq. 16-18; the table follows seed 000
  Table 3) and draw the reliability diagrams (Fig. 7).

A multi-task run (`train --layers`) ranks by its checkpoints' `rank` (0.5 Score + 0.5 layer macro
F1), takes the layer head from the trunk's checkpoint, and fits the head's one temperature T on
the layer validation split by minimising the binary cross-entropy of sigmoid(z / T) (the same
temperature scaling, one T shared by the head's classes).

Writes RUN/ensemble.pt (the trunk, the heads and the temperatures, what `export` reads),
RUN/calibration.json, RUN/calibration.md and RUN/reliability.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .common import BadInput, limit_threads
from .metrics import EceAccumulator, confusion, fuse, segmentation_metrics, softmax
from .models import Ensemble, build_model, load_checkpoint, model_from_checkpoint


def read_run(run: Path) -> dict[str, Any]:
    run_json = Path(run) / "run.json"
    if not run_json.exists():
        raise BadInput(f"{run_json}: not found; is {run} a folder made by `bedsight-train train`?")
    try:
        return json.loads(run_json.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{run_json}: not valid JSON ({e})") from None


# The label maps a run trained with, copied into the run folder by `train`: a run outlives the
# checkout it was trained in (a worktree removed, a repository moved), and `calibrate` and `export`
# read its label maps again.
RUN_LABEL_MAPS = {"layers": "layers-label-map.toml", "real_layers": "real-label-map.toml"}


def run_label_map(run: Path, info: dict[str, Any], which: str):
    """The label map of the run's `which` ("layers" or "real_layers"): the copy in the run folder,
    or, for a run trained before copies were kept, the file that run.json names."""
    from .layers import load_label_map

    copy = Path(run) / RUN_LABEL_MAPS[which]
    return load_label_map(copy if copy.exists() else Path(info[which]["label_map"]))


def run_split(run: Path, info: dict[str, Any], which: str) -> data_mod.Dataset:
    """The run's dataset restricted to one split, as recorded at training time."""
    ds = data_mod.load_dataset(Path(info["data"]))
    split_path = Path(run) / "split.json"
    try:
        names = json.loads(split_path.read_text())[which]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        raise BadInput(f"{split_path}: missing or unreadable; re-run `bedsight-train train`") from None
    index = {n: i for i, n in enumerate(ds.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise BadInput(f"{info['data']}: image {missing[0]} of the run's {which} split is gone; the dataset changed since training")
    if not names:
        raise BadInput(f"{split_path}: the {which} split is empty")
    return ds.subset([index[n] for n in names])


def ranked_checkpoints(run: Path, arch: str) -> list[tuple[Path, dict[str, Any]]]:
    paths = sorted((Path(run) / "checkpoints").glob("*.pt"))
    if not paths:
        raise BadInput(f"{Path(run) / 'checkpoints'}: no checkpoints; train first")
    ckpts = [(p, load_checkpoint(p, expect_arch=arch)) for p in paths]
    for p, c in ckpts:
        if "metrics" not in c or "score" not in c["metrics"]:
            raise BadInput(f"{p}: checkpoint carries no validation Score")
    # Algorithm 1 step 2: descending Score; ties go to the later epoch
    # (multi-task runs: `rank`, which weighs the layer head's F1 in)
    ckpts.sort(key=lambda pc: (pc[1]["metrics"].get("rank", pc[1]["metrics"]["score"]), pc[1]["epoch"]), reverse=True)
    return ckpts


def choose_members(ranked: list[tuple[Path, dict[str, Any]]], members: int, info: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """The top `members` checkpoints (Algorithm 1 step 2), the best first. A run trained with the
    snapshot schedule gives one member per cycle: the best of each cycle, the cycles in the order
    of their bests, so that the members come from the different minima the restarts reached
    (Huang et al. 2017) rather than from neighbouring epochs of one."""
    if info.get("lr_schedule") != "snapshot":
        return ranked[:members]
    cycles = int(info["cycles"])
    epochs_per_cycle = int(info["epochs"]) // cycles
    if cycles < members:
        raise BadInput(f"--members {members}: the run has {cycles} snapshot cycle(s), one member each; train with --cycles {members} or more")
    best_of_cycle: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path, ckpt in ranked:  # best first, so the first seen of a cycle is its best
        best_of_cycle.setdefault((int(ckpt["epoch"]) - 1) // epochs_per_cycle, (path, ckpt))
    if len(best_of_cycle) < members:
        raise BadInput(f"--members {members}: checkpoints of only {len(best_of_cycle)} cycle(s) in the run; finish its training")
    return list(best_of_cycle.values())[:members]


def fit_temperature(logits: np.ndarray, target: np.ndarray, max_pixels: int = 2_000_000, seed: int = 0) -> float:
    """T minimising the NLL of softmax(z / T) (seed 000 Eq. 20) on [N, K, H, W] logits.
    A one-dimensional bounded search over log T (the paper uses Adam; the minimiser is the same)."""
    from scipy.optimize import minimize_scalar

    z, y = _flat_pixels(logits, target, max_pixels, seed)
    z = torch.from_numpy(z).double()
    y_t = torch.from_numpy(y)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y_t))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def nll_of(logits: np.ndarray, target: np.ndarray, temperature: float = 1.0, max_pixels: int = 2_000_000) -> float:
    z, y = _flat_pixels(logits, target, max_pixels, 0)
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(z).double() / temperature, torch.from_numpy(y)))


def _flat_pixels(logits: np.ndarray, target: np.ndarray, max_pixels: int, seed: int):
    k = logits.shape[1]
    z = np.moveaxis(logits, 1, -1).reshape(-1, k)
    y = target.reshape(-1).astype(np.int64)
    if len(y) > max_pixels:
        pick = np.random.default_rng(seed).choice(len(y), max_pixels, replace=False)
        z, y = z[pick], y[pick]
    return np.ascontiguousarray(z), y


def ece_of(probs: np.ndarray, target: np.ndarray, bins: int = 10) -> EceAccumulator:
    acc = EceAccumulator(bins)
    acc.add(probs, target)
    return acc


def head_run_members(head_runs: list[Path], info: dict[str, Any], trunk_path: Path, trunk_state: dict[str, torch.Tensor]) -> list[tuple[Path, dict[str, Any]]]:
    """The best checkpoint of each head run (`train --init TRUNK --freeze-trunk --fresh-head`), one
    member each, checked to carry the ensemble's trunk weight for weight: a head only means what it
    learnt on the features it was trained on."""
    extra = []
    for head_run in head_runs:
        head_info = read_run(head_run)
        for key in ("arch", "config", "classes", "input"):
            if head_info[key] != info[key]:
                raise BadInput(f"--head-runs {head_run}: its {key} differs from the run's; a head run trains on the run's best trunk (train --init {trunk_path} --freeze-trunk)")
        path, ckpt = ranked_checkpoints(head_run, info["arch"])[0]
        for name, tensor in trunk_state.items():
            theirs = ckpt["state_dict"].get(f"trunk.{name}")
            if theirs is None or not torch.equal(theirs, tensor):
                raise BadInput(f"--head-runs {head_run}: {path.name}'s trunk is not {trunk_path}'s (trunk.{name} differs); train the head with --init {trunk_path} --freeze-trunk")
        extra.append((path, ckpt))
    return extra


def member_name(run: Path, checkpoint: Path) -> str:
    """A member's checkpoint as the reports name it: its file, and the head run's folder for a
    member from another run."""
    owner = checkpoint.parent.parent
    return checkpoint.name if owner.resolve() == run.resolve() else f"{owner.name}/{checkpoint.name}"


def calibrate(run: Path, members: int, head_runs: list[Path] = (), progress: bool = True) -> dict[str, Any]:
    limit_threads()
    run = Path(run)
    info = read_run(run)
    if members < 1:
        raise BadInput("--members must be at least 1")
    ckpts = ranked_checkpoints(run, info["arch"])
    if len(ckpts) < members:
        raise BadInput(f"{run / 'checkpoints'}: {len(ckpts)} checkpoint(s), fewer than --members {members}; train more epochs")
    chosen = choose_members(ckpts, members, info)
    val = run_split(run, info, "val")
    mean, std = info["input"]["mean"][0], info["input"]["std"][0]
    x_val = data_mod.to_input(val.images, mean, std)
    k = len(info["classes"])

    best_path, best = chosen[0]
    trunk_model = model_from_checkpoint(best_path, best)
    trunk = trunk_model.trunk.eval()
    chosen = chosen + head_run_members([Path(r) for r in head_runs], info, best_path, trunk.state_dict())
    heads = []
    for path, ckpt in chosen:
        heads.append(model_from_checkpoint(path, ckpt).head.eval())

    from tqdm import tqdm

    with torch.no_grad():
        features = []
        for i in range(0, len(x_val), 4):
            features.append(trunk(torch.from_numpy(x_val[i : i + 4])))
    rows = []
    member_logits = []
    for i, ((path, ckpt), head) in enumerate(tqdm(list(zip(chosen, heads)), desc="calibrate", unit="member", disable=not progress)):
        with torch.no_grad():
            logits = np.concatenate([head(f).numpy() for f in features])
        member_logits.append(logits)
        metrics = segmentation_metrics(confusion(logits.argmax(1), val.masks, k))
        t = fit_temperature(logits, val.masks)
        before = ece_of(softmax(logits, 1), val.masks)
        after = ece_of(softmax(logits / t, 1), val.masks)
        rows.append(
            {
                "member": i + 1,
                "checkpoint": member_name(run, path),
                "epoch": int(ckpt["epoch"]),
                # the checkpoint's own Score (its own trunk), which ranked it
                "checkpoint_score": float(ckpt["metrics"]["score"]),
                # this member as exported: the best trunk with this checkpoint's head
                "mpa": metrics["mpa"],
                "miou": metrics["miou"],
                "score": metrics["score"],
                "temperature": t,
                "nll_before": nll_of(logits, val.masks, 1.0),
                "nll_after": nll_of(logits, val.masks, t),
                "ece_before": before.ece(),
                "ece_after": after.ece(),
                "_diagrams": (before.diagram(), after.diagram()),
            }
        )
    temperatures = [r["temperature"] for r in rows]
    stacked = np.stack(member_logits, axis=1)  # [N, M, K, H, W]
    ens = {}
    for label, temps in (("before", [1.0] * len(chosen)), ("after", temperatures)):
        acc = EceAccumulator(10)
        conf = np.zeros((k, k), dtype=np.int64)
        nll_sum, count = 0.0, 0
        for n in range(len(stacked)):
            probs, mask, _ = fuse(stacked[n], temps)
            acc.add(probs[None], val.masks[n : n + 1])
            conf += confusion(mask, val.masks[n], k)
            p_true = np.take_along_axis(probs, val.masks[n][None].astype(np.int64), axis=0)
            nll_sum += float(-np.log(np.clip(p_true, 1e-12, None)).sum())
            count += p_true.size
        m = segmentation_metrics(conf)
        ens[label] = {"ece": acc.ece(), "nll": nll_sum / count, "mpa": m["mpa"], "miou": m["miou"], "score": m["score"], "iou": m["iou"], "cpa": m["cpa"]}

    layer_head_saved, layer_report = None, None
    if best.get("layer_head") is not None:
        layer_head_saved, layer_report = calibrate_layer_head(run, info, trunk_model.trunk, best["layer_head"], mean, std, progress)
    torch.save(
        {
            "layer_head": layer_head_saved,
            "arch": info["arch"],
            "config": best["config"],
            "trunk_checkpoint": best_path.name,
            "head_checkpoints": [member_name(run, p) for p, _ in chosen],
            "trunk_state": trunk.state_dict(),
            "head_states": [h.state_dict() for h in heads],
            "temperatures": temperatures,
            "input": info["input"],
            "classes": info["classes"],
        },
        run / "ensemble.pt",
    )
    report = {
        "members": [{k2: v for k2, v in r.items() if not k2.startswith("_")} for r in rows],
        "ensemble": ens,
        "trunk_checkpoint": best_path.name,
    }
    if layer_report is not None:
        report["layer_head"] = layer_report
    (run / "calibration.json").write_text(json.dumps(report, indent=1))
    table = calibration_table(report)
    (run / "calibration.md").write_text(table)
    plot_reliability(rows, run / "reliability.png")
    if progress:
        print(table)
    return report


def fit_layer_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """T minimising the binary cross-entropy of sigmoid(z / T) on [N, L] logits (temperature
    scaling, seed 000 Eq. 20, for independent sigmoids)."""
    from scipy.optimize import minimize_scalar

    z, y = torch.from_numpy(logits).double(), torch.from_numpy(targets).double()

    def bce(log_t: float) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(z / np.exp(log_t), y))

    result = minimize_scalar(bce, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def binary_ece(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE (seed 000 Eq. 16-18) over every (layer, class) probability as a yes/no forecast."""
    p, y = probs.ravel(), targets.ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def calibrate_layer_head(run: Path, info: dict[str, Any], trunk: torch.nn.Module, saved: dict[str, Any], mean: float, std: float, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the layer head's temperature on the run's layer validation split."""
    from .layers import load_layer_folders
    from .models.layer_head import LayerHead, LayerHeadConfig
    from .multitask import layer_logits_of, multilabel_metrics

    layers = info["layers"]
    label_map = run_label_map(run, info, "layers")
    if label_map.classes != saved["classes"]:
        raise BadInput(f"{label_map.path}: its classes {label_map.classes} differ from the trained head's {saved['classes']}; the map changed since training")
    size = int(info["input"]["width"])
    val = load_layer_folders(Path(layers["root"]), label_map, size, splits=("val",), max_per_label=layers.get("max_per_label"), mixed_sizes=layers.get("mixed_sizes", "resize"))
    head = LayerHead(LayerHeadConfig(**saved["config"]))
    head.load_state_dict(saved["state_dict"])
    logits = layer_logits_of(trunk, head, data_mod.to_input(val.images, mean, std))
    t = fit_layer_temperature(logits, val.targets)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    bce = lambda tt: float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits / tt), torch.from_numpy(val.targets)))  # noqa: E731
    report = {
        "temperature": t,
        "val_layers": len(val.names),
        "bce_before": bce(1.0),
        "bce_after": bce(t),
        "ece_before": binary_ece(sig(logits), val.targets),
        "ece_after": binary_ece(sig(logits / t), val.targets),
        "val": multilabel_metrics(sig(logits / t), val.targets, label_map.classes),
    }
    if progress:
        print(f"layer head: T = {t:.3f} on {len(val.names)} validation layers; BCE {report['bce_before']:.4f} -> {report['bce_after']:.4f}, "
              f"ECE {report['ece_before']:.4f} -> {report['ece_after']:.4f}, macro F1 {report['val']['macro_f1']:.3f}")
    return {**saved, "temperature": t}, report


def calibration_table(report: dict[str, Any]) -> str:
    """The member table in the shape of seed 000 Table 3."""
    lines = [
        "Checkpoints selected for the ensemble (seed 000 Table 3); trunk from " + report["trunk_checkpoint"],
        "",
        "| member | checkpoint | MPA | MIoU | Score | Temperature | NLL before | NLL after | ECE before | ECE after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["members"]:
        lines.append(
            f"| #{r['member']} | {r['checkpoint']} | {r['mpa']:.4f} | {r['miou']:.4f} | {r['score']:.4f} | {r['temperature']:.4f} "
            f"| {r['nll_before']:.5f} | {r['nll_after']:.5f} | {r['ece_before']:.6f} | {r['ece_after']:.6f} |"
        )
    e = report["ensemble"]
    lines += [
        "",
        f"Fused ensemble on the validation split (Eq. 21): ECE {e['before']['ece']:.6f} -> {e['after']['ece']:.6f}, "
        f"NLL {e['before']['nll']:.5f} -> {e['after']['nll']:.5f}, MPA {e['after']['mpa']:.4f}, MIoU {e['after']['miou']:.4f}",
        "",
    ]
    if "layer_head" in report:
        h = report["layer_head"]
        lines += [
            f"Layer head (multi-label) on {h['val_layers']} validation layers: T = {h['temperature']:.4f}, "
            f"BCE {h['bce_before']:.5f} -> {h['bce_after']:.5f}, ECE {h['ece_before']:.5f} -> {h['ece_after']:.5f}, "
            f"macro F1 {h['val']['macro_f1']:.4f}",
            "",
        ]
    return "\n".join(lines)


def plot_reliability(rows: list[dict[str, Any]], path: Path) -> None:
    """Reliability diagrams before and after calibration, one panel per member (seed 000 Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        (conf_b, acc_b, _), (conf_a, acc_a, _) = row["_diagrams"]
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(conf_b, acc_b, "o-", label=f"before (ECE {row['ece_before']:.4f})")
        ax.plot(conf_a, acc_a, "s-", label=f"after, T={row['temperature']:.3f} (ECE {row['ece_after']:.4f})")
        ax.set(title=f"member #{row['member']} ({row['checkpoint']})", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def load_ensemble(path: Path) -> tuple[Ensemble, dict[str, Any]]:
    """The ensemble that `calibrate` saved: one trunk, M heads, and their temperatures."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise BadInput(f"{path}: not found; run `bedsight-train calibrate` first") from None
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"{path}: not a readable ensemble ({e})") from None
    if not isinstance(saved, dict) or "trunk_state" not in saved or "head_states" not in saved:
        raise BadInput(f"{path}: not an ensemble saved by `bedsight-train calibrate`")
    model = build_model(saved["arch"], saved["config"])
    try:
        model.trunk.load_state_dict(saved["trunk_state"])
        heads = []
        for state in saved["head_states"]:
            head = build_model(saved["arch"], saved["config"]).head
            head.load_state_dict(state)
            heads.append(head)
        layer_head = None
        if saved.get("layer_head") is not None:
            from .models.layer_head import LayerHead, LayerHeadConfig

            layer_head = LayerHead(LayerHeadConfig(**saved["layer_head"]["config"]))
            layer_head.load_state_dict(saved["layer_head"]["state_dict"])
    except RuntimeError as e:
        raise BadInput(f"{path}: weights do not fit a {saved['arch']} ({str(e).splitlines()[0]})") from None
    return Ensemble(model.trunk, heads, layer_head).eval(), saved
