"""The domain check's statistics: what the model's training images look like to the network.

A model judges well only images like those it learned from. Each layer's `features` (the graph's
third output: the shared trunk's fused encoder features at 1/8, averaged over the bed, one value
per channel) are compared with the same features over the training layers by a Mahalanobis
distance, and a layer farther than the validation layers go is "unlike the training data": the
box says REVIEW instead of a verdict from a model outside its ground (issue 19).

    score(f) = sqrt((f - mu)^T Sigma^-1 (f - mu) / D)

mu and Sigma are the mean and covariance of the training layers' features (D channels). With a
few hundred layers and D of 32 to 64, the sample covariance is noisy in its small eigenvalues, so
Sigma is shrunk toward a scaled identity, (1 - a) S + a (tr S / D) I with a = SHRINKAGE (the
estimator family of Ledoit and Wolf 2004, with a fixed weight). Dividing by D makes a typical
in-domain score about 1 whatever the width. The threshold is the THRESHOLD_QUANTILE quantile of
the scores of validation layers, which the fit never saw, or of the training layers' own scores
where that is higher: a layer the model learnt from is its ground by definition. With hundreds of
validation layers the validation quantile decides; with a handful (a site's fine-tune: a short
validation run and a few replayed layers) the 99 % quantile is their maximum, an estimate far too
low, which called the site's own training layers unfamiliar (measured in issue 15's loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .common import BadInput

SHRINKAGE = 0.1
THRESHOLD_QUANTILE = 0.99
# The shrinkage keeps the covariance invertible with fewer layers than features; the figures are
# worth little that low, so the manifest says how many layers the fit and the threshold saw.
MIN_FIT_LAYERS = 8
MIN_VALIDATION_LAYERS = 3
# The validation scores kept in the manifest for commissioning's histogram (all of them, up to this).
MAX_KEPT_SCORES = 1000


def features_of(ensemble: torch.nn.Module, images_u8: np.ndarray, mean: float, std: float, batch_size: int = 4) -> np.ndarray:
    """The `features` output of `ensemble` (with `with_features` set) for uint8 layers [N, H, W]:
    float64 [N, D]."""
    from .data import to_input

    if not getattr(ensemble, "with_features", False):
        raise BadInput("the ensemble does not return features (its trunk has no encoder output)")
    out = []
    ensemble.eval()
    with torch.no_grad():
        for start in range(0, len(images_u8), batch_size):
            x = torch.from_numpy(to_input(images_u8[start : start + batch_size], mean, std))
            out.append(ensemble.trunk_features(x).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, 0))


def fit(train: np.ndarray, val: np.ndarray, quantile: float = THRESHOLD_QUANTILE) -> dict[str, Any]:
    """The manifest's [domain] table from the training layers' features [N, D] and the validation
    layers' [V, D]."""
    n, d = train.shape
    if n < MIN_FIT_LAYERS:
        raise BadInput(f"domain statistics: {n} training layers; at least {MIN_FIT_LAYERS} are needed")
    if len(val) < MIN_VALIDATION_LAYERS:
        raise BadInput(f"domain threshold: {len(val)} validation layers; at least {MIN_VALIDATION_LAYERS} are needed")
    mu = train.mean(0)
    centred = train - mu
    sample = centred.T @ centred / (n - 1)
    shrunk = (1 - SHRINKAGE) * sample + SHRINKAGE * (np.trace(sample) / d) * np.eye(d)
    inverse = np.linalg.inv(shrunk)
    inverse = (inverse + inverse.T) / 2
    val_scores = scores(val, mu, inverse)
    threshold = float(max(np.quantile(val_scores, quantile), np.quantile(scores(train, mu, inverse), quantile)))
    if not np.isfinite(threshold):
        raise BadInput("domain threshold: not finite (the validation features are not finite)")
    return {
        "feature_size": d,
        "mean": [float(v) for v in mu],
        "inverse_covariance": [float(v) for v in inverse.ravel()],
        "threshold": threshold,
        "threshold_quantile": quantile,
        "fit_layers": n,
        "validation_layers": len(val),
        # what commissioning (`bedsight calibrate --domain`) plots a new camera's scores against
        "validation_scores": [float(v) for v in np.sort(val_scores)[:MAX_KEPT_SCORES]],
    }


def scores(features: np.ndarray, mu: np.ndarray, inverse_covariance: np.ndarray) -> np.ndarray:
    """The domain score of each row of `features` [N, D] (the equation in the module's text)."""
    d = len(mu)
    inverse = np.asarray(inverse_covariance, dtype=np.float64).reshape(d, d)
    centred = features - np.asarray(mu, dtype=np.float64)
    return np.sqrt(np.einsum("nd,de,ne->n", centred, inverse, centred) / d)


def table_scores(features: np.ndarray, table: dict[str, Any]) -> np.ndarray:
    """Scores against a manifest's [domain] table."""
    return scores(features, np.asarray(table["mean"]), np.asarray(table["inverse_covariance"]))
