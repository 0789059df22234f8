"""`bedsight-train select`: pick the layers most worth labelling next.

Input: a box's state folder (`/var/lib/bedsight`, or a copy: `journal/layers.bsj`, its
`annotations.jsonl` and the layer images the box recorded in `images/NNNNNN-LNNNNN-VERDICT/`), or
any folder of layer images, searched recursively; with `--verdict REVIEW`, only the layers whose
JSON-lines records, as `bedsight analyze --json` prints them, carry that verdict. Only layer
frames are candidates: of a box's recorded layer its `rectified.png` (the bed as the model saw it;
`raw.png` where there is none), never the box's own overlays, masks or uncertainty maps.

From a box's state folder, every layer an operator marked as a false alarm or acknowledged on
the dashboard, and every layer the domain check called unfamiliar, is picked first, with why;
the strategy then picks `--count` more from the rest.
Two strategies (seed 003 §2, "Active learning"):

- `uncertainty`: rank images by their image-level mean uncertainty, the pixel-wise ensemble
  variance (seed 000 Eq. 13) averaged over the image (seed 003: "uncertainty was first computed at
  the pixel level using predictions from an ensemble ... and was then averaged to compute the
  image-level uncertainty"); the most uncertain first.
- `smile` (seed 003, SMILE): embed every image, project the embeddings to two dimensions with
  t-SNE, cluster them with k-means (k chosen by the silhouette score), rank the clusters by their
  spread (the Euclidean norm of the per-dimension standard deviation), and pick samples inside each
  cluster by Latin hypercube sampling with the maximin criterion. Picks go round the clusters in
  order of spread, so the widest clusters are served first.

The embedding is the image downsampled to 16x16 (standardised), joined, when a model is given, by
the model's mean class probabilities, predicted class fractions and mean uncertainty.

Output (ready for an annotation tool): OUT/images/ (the chosen layers, numbered in pick order),
OUT/prelabels/ (the model's masks, class index per pixel, to be corrected rather than drawn from
scratch, as seed 003 does), OUT/dataset.toml (the class table; move corrected masks to OUT/masks/
and the folder is a dataset `train` reads), OUT/selection.csv and OUT/embedding.png for SMILE.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import DEFAULT_CLASSES, IMAGE_SUFFIXES, BadInput, limit_threads, load_grey, save_png_grey, toml_dumps

THUMB = 16
# A layer's folder in a box's image store (appliance/src/record/layer_images.rs): record index,
# layer number, verdict.
RECORD_FOLDER = re.compile(r"^(\d{6})-L(\d{5})-([A-Z]+)$")
# What the box and `bedsight analyze --out` write beside a layer: its products, not layers.
PRODUCT_SUFFIXES = (".mask.png", ".overlay.png", ".uncertainty.png", ".uncertainty.tiff")


def _is_layer_frame(path: Path) -> bool:
    if RECORD_FOLDER.match(path.parent.name):
        # a recorded layer: the rectified bed, or the camera's frame where the box kept no other
        return path.name == "rectified.png" or (path.name == "raw.png" and not (path.parent / "rectified.png").exists())
    return not path.name.lower().endswith(PRODUCT_SUFFIXES)


def find_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _is_layer_frame(p))
    # a dataset's or a previous selection's masks are not layers
    files = [p for p in files if not ({"masks", "prelabels"} & set(p.relative_to(folder).parts[:-1]))]
    if not files:
        raise BadInput(f"{folder}: no layer images (png, jpg, tif, bmp) in it or below it")
    return files


def filter_by_verdict(folder: Path, files: list[Path], verdict: str) -> list[Path]:
    """Keep the layers whose recorded verdict is `verdict`. Records are JSON lines with `image` and
    `verdict` keys, as `bedsight analyze --json` prints them, in *.jsonl files under the folder."""
    import json

    verdicts: dict[Path, str] = {}
    for records in sorted(Path(folder).rglob("*.jsonl")):
        for number, line in enumerate(records.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image = Path(record["image"])
                verdicts[(records.parent / image).resolve() if not image.is_absolute() else image.resolve()] = str(record["verdict"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInput(f"{records}:{number}: not a JSON record with image and verdict") from None
    if not verdicts:
        raise BadInput(f"{folder}: --verdict {verdict} needs *.jsonl records (image, verdict) such as `bedsight analyze --json` prints")
    kept = [p for p in files if verdicts.get(p.resolve(), "").upper() == verdict.upper()]
    if not kept:
        raise BadInput(f"{folder}: no layer has the verdict {verdict} in its records")
    return kept


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def model_predictions(model: Path, images: list[np.ndarray], progress: bool) -> tuple[list[dict[str, Any]], dict]:
    """Per image: fused mask, mean uncertainty and mean class probabilities from an .onnx/.bsimg."""
    from tqdm import tqdm

    from . import data as data_mod
    from .evaluate import open_model, run_members
    from .export import ort_session
    from .metrics import fuse

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        graph, manifest = open_model(model, Path(tmp))
        session = ort_session(graph)
        w, h = manifest["input"]["width"], manifest["input"]["height"]
        mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]
        temps = manifest["ensemble"]["temperatures"]
        for image in tqdm(images, desc="predict", unit="img", disable=not progress):
            x = data_mod.to_input(_resize(image, w, h)[None], mean, std)
            probs, mask, uncertainty = fuse(run_members(session, x), temps)
            k = probs.shape[0]
            out.append(
                {
                    "mask": mask,
                    "mean_uncertainty": float(uncertainty.mean()),
                    "mean_probs": probs.reshape(k, -1).mean(1),
                    "class_fraction": np.bincount(mask.ravel(), minlength=k) / mask.size,
                }
            )
    return out, manifest


def embed(images: list[np.ndarray], predictions: list[dict[str, Any]] | None) -> np.ndarray:
    thumbs = np.stack([_resize(im, THUMB, THUMB).astype(np.float64).ravel() / 255.0 for im in images])
    thumbs = (thumbs - thumbs.mean(0)) / (thumbs.std(0) + 1e-6) / np.sqrt(thumbs.shape[1])
    parts = [thumbs]
    if predictions:
        model_part = np.stack([np.concatenate([p["mean_probs"], p["class_fraction"], [p["mean_uncertainty"]]]) for p in predictions])
        model_part = (model_part - model_part.mean(0)) / (model_part.std(0) + 1e-6) / np.sqrt(model_part.shape[1])
        parts.append(model_part)
    return np.concatenate(parts, axis=1)


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) to two dimensions, for the few hundred images a
    selection round sees."""
    n = len(x)
    if n <= 3:
        return np.c_[np.arange(n, dtype=np.float64), np.zeros(n)]
    perplexity = min(perplexity, max(2.0, (n - 1) / 3))
    d2 = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d2[i], i)
        for _ in range(60):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            h = np.log(s) + beta * (w * (di - di.min())).sum() / s
            if abs(h - target) < 1e-5:
                break
            if h > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(0, 1e-4, size=(n, 2))
    velocity = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        momentum = 0.5 if it < 100 else 0.8
        sq = np.square(y[:, None, :] - y[None, :, :]).sum(-1)
        num = 1.0 / (1.0 + sq)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4.0 * ((np.diag(pq.sum(1)) - pq) @ y)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - 200.0 * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987, seed 003 ref. [48])."""
    from scipy.spatial.distance import cdist

    d = cdist(points, points)
    clusters = np.unique(labels)
    if len(clusters) < 2:
        return -1.0
    scores = []
    for i in range(len(points)):
        own = labels == labels[i]
        if own.sum() <= 1:
            scores.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == c].mean() for c in clusters if c != labels[i])
        scores.append((b - a) / max(a, b, 1e-12))
    return float(np.mean(scores))


def kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(points, k, minit="++", seed=seed)
    return labels


def lhs_maximin(rng: np.random.Generator, lower: np.ndarray, upper: np.ndarray, n: int, designs: int = 50) -> np.ndarray:
    """n points in the box [lower, upper] by Latin hypercube sampling, keeping the design of
    `designs` random ones whose smallest pairwise distance is largest (the maximin criterion)."""
    from scipy.spatial.distance import pdist

    best, best_score = None, -np.inf
    dims = len(lower)
    for _ in range(designs):
        cells = np.stack([rng.permutation(n) for _ in range(dims)], axis=1)
        unit = (cells + rng.random((n, dims))) / n
        design = lower + unit * (upper - lower)
        score = pdist(design).min() if n > 1 else 0.0
        if score > best_score:
            best, best_score = design, score
    return best


def smile_order(embedding_2d: np.ndarray, count: int, seed: int = 0) -> tuple[list[int], np.ndarray, dict[int, float]]:
    """SMILE (seed 003): the chosen indices in pick order, the cluster labels and their spreads."""
    n = len(embedding_2d)
    rng = np.random.default_rng(seed)
    best_labels, best_score = np.zeros(n, dtype=int), -np.inf
    for k in range(2, min(10, n - 1) + 1):  # k by the silhouette score
        labels = kmeans(embedding_2d, k, seed)
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette(embedding_2d, labels)
        if score > best_score:
            best_labels, best_score = labels, score
    clusters = [c for c in np.unique(best_labels)]
    # spread: the Euclidean norm of the standard deviation vector of a cluster
    spread = {int(c): float(np.linalg.norm(embedding_2d[best_labels == c].std(0))) for c in clusters}
    ranked = sorted(clusters, key=lambda c: spread[int(c)], reverse=True)
    # how many picks each cluster gets: round-robin over the ranked clusters
    quota = {int(c): 0 for c in ranked}
    sizes = {int(c): int((best_labels == c).sum()) for c in ranked}
    left = min(count, n)
    while left > 0:
        for c in ranked:
            c = int(c)
            if left and quota[c] < sizes[c]:
                quota[c] += 1
                left -= 1
    picks_per_cluster: dict[int, list[int]] = {}
    for c in ranked:
        c = int(c)
        members = list(np.nonzero(best_labels == c)[0])
        if quota[c] == 0:
            picks_per_cluster[c] = []
            continue
        pts = embedding_2d[members]
        design = lhs_maximin(rng, pts.min(0), pts.max(0), quota[c])
        chosen: list[int] = []
        for target in design:  # each design point takes the nearest sample not yet taken
            free = [m for m in members if m not in chosen]
            nearest = min(free, key=lambda m: float(np.square(embedding_2d[m] - target).sum()))
            chosen.append(int(nearest))
        picks_per_cluster[c] = chosen
    order: list[int] = []
    while len(order) < min(count, n):
        for c in ranked:
            queue = picks_per_cluster[int(c)]
            if queue:
                order.append(queue.pop(0))
    return order[:count], best_labels, spread


def box_priorities(folder: Path, files: list[Path]) -> dict[Path, str]:
    """Of a box's state folder: the recorded layers that must be labelled, with why: marked as a
    false alarm or acknowledged by an operator (journal/annotations.jsonl), or unfamiliar to the
    model (the journal record's domain finding). Empty for a folder that is not a box's."""
    journal = folder / "journal" / "layers.bsj"
    if not journal.is_file():
        return {}
    from .pack import find_bedsight_bin

    binary = find_bedsight_bin()
    if binary is None:
        raise BadInput(f"{journal}: reading the box's journal needs the bedsight binary (BEDSIGHT_BIN, PATH or target/)")
    result = subprocess.run([str(binary), "journal", "export", "--format", "jsonl", str(journal)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BadInput(f"{journal}: bedsight cannot read it: {result.stderr.strip()}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    frames = {}
    for path in files:
        match = RECORD_FOLDER.match(path.parent.name)
        if match:
            frames[int(match.group(1))] = path
    why: dict[int, list[str]] = {}
    annotations = folder / "journal" / "annotations.jsonl"
    if annotations.is_file():
        lines = annotations.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                note = json.loads(line)
                index, action = int(note["index"]), note["action"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):
                    continue  # a torn last line (the box stopped mid-write), as the box reads it
                raise BadInput(f"{annotations}:{number}: not an annotation (index, action)") from None
            text = {"false-alarm": "false alarm (marked by an operator)", "acknowledge": "REVIEW acknowledged by an operator"}.get(action)
            if text:
                why.setdefault(index, []).append(text + (f": {note['note']}" if note.get("note") else ""))
    for index, record in enumerate(records):
        domain = record.get("domain")
        if domain and not domain.get("familiar", True):
            why.setdefault(index, []).append(f"unfamiliar to the model (domain score {domain['score']:.2f} > {domain['threshold']:.2f})")
    # what an operator marked first (the surest sign the model was wrong), then the rest, each in
    # journal order: whoever labels only the top rows labels those
    order = sorted(why, key=lambda i: (not any(r.startswith(("false alarm", "REVIEW acknowledged")) for r in why[i]), i))
    # a layer the box recorded no images of cannot be labelled: said, never dropped unseen (the
    # recorder drops a layer's images when it falls behind, and [record] max_gb prunes old ones)
    for i in order:
        if i not in frames:
            layer = records[i].get("layer", "?") if i < len(records) else "?"
            print(f"select: record {i} (layer {layer}) is {'; '.join(why[i])}, but {folder / 'images'} holds no images of it; it cannot be labelled", file=sys.stderr)
    return {frames[i]: "; ".join(why[i]) for i in order if i in frames}


def select(journal: Path, strategy: str, count: int, out: Path, model: Path | None = None, seed: int = 0, progress: bool = True, verdict: str | None = None) -> list[dict[str, Any]]:
    limit_threads()
    if strategy not in ("uncertainty", "smile"):
        raise BadInput(f"--strategy {strategy!r}: expected uncertainty or smile")
    if count < 1:
        raise BadInput("--count must be at least 1")
    if strategy == "uncertainty" and model is None:
        raise BadInput("--strategy uncertainty needs --model (the ensemble whose uncertainty ranks the layers)")
    files = find_images(journal)
    if verdict:
        files = filter_by_verdict(journal, files, verdict)
    must = box_priorities(Path(journal), files)
    images = [load_grey(p) for p in files]
    predictions, manifest = (model_predictions(Path(model), images, progress) if model else (None, None))
    rows: list[dict[str, Any]] = []
    where = {p: i for i, p in enumerate(files)}
    first = [where[p] for p in must]  # in box_priorities' order
    rest = [i for i, p in enumerate(files) if p not in must]
    labels = None
    if not rest:
        order = []
    elif strategy == "uncertainty":
        order = sorted(rest, key=lambda i: predictions[i]["mean_uncertainty"], reverse=True)[:count]
    else:
        points = tsne(embed([images[i] for i in rest], [predictions[i] for i in rest] if predictions else None), seed=seed)
        picked, cluster_of, spread = smile_order(points, count, seed)
        order = [rest[j] for j in picked]
        labels = {rest[j]: int(cluster_of[j]) for j in range(len(rest))}
        _plot_embedding(points, cluster_of, picked, Path(out) / "embedding.png")
    order = first + order
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(order))))
    for rank, i in enumerate(order, start=1):
        # a box's recorded layer is named by its record folder (all its frames are rectified.png)
        stem = files[i].parent.name if RECORD_FOLDER.match(files[i].parent.name) else files[i].stem
        name = f"{rank:0{width}d}-{stem}.png"
        if files[i].suffix.lower() == ".png":
            shutil.copyfile(files[i], out / "images" / name)
        else:
            save_png_grey(out / "images" / name, images[i])
        row = {"rank": rank, "file": str(files[i]), "image": f"images/{name}", "why": must.get(files[i], strategy)}
        if predictions:
            save_png_grey(out / "prelabels" / name, predictions[i]["mask"])
            row["mean_uncertainty"] = predictions[i]["mean_uncertainty"]
        if labels is not None:
            row["cluster"] = labels[i] if i in labels and files[i] not in must else ""
            row["cluster_spread"] = spread[labels[i]] if row["cluster"] != "" else ""
        rows.append(row)
    with open(out / "selection.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    classes = manifest["classes"] if manifest else [{"name": c.name, "colour": c.colour, "defect": c.defect} for c in DEFAULT_CLASSES]
    (out / "dataset.toml").write_text(
        "# Layers chosen by `bedsight-train select` for labelling. Correct prelabels/NAME.png (class index per\n"
        "# pixel), save them as masks/NAME.png, and this folder is a dataset for `bedsight-train train`.\n"
        + toml_dumps({"name": "selection", "strategy": strategy, "recoater_direction": "+x",
                      "classes": [{"index": i, **c} for i, c in enumerate(classes)]})
    )
    if progress:
        print(f"selected {len(rows)} of {len(files)} layers into {out}: {len(first)} marked by the box or its operators, {len(rows) - len(first)} by {strategy}")
        for row in rows[: min(10, len(rows))]:
            extra = f"  mean uncertainty {row['mean_uncertainty']:.5f}" if "mean_uncertainty" in row else ""
            print(f"  {row['rank']:>3}  {row['file']}{extra}")
    return rows


def _plot_embedding(points: np.ndarray, labels: np.ndarray, order: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=14, alpha=0.6)
    ax.scatter(points[order, 0], points[order, 1], facecolors="none", edgecolors="black", s=80, label="selected")
    for rank, i in enumerate(order, start=1):
        ax.annotate(str(rank), points[i], fontsize=7)
    ax.set(title="SMILE: t-SNE embedding, k-means clusters, selected layers (seed 003)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
