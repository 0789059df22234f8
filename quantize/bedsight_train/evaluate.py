"""`bedsight-train evaluate`: how good a model file is on a labelled dataset.

Runs the graph in onnxruntime on every image, fuses the members as the appliance does
(p = mean_i softmax(z_i / T_i), seed 000 Eq. 21; mask = argmax p, Eq. 12; uncertainty = the members'
variance summed over classes, Eq. 13), and reports CPA and IoU per class, MPA, MIoU (Eq. 24-27),
ECE with 10 bins (Eq. 16-18), and the AUROC of the uncertainty map as a detector of misclassified
pixels. Writes a confusion matrix PNG, a reliability diagram PNG and metrics.json.

`--model` is an .onnx graph with its manifest.toml beside it, or a packed .bsimg model image.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .common import BadInput, limit_threads, read_toml
from .metrics import EceAccumulator, auroc, confusion, fuse, segmentation_metrics

AUROC_PIXELS_PER_IMAGE = 65536


def check_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest (docs/model-image.md) this tool relies on, checked."""
    try:
        inp = manifest["input"]
        width, height, channels = int(inp["width"]), int(inp["height"]), int(inp["channels"])
        mean, std = [float(v) for v in inp["mean"]], [float(v) for v in inp["std"]]
        members = int(manifest["ensemble"]["members"])
        temps = [float(t) for t in manifest["ensemble"]["temperatures"]]
        classes = manifest["classes"]
        names = [c["name"] for c in classes]
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{path}: manifest lacks or mangles {e}; see docs/model-image.md") from None
    if channels != 1:
        raise BadInput(f"{path}: input.channels = {channels}; bedsight-train handles grey (1-channel) models")
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise BadInput(f"{path}: input.mean/std need one value per channel, std > 0")
    if len(temps) != members or min(temps) <= 0:
        raise BadInput(f"{path}: ensemble.members = {members} but {len(temps)} temperatures (each must be > 0)")
    if len(names) < 2 or width <= 0 or height <= 0:
        raise BadInput(f"{path}: needs at least two [[classes]] and a positive input size")
    return manifest


def read_manifest_for(model: Path) -> dict[str, Any]:
    """The manifest that goes with an .onnx graph: manifest.toml in the same folder."""
    manifest_path = Path(model).parent / "manifest.toml"
    if not manifest_path.exists():
        raise BadInput(f"{model}: no manifest.toml beside it (export writes one next to model.onnx)")
    return check_manifest(manifest_path, read_toml(manifest_path))


