"""`bedsight-train evaluate-layers`: the layer-level classification head of an exported model on
the held-out test split of image-level labelled folders (training never touches it; see
layers.held_out_split), read the way the box reads it: calibrated probabilities
sigmoid(z / T) with the manifest's temperature, a class called present from `--threshold` (the
appliance's layer_classifier.review_threshold, 0.5 by default).

Reports, in layer-metrics.json and layer-report.md:
- per layer class: precision, recall, F1, support and the 2x2 counts (TP, FP, FN, TN);
- the confusion matrix over label sets: rows are the true sets of layer classes (what the label
  folder maps to), columns the predicted sets (each set of the map, and "other" for a predicted
  combination that no label means);
- per label folder: how many of its layers the box would call defective (any class present).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .common import BadInput, read_toml
from .layers import load_label_map, load_layer_folders
from .multitask import multilabel_metrics


def _set_name(classes: list[str], present: np.ndarray) -> str:
    names = [c for c, p in zip(classes, present) if p]
    return " + ".join(names) if names else "clean"


def evaluate_layers(model: Path, layers: Path, label_map_path: Path, out: Path, split: str = "test", threshold: float = 0.5, mixed_sizes: str = "resize", progress: bool = True) -> dict[str, Any]:
    from .export import ort_session

    model = Path(model)
    manifest_path = model.parent / "manifest.toml"
    manifest = read_toml(manifest_path)
    head = manifest.get("layer_head")
    if not head:
        raise BadInput(f"{manifest_path}: has no [layer_head]; this model has no layer-level classification head")
    if not 0.0 < threshold <= 1.0:
        raise BadInput(f"--threshold {threshold}: must be in (0, 1]")
    label_map = load_label_map(label_map_path)
    if label_map.classes != head["classes"]:
        raise BadInput(f"{label_map.path}: classes {label_map.classes} differ from the model's layer classes {head['classes']}")
    size = int(manifest["input"]["width"])
    data = load_layer_folders(layers, label_map, size, splits=(split,), mixed_sizes=mixed_sizes, progress=progress)
    if not data.names:
        raise BadInput(f"{layers}: its {split} split is empty")
    mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]
    session = ort_session(model)
    x = data_mod.to_input(data.images, mean, std)
    logits = np.concatenate([session.run(["layer_logits"], {"image": x[i : i + 1]})[0] for i in range(len(x))])
    temperature = float(head["temperature"])
    probs = 1.0 / (1.0 + np.exp(-logits / temperature))
    metrics = multilabel_metrics(probs, data.targets, label_map.classes, threshold)

    set_names = []
    for label in label_map.labels:
        name = _set_name(label_map.classes, label_map.target(label) > 0.5)
        if name not in set_names:
            set_names.append(name)
    columns = set_names + ["other"]
    matrix = np.zeros((len(set_names), len(columns)), dtype=np.int64)
    for truth, p in zip(data.targets, probs):
        row = set_names.index(_set_name(label_map.classes, truth > 0.5))
        predicted = _set_name(label_map.classes, p >= threshold)
        matrix[row, columns.index(predicted) if predicted in set_names else -1] += 1
    per_label = {}
    for label in label_map.labels:
        sel = [i for i, lab in enumerate(data.labels) if lab == label]
        if sel:
            per_label[label] = {"layers": len(sel), "called_defective": int((probs[sel] >= threshold).any(1).sum())}
    result = {
        "model": str(model),
        "folder": str(layers),
        "split": split,
        "temperature": temperature,
        **metrics,
        "confusion": {"rows": set_names, "columns": columns, "matrix": matrix.tolist()},
        "per_label": per_label,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer-metrics.json").write_text(json.dumps(result, indent=1))
    (out / "layer-report.md").write_text(layer_report_md(result))
    if progress:
        print(layer_report_md(result))
    return result


def layer_report_md(r: dict[str, Any]) -> str:
    lines = [
        f"Layer classification head on the **{r['split']}** split of `{Path(r['folder']).name}` ({r['layers']} layers"
        + (", held out: never used in training" if r["split"] == "test" else "") + "), "
        f"calibrated probabilities (T = {r['temperature']:.3f}), a class present from p >= {r['threshold']:g}:",
        "",
        "| layer class | precision | recall | F1 | support | TP | FP | FN | TN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} | {c['tp']} | {c['fp']} | {c['fn']} | {c['tn']} |")
    lines += [
        "",
        f"Macro F1 {r['macro_f1']:.3f}; exact match of the whole set of classes {r['exact_match'] * 100:.1f}%.",
        "",
        "Confusion matrix over label sets (rows: true, columns: predicted):",
        "",
        "| true \\ predicted | " + " | ".join(r["confusion"]["columns"]) + " |",
        "|---|" + "---|" * len(r["confusion"]["columns"]),
    ]
    for name, row in zip(r["confusion"]["rows"], r["confusion"]["matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "Per label folder, layers the head calls defective (so REVIEW when segmentation finds nothing):", ""]
    lines += [f"- {label}: {v['called_defective']} of {v['layers']}" for label, v in r["per_label"].items()]
    return "\n".join(lines) + "\n"
