"""Training losses.

- ISDNet-SR (seed 000 §3.1): standard cross-entropy on the mask (L_SEG) plus the mean-squared
  error of the super-resolution modules (L_MSE); the deep branch's auxiliary loss is left out.
- AM-SegNet (seed 002 §3.1): Dice loss plus categorical focal loss (Lin et al., seed 002 ref. [44]).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def isdnet_sr_loss(logits, aux, target, image, class_weights=None, sr_weight: float = 0.1):
    """L = L_CE + sr_weight * L_MSE (seed 000 §3.1). Returns (total, parts)."""
    ce = F.cross_entropy(logits, target, weight=class_weights)
    mse = F.mse_loss(aux["reconstruction"], image) if "reconstruction" in aux else logits.new_zeros(())
    return ce + sr_weight * mse, {"ce": float(ce.detach()), "mse": float(mse.detach())}


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss: 1 - mean_k (2 sum p_k y_k + eps) / (sum p_k + sum y_k + eps)."""
    k = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def categorical_focal_loss(logits, target, gamma: float = 2.0, alpha: float = 0.25, class_weights=None) -> torch.Tensor:
    """FL(p_t) = -alpha (1 - p_t)^gamma log(p_t) (Lin et al. 2017), averaged over pixels."""
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target[:, None]).squeeze(1)
    pt = log_pt.exp()
    loss = -alpha * (1 - pt) ** gamma * log_pt
    if class_weights is not None:
        loss = loss * class_weights[target]
    return loss.mean()


# Seed 001 §4 (Table 1 and 2): the parameter search settled on alpha 0.633 (false negatives),
# beta 0.1 (false positives) and gamma 1.
FTL_ALPHA, FTL_BETA, FTL_GAMMA = 0.633, 0.1, 1.0


def focal_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = FTL_ALPHA, beta: float = FTL_BETA,
                       gamma: float = FTL_GAMMA, eps: float = 1.0) -> torch.Tensor:
    """Focal Tversky loss (seed 001 Eq. 1), FTL = (1 - TP / (TP + alpha FN + beta FP))^gamma, per
    class with soft counts over the batch (TP = sum p_k y_k, FN = sum (1 - p_k) y_k, FP = sum p_k
    (1 - y_k)), averaged over the classes; eps keeps a class absent from the batch at a loss of 0
    rather than 0/0."""
    k = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    tversky = (tp + eps) / (tp + alpha * fn + beta * fp + eps)
    return ((1 - tversky) ** gamma).mean()


def am_segnet_loss(logits, aux, target, image, class_weights=None, sr_weight: float = 0.0):
    """Dice + categorical focal loss (seed 002 §3.1). Returns (total, parts)."""
    dice = dice_loss(logits, target)
    focal = categorical_focal_loss(logits, target, class_weights=class_weights)
    return dice + focal, {"dice": float(dice.detach()), "focal": float(focal.detach())}


LOSSES = {"isdnet-sr": isdnet_sr_loss, "am-segnet": am_segnet_loss}
