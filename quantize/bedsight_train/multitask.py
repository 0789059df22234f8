"""Multi-task training after seed 004: one shared encoder feeding the segmentation heads (trained
on pixel-labelled layers: synthetic ones, or a user's masks) and a layer-level classification head
(trained on image-level labelled layers such as the real PBLM photographs, and on the pixel-labelled
layers, whose masks say which layer classes they carry). The two data sets are disjoint, as in
seed 004 (SEM images with masks, thermography images with parameters); the loss is the sum
L = L_seg + w * (L_layer,real + 0.5 L_layer,masked), w = `--layer-weight`.

L_layer is binary cross-entropy per layer class (multi-label: a layer can be unevenly spread and
streaked at once). The classes are imbalanced (PBLM: 18 clean layers of 1,548, 157 with
super-elevation), so each class's positive term is weighted by n_negative / n_positive of the
training layers (clipped to 0.1..10), which balances the gradient of the rare and the common class.
The real layers of each step are drawn uniformly (drawing them label-balanced, p ~ 1 / sqrt(layers
of the label), was tried for the default model and gave a worse head and a model that failed the
sample-build check).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .common import BadInput
from .layers import LayerSet, load_label_map, load_layer_folders
from .models import device_of
from .models.layer_head import LayerHead, LayerHeadConfig

# A class counts as present in a pixel-labelled (cropped) layer from this many pixels: the
# appliance's default min_defect_area_mm2 (5 mm²) on a 256-px layer of a 250 mm bed.
MIN_PRESENT_PX = 6
POS_WEIGHT_RANGE = (0.1, 10.0)


@dataclass
class LayerData:
    train: LayerSet
    val: LayerSet
    pos_weight: torch.Tensor  # [L]
    mask_classes: list[int | None]  # for each layer class, its segmentation class index (or None)


def load_layer_data(root: Path, label_map_path: Path, size: int, seg_class_names: list[str], max_per_label: int | None, mixed_sizes: str, progress: bool) -> LayerData:
    label_map = load_label_map(label_map_path)
    train = load_layer_folders(root, label_map, size, splits=("train",), max_per_label=max_per_label, mixed_sizes=mixed_sizes, progress=progress)
    val = load_layer_folders(root, label_map, size, splits=("val",), max_per_label=max_per_label, mixed_sizes=mixed_sizes, progress=False)
    if len(train.names) < 2 or len(val.names) < 1:
        raise BadInput(f"{root}: {len(train.names)} training and {len(val.names)} validation layers; the layer head needs more (the split holds 70 % / 10 % of each folder)")
    pos = train.targets.sum(0)
    neg = len(train.targets) - pos
    pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1.0), *POS_WEIGHT_RANGE), dtype=torch.float32)
    mask_classes = [seg_class_names.index(c) if c in seg_class_names else None for c in label_map.classes]
    return LayerData(train, val, pos_weight, mask_classes)


def new_layer_head(trunk_encoded_channels: int, num_classes: int) -> LayerHead:
    return LayerHead(LayerHeadConfig(in_channels=trunk_encoded_channels, num_classes=num_classes))


@contextlib.contextmanager
def frozen_batch_norm(module: torch.nn.Module):
    """The real layers pass through the shared encoder with its BatchNorm layers in eval mode:
    normalised by the running statistics of the pixel-labelled layers, which they do not change.
    Two domains in one BatchNorm would leave running statistics that fit neither, and the
    segmentation (judged on the box with those statistics) degrades; gradients still flow."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


def mask_targets(masks: torch.Tensor, mask_classes: list[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer targets [N, L] of pixel-labelled layers and which of them are known (a layer class
    without a segmentation class of the same name is not supervised by masks)."""
    n = masks.shape[0]
    targets = torch.zeros(n, len(mask_classes))
    known = torch.zeros(n, len(mask_classes))
    for l, k in enumerate(mask_classes):
        if k is not None:
            targets[:, l] = ((masks == k).flatten(1).sum(1) >= MIN_PRESENT_PX).float()
            known[:, l] = 1.0
    return targets, known


def augment_layers(rng: np.random.Generator, x: np.ndarray, photometric: float, mean: float, std: float) -> np.ndarray:
    """Flips and a grey-level gain/offset, as for the pixel-labelled layers (train._augment)."""
    x = x.copy()
    for i in range(len(x)):
        if rng.random() < 0.5:
            x[i] = x[i][..., ::-1]
        if rng.random() < 0.5:
            x[i] = x[i][..., ::-1, :]
        if photometric > 0:
            gain = 1.0 + rng.uniform(-photometric, photometric)
            offset = rng.uniform(-photometric, photometric) / 3
            x[i] = x[i] * gain + (mean * (gain - 1.0) + offset) / std
    return np.ascontiguousarray(x)


def layer_loss_real(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def layer_loss_masked(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * known
    return per.sum() / known.sum().clamp(min=1.0)


@torch.no_grad()
def layer_logits_of(trunk: torch.nn.Module, head: torch.nn.Module, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    trunk.eval()
    head.eval()
    device = device_of(trunk)
    out = [head(trunk.encode(torch.from_numpy(inputs[i : i + batch_size]).to(device))).cpu().numpy() for i in range(0, len(inputs), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, head.cfg.num_classes), np.float32)


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict:
    """Per-class precision, recall, F1 and counts at `threshold`, and their macro mean."""
    pred = probs >= threshold
    truth = targets >= 0.5
    per_class = {}
    for l, name in enumerate(classes):
        tp = int((pred[:, l] & truth[:, l]).sum())
        fp = int((pred[:, l] & ~truth[:, l]).sum())
        fn = int((~pred[:, l] & truth[:, l]).sum())
        tn = int((~pred[:, l] & ~truth[:, l]).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    macro_f1 = float(np.mean([c["f1"] for c in per_class.values()])) if per_class else 0.0
    exact = float((pred == truth).all(1).mean()) if len(pred) else 0.0
    return {"per_class": per_class, "macro_f1": macro_f1, "exact_match": exact, "threshold": threshold, "layers": int(len(pred))}