def open_model(path: Path, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """(graph path, manifest) for an .onnx file or a .bsimg archive (its default graph)."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: model not found")
    if path.suffix == ".bsimg":
        try:
            with tarfile.open(path, "r") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                if "manifest.toml" not in members:
                    raise BadInput(f"{path}: model image has no manifest.toml")
                _extract(tar, members["manifest.toml"], workdir)
                manifest = check_manifest(path, read_toml(workdir / "manifest.toml"))
                graph = manifest.get("graphs", {}).get("default", "model.onnx")
                if graph not in members:
                    raise BadInput(f"{path}: manifest's default graph {graph!r} is not in the archive")
                _extract(tar, members[graph], workdir)
        except tarfile.TarError as e:
            raise BadInput(f"{path}: not a readable model image ({e})") from None
        return workdir / graph, manifest
    return path, read_manifest_for(path)


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, workdir: Path) -> None:
    if member.name.startswith("/") or ".." in Path(member.name).parts:
        raise BadInput(f"{tar.name}: unsafe path {member.name!r} in the archive")
    try:
        tar.extract(member, workdir, filter="data")
    except TypeError:  # Python without extraction filters; the path was checked above
        tar.extract(member, workdir)


def run_members(session, x: np.ndarray) -> np.ndarray:
    """[M, K, H, W] logits for one normalised image [1, 1, H, W]."""
    out = session.run(["logits"], {"image": x})[0]
    return out[0]


def evaluate_graph(graph: Path, manifest: dict[str, Any], ds: data_mod.Dataset, progress: bool = True, desc: str = "evaluate", keep: bool = False) -> dict[str, Any]:
    from tqdm import tqdm

    from .export import ort_session

    session = ort_session(graph)
    k = len(manifest["classes"])
    temps = manifest["ensemble"]["temperatures"]
    mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]
    expect = (manifest["input"]["height"], manifest["input"]["width"])
    if ds.size != expect:
        raise BadInput(f"{ds.root}: images are {ds.size[1]}x{ds.size[0]} but the model takes {expect[1]}x{expect[0]}")
    conf = np.zeros((k, k), dtype=np.int64)
    ece = EceAccumulator(10)
    unc_samples, wrong_samples = [], []
    rng = np.random.default_rng(0)
    per_image = []
    for i in tqdm(range(len(ds.names)), desc=desc, unit="img", disable=not progress):
        x = data_mod.to_input(ds.images[i : i + 1], mean, std)
        logits = run_members(session, x)
        if logits.shape[0] != len(temps) or logits.shape[1] != k:
            raise BadInput(f"{graph}: graph returns {logits.shape[0]} members x {logits.shape[1]} classes, manifest says {len(temps)} x {k}")
        probs, mask, uncertainty = fuse(logits, temps)
        truth = ds.masks[i]
        conf += confusion(mask, truth, k)
        ece.add(probs[None], truth[None])
        wrong = (mask != truth).ravel()
        u = uncertainty.ravel()
        if u.size > AUROC_PIXELS_PER_IMAGE:
            pick = rng.choice(u.size, AUROC_PIXELS_PER_IMAGE, replace=False)
            u, wrong = u[pick], wrong[pick]
        unc_samples.append(u)
        wrong_samples.append(wrong)
        if keep:
            per_image.append({"name": ds.names[i], "mask": mask, "uncertainty": uncertainty})
    metrics = segmentation_metrics(conf)
    metrics.update(
        ece=ece.ece(),
        auroc=auroc(np.concatenate(unc_samples), np.concatenate(wrong_samples)),
        confusion=conf.tolist(),
        reliability=[v.tolist() for v in ece.diagram()],
        images=len(ds.names),
    )
    if keep:
        metrics["per_image"] = per_image
    return metrics


def plot_confusion(conf: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(conf, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = conf / conf.sum(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(np.nan_to_num(rows), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="labelled", title=title)
    for i in range(len(names)):
        for j in range(len(names)):
            if conf[i].sum() > 0:
                ax.text(j, i, f"{rows[i, j]:.2f}\n{int(conf[i, j])}", ha="center", va="center", fontsize=6, color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the labelled class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ensemble_reliability(reliability, ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, acc, count = (np.asarray(v, dtype=np.float64) for v in reliability)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(conf, acc, "o-", label=f"fused ensemble (ECE {ece:.4f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability (10 bins, seed 000 Eq. 16-18)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    tint = colours[mask].astype(np.float32)
    defect = (mask > 0)[..., None]
    return np.where(defect, (1 - alpha) * rgb + alpha * tint, rgb).astype(np.uint8)


def evaluate(model: Path, data: Path, out: Path, split: str = "all", split_seed: int = 0, progress: bool = True) -> dict[str, Any]:
    limit_threads()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = data_mod.load_dataset(Path(data), progress=progress)
    if split != "all":
        if split not in ("train", "val", "test"):
            raise BadInput(f"--split {split!r}: expected all, train, val or test")
        ds = ds.subset(data_mod.dataset_split(ds, seed=split_seed)[split])
    with tempfile.TemporaryDirectory() as tmp:
        graph, manifest = open_model(Path(model), Path(tmp))
        names = [c["name"] for c in manifest["classes"]]
        if len(ds.classes) != len(names):
            raise BadInput(f"{Path(data) / 'dataset.toml'}: {len(ds.classes)} classes, the model has {len(names)}")
        metrics = evaluate_graph(graph, manifest, ds, progress=progress)
    plot_confusion(np.array(metrics["confusion"]), names, out / "confusion.png", f"{Path(model).name} on {Path(data).name} ({split})")
    plot_ensemble_reliability(metrics["reliability"], metrics["ece"], out / "reliability.png")
    (out / "metrics.json").write_text(json.dumps({**metrics, "model": str(model), "data": str(data), "split": split, "classes": names}, indent=1))
    print(format_metrics(metrics, names))
    return metrics


def format_metrics(metrics: dict[str, Any], names: list[str]) -> str:
    def f(v):
        return "   -  " if v is None else f"{v:.4f}"

    width = max(len(n) for n in names)
    lines = [f"{'class'.ljust(width)}   CPA     IoU"]
    for name, cpa, iou in zip(names, metrics["cpa"], metrics["iou"]):
        lines.append(f"{name.ljust(width)}  {f(cpa)}  {f(iou)}")
    lines.append(f"MPA {metrics['mpa']:.4f}  MIoU {metrics['miou']:.4f}  Score {metrics['score']:.4f}  ECE {metrics['ece']:.5f}  "
                 f"AUROC(uncertainty -> misclassified) {f(metrics['auroc'])}  ({metrics['images']} images)")
    return "\n".join(lines)
