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

Groups (format 1.4). The features carry what a bed shows as well as how it was photographed, so
one mean over mostly defective and synthetic layers put a camera's own clean beds, 12 of 564
training layers, beyond the threshold: clean held-out layers of a training camera scored 1.24-1.34
against 1.07, REVIEW on every clean layer. With the training layers named by group (the synthetic
set, each real label folder) each group keeps its own mean, the covariance is tied (pooled within
groups), and a layer's score is its distance to the nearest group's mean: the class-conditional
Gaussians with a shared covariance of Lee, Lee, Lee and Shin (NeurIPS 2018, "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", the Mahalanobis
confidence score: the closest class-conditional mean under the tied covariance).

    score(f) = min_g sqrt((f - mu_g)^T Sigma^-1 (f - mu_g) / D),
    Sigma = sum_g sum_{i in g} (f_i - mu_g)(f_i - mu_g)^T / (n - G), shrunk as above.

A group of fewer than MIN_GROUP_LAYERS layers is too few for a mean: its layers join the largest
group.

A camera's noise and focus drift over a build (`camera_drift`). PBLM's clean layers show it: the
validation ones, later in the build, have twice the pixel contrast of the training ones (standard
deviation 3.9 against 2.0 grey levels at the same mean brightness), and the fit on the training
layers alone put every clean held-out layer of the training camera beyond the threshold (scores
1.8-2.9 against 1.71). Each real training layer is therefore fitted twice: as photographed, and
once more blurred or with sensor noise added, in its own group. Exposure and the lighting's
geometry stay out of these copies: they are what tells one machine from another (with gain and
offset copies, a camera left out of the fit went from 100 % to 19 % unfamiliar; with blur and
noise it stayed at 100 %).
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
MIN_GROUP_LAYERS = 5
MIN_VALIDATION_LAYERS = 3
# The validation scores kept in the manifest for commissioning's histogram (all of them, up to this).
MAX_KEPT_SCORES = 1000


def camera_drift(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """One grey layer (uint8) as the same camera may give it later in a build: blurred (Gaussian,
    sigma 0.5-1.5 px, a focus that moved) or with sensor noise added (Gaussian, 0.5-4 grey levels),
    one of the two with equal odds, as training's `realbed.lighting` draws them. The brightness
    and the lighting are left as they are."""
    from .realbed import defocus, sensor_noise

    out = image.astype(np.float32)
    out = defocus(rng, out) if rng.random() < 0.5 else sensor_noise(rng, out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


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


def fit(train: np.ndarray, val: np.ndarray, quantile: float = THRESHOLD_QUANTILE, train_groups: list[str] | None = None) -> dict[str, Any]:
    """The manifest's [domain] table from the training layers' features [N, D] and the validation
    layers' [V, D]. `train_groups` names each training layer's group (None: one group)."""
    n, d = train.shape
    if n < MIN_FIT_LAYERS:
        raise BadInput(f"domain statistics: {n} training layers; at least {MIN_FIT_LAYERS} are needed")
    if len(val) < MIN_VALIDATION_LAYERS:
        raise BadInput(f"domain threshold: {len(val)} validation layers; at least {MIN_VALIDATION_LAYERS} are needed")
    if train_groups is not None and len(train_groups) != n:
        raise BadInput(f"domain statistics: {len(train_groups)} group names for {n} training layers")
    names, members = _groups(train_groups or ["all"] * n)
    means = np.stack([train[m].mean(0) for m in members])
    within = np.concatenate([train[m] - mu for m, mu in zip(members, means)])
    sample = within.T @ within / (n - len(members))
    shrunk = (1 - SHRINKAGE) * sample + SHRINKAGE * (np.trace(sample) / d) * np.eye(d)
    inverse = np.linalg.inv(shrunk)
    inverse = (inverse + inverse.T) / 2
    val_scores = scores(val, means, inverse)
    threshold = float(max(np.quantile(val_scores, quantile), np.quantile(scores(train, means, inverse), quantile)))
    if not np.isfinite(threshold):
        raise BadInput("domain threshold: not finite (the validation features are not finite)")
    table: dict[str, Any] = {
        "feature_size": d,
        "mean": [float(v) for v in train.mean(0)],
        "inverse_covariance": [float(v) for v in inverse.ravel()],
        "threshold": threshold,
        "threshold_quantile": quantile,
        "fit_layers": n,
        "validation_layers": len(val),
        # what commissioning (`bedsight calibrate --domain`) plots a new camera's scores against
        "validation_scores": [float(v) for v in np.sort(val_scores)[:MAX_KEPT_SCORES]],
    }
    if len(names) > 1:
        table["groups"] = [{"name": name, "layers": int(len(m)), "mean": [float(v) for v in mu]} for name, m, mu in zip(names, members, means)]
    return table


def _groups(names: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """The groups in order of first appearance and their layers' indices; a group of fewer than
    MIN_GROUP_LAYERS layers joins the largest."""
    order = list(dict.fromkeys(names))
    index = {name: np.flatnonzero(np.asarray(names) == name) for name in order}
    largest = max(order, key=lambda name: len(index[name]))
    small = [name for name in order if len(index[name]) < MIN_GROUP_LAYERS and name != largest]
    if small:
        index[largest] = np.sort(np.concatenate([index[largest], *(index[name] for name in small)]))
    kept = [name for name in order if name not in small]
    return kept, [index[name] for name in kept]


def scores(features: np.ndarray, means: np.ndarray, inverse_covariance: np.ndarray) -> np.ndarray:
    """The domain score of each row of `features` [N, D] against the group means [G, D] (or one
    mean [D]): the distance to the nearest (the equations in the module's text)."""
    means = np.atleast_2d(np.asarray(means, dtype=np.float64))
    d = means.shape[1]
    inverse = np.asarray(inverse_covariance, dtype=np.float64).reshape(d, d)
    centred = np.asarray(features, dtype=np.float64)[:, None, :] - means[None, :, :]
    return np.sqrt(np.einsum("ngd,de,nge->ng", centred, inverse, centred) / d).min(axis=1)


def table_scores(features: np.ndarray, table: dict[str, Any]) -> np.ndarray:
    """Scores against a manifest's [domain] table."""
    means = [g["mean"] for g in table["groups"]] if table.get("groups") else [table["mean"]]
    return scores(features, np.asarray(means), np.asarray(table["inverse_covariance"]))
