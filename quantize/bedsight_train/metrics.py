"""Evaluation metrics, on numpy arrays.

- CPA, IoU, MPA, MIoU: seed 000 Eq. 24-27; Score = 0.5 MPA + 0.5 MIoU: Eq. 28.
  Note: seed 000 Eq. 24 defines CPA = TP / (TP + FP) (the share of pixels predicted as a class that
  are that class); we follow the paper.
- ECE with 10 bins: seed 000 Eq. 16-18 (multiclass reduced to the top-class confidence, §3.2.2).
- Ensemble fusion: seed 000 Eq. 21 (mean of softmax(z_i / T_i)), Eq. 12 (argmax), Eq. 13 (variance,
  summed over classes as the appliance's uncertainty map).
- AUROC of the uncertainty map as a detector of misclassified pixels (Mann-Whitney statistic).
"""

from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrix [truth, prediction] of two integer label arrays."""
    idx = truth.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=k * k).reshape(k, k)


def segmentation_metrics(conf: np.ndarray) -> dict:
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(0) - tp  # predicted as k but not k
    fn = conf.sum(1) - tp  # k but predicted as something else
    with np.errstate(invalid="ignore", divide="ignore"):
        cpa = tp / (tp + fp)  # Eq. 24
        iou = tp / (tp + fp + fn)  # Eq. 25
    # a class that is neither present nor predicted is left out of the means; a class present but
    # never predicted counts as 0 CPA
    present = conf.sum(1) > 0
    cpa = np.where(np.isnan(cpa) & present, 0.0, cpa)
    mpa = float(np.nanmean(cpa)) if np.any(~np.isnan(cpa)) else 0.0  # Eq. 26
    miou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0  # Eq. 27
    return {
        "cpa": [None if np.isnan(v) else float(v) for v in cpa],
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "mpa": mpa,
        "miou": miou,
        "score": 0.5 * mpa + 0.5 * miou,  # Eq. 28
        "pixel_accuracy": float(tp.sum() / max(1, conf.sum())),
    }


class EceAccumulator:
    """ECE over many pixels (seed 000 Eq. 16-18), accumulated batch by batch."""

    def __init__(self, bins: int = 10):
        self.bins = bins
        self.count = np.zeros(bins, dtype=np.int64)
        self.conf_sum = np.zeros(bins, dtype=np.float64)
        self.correct_sum = np.zeros(bins, dtype=np.float64)

    def add(self, probs: np.ndarray, truth: np.ndarray) -> None:
        """probs [N, K, H, W] (or [K, ...]), truth [N, H, W]."""
        axis = 1 if probs.ndim == truth.ndim + 1 and probs.shape[0] == truth.shape[0] and probs.ndim == 4 else 0
        conf = probs.max(axis=axis).ravel()
        pred = probs.argmax(axis=axis).ravel()
        correct = (pred == truth.ravel()).astype(np.float64)
        # B_k holds confidences in ((k-1)/K, k/K]
        b = np.clip(np.ceil(conf * self.bins).astype(np.int64) - 1, 0, self.bins - 1)
        self.count += np.bincount(b, minlength=self.bins)
        self.conf_sum += np.bincount(b, weights=conf, minlength=self.bins)
        self.correct_sum += np.bincount(b, weights=correct, minlength=self.bins)

    def ece(self) -> float:
        n = self.count.sum()
        if n == 0:
            return 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = self.correct_sum / self.count  # Eq. 17
            conf = self.conf_sum / self.count  # Eq. 16
        gap = np.where(self.count > 0, np.abs(acc - conf), 0.0)
        return float((self.count / n * gap).sum())  # Eq. 18

    def diagram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.conf_sum / self.count, self.correct_sum / self.count, self.count.copy()


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def fuse(logits: np.ndarray, temperatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits [M, K, H, W] -> (mean probabilities [K, H, W], mask [H, W], uncertainty [H, W]).

    p = 1/M sum_i softmax(z_i / T_i) (seed 000 Eq. 21), mask = argmax p (Eq. 12),
    uncertainty = sum_k (E[p_k^2] - E[p_k]^2) over the members (Eq. 13)."""
    t = np.asarray(temperatures, dtype=np.float32).reshape(-1, 1, 1, 1)
    member_probs = softmax(logits / t, axis=1)
    mean = member_probs.mean(axis=0)
    variance = (member_probs**2).mean(axis=0) - mean**2
    return mean, mean.argmax(axis=0).astype(np.uint8), np.clip(variance, 0, None).sum(axis=0)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of `scores` detecting `positives` (ties count half)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
