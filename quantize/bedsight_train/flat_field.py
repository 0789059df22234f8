"""The box's flat-field correction (models/src/flat_field.rs), for training on what the box sees.

A commissioning frame of an evenly spread bed gives the camera's lighting: the frame low-passed
until the powder's grain is gone (a Gaussian of sigma = LOW_PASS_SHARE of the long side, taken at
1/DOWNSCALE of the frame's size). Every later frame of that camera is multiplied by
gain = mean(reference) / max(reference, MIN_RELATIVE * mean(reference)), so a darker or brighter
region of evenly spread powder reaches the model at the bed's mean brightness. The constants are
the box's; tests/test_flat_field.py checks this port against the `bedsight` binary's reference.

Where no evenly spread bed can be photographed (a camera that only ever saw beds with a defect
somewhere), the commissioning frame is the per-pixel median of several recoated layers
(`median_frame`, the box's `bedsight calibrate --flat-field` given several frames): a defect that
moves from layer to layer drops out of the median, the lighting, the same on every layer, stays.
"""

from __future__ import annotations

import numpy as np

from .common import BadInput

LOW_PASS_SHARE = 0.01  # why this sigma: models/src/flat_field.rs
DOWNSCALE = 8
MIN_RELATIVE = 0.2
# The fewest frames whose median is taken for a reference: with fewer, a defect on two of them
# is already half the frames and stays in the median.
MIN_MEDIAN_FRAMES = 5


def median_frame(frames: list[np.ndarray], origin: str) -> np.ndarray:
    """The per-pixel median of grey frames (uint8 [H, W], one camera): the lower of the two middle
    values when their count is even, so that it is one of the frames' values (models::median_frame)."""
    if len(frames) < MIN_MEDIAN_FRAMES:
        raise BadInput(f"{origin}: {len(frames)} frame(s); a median lighting reference needs at least {MIN_MEDIAN_FRAMES}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise BadInput(f"{origin}: frames of {len(shapes)} sizes ({', '.join(f'{s[1]}x{s[0]}' for s in sorted(shapes))}); the frames of one camera have one")
    return np.sort(np.stack(frames), axis=0)[(len(frames) - 1) // 2]


def lighting_reference(frame: np.ndarray) -> np.ndarray:
    """The lighting of a grey frame (uint8 [H, W]) of an evenly spread bed, on the 0..1 scale."""
    from PIL import Image
    from scipy import ndimage

    h, w = frame.shape
    small_w, small_h = max(1, w // DOWNSCALE), max(1, h // DOWNSCALE)
    small = Image.fromarray(frame.astype(np.float32) / 255.0, mode="F").resize((small_w, small_h), Image.Resampling.BILINEAR)
    sigma = max(0.5, LOW_PASS_SHARE * max(small_w, small_h))
    blurred = ndimage.gaussian_filter(np.asarray(small, dtype=np.float32), sigma, mode="nearest")
    return np.asarray(Image.fromarray(blurred, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def gain(reference: np.ndarray, origin: str) -> np.ndarray:
    """The per-pixel gain of a reference (FlatField::from_reference); `origin` names the frame."""
    if not np.all(np.isfinite(reference)) or np.any(reference <= 0):
        raise BadInput(f"{origin}: a flat-field reference needs a positive brightness at every pixel")
    mean = float(reference.mean())
    dark = int((reference < MIN_RELATIVE * mean).sum())
    if dark * 2 > reference.size:
        raise BadInput(f"{origin}: {dark} of {reference.size} pixels are below {MIN_RELATIVE} of the mean: not a frame of an evenly lit bed")
    return (mean / np.maximum(reference, MIN_RELATIVE * mean)).astype(np.float32)


def apply(frame: np.ndarray, gains: np.ndarray, origin: str) -> np.ndarray:
    """The frame (uint8) corrected, as FlatField::apply: rounded and clamped to 0..255."""
    if frame.shape != gains.shape:
        raise BadInput(
            f"{origin}: {frame.shape[1]}x{frame.shape[0]} px but the flat field is {gains.shape[1]}x{gains.shape[0]}: "
            "another camera or camera setting"
        )
    return np.clip(np.round(frame.astype(np.float32) * gains), 0, 255).astype(np.uint8)
