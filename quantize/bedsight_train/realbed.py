"""Training the segmentation on real powder beds, where only image-level labels exist.

A model trained on synthetic layers alone learns the generator: on real photographs it follows
the lighting (the darker half of an evenly spread bed becomes "incompleteness") and misses the
real scratches. Real layers with pixel masks cannot be had here; layers with one label per image
can (PBLM, `layers.py`). This module turns those labels into pixel supervision and puts real
backgrounds under the pixel losses, beside the synthetic layers (`train --real-layers`):

1. Weak labels (`weak_losses`). A layer's label says which defect classes it carries, and that is
   all it carries:
   - a class absent from the label is absent from every pixel: the suppression constraint of
     Pathak, Kraehenbuehl and Darrell, "Constrained Convolutional Neural Networks for Weakly
     Supervised Segmentation" (ICCV 2015), written as mean over pixels of -log(1 - p_c(x)) for
     each absent defect class c, plus the same on the top-k pooled score that L_pres uses,
     -log(1 - mean of the k largest p_c(x)): multiple-instance learning's negative bag, whose
     highest-scoring instances must be negative (Maron and Lozano-Perez, "A Framework for
     Multiple-Instance Learning", NIPS 1998). The mean alone lets a small false region through
     (a few hundred pixels barely move a mean over a million); the pooled term does not. A clean
     layer has every defect class absent, so it is background everywhere;
   - a class present is somewhere: multiple-instance learning with top-k pooling, the k-max
     pooling of Durand et al., "WILDCAT: Weakly Supervised Learning of Deep ConvNets for Image
     Classification, Pointwise Localization and Segmentation" (CVPR 2017):
     L_pres = -log(mean of the k largest p_c(x)), k = a small share of the layer's pixels. It is
     only taken on whole layers (`train --real-layers` runs one every `--mil-every` steps), since
     a crop may miss the defect; the absence term holds on any crop.
2. Synthetic defects on real beds (`plant`). The generator's kinds of defect, drawn onto real
   clean layers with their masks, so that the pixel losses see real powder texture, real lighting
   and the real camera: streaks along the recoater's travel (left to right on the bed), dragged
   to the end of the travel; incompleteness as an uncovered region behind a ragged spreading front,
   or as a short feed's wedge along a side, cracked into thin dark fissures;
   super-elevation as specular glare on the edge of a part; hopping as bands across the travel.
   Clean parts (brighter, smoother melted metal) are drawn under half of them as background, as
   the generator draws them: a part's edge is not a defect. Planted on clean layers only: on a defective layer the unlabelled pixels may hold a
   real defect, which the planted mask would call background.
3. Lighting is not a defect (`lighting`). Every training input, synthetic, planted or real, gets
   an exposure change, a linear gradient, a vignette, and sometimes blur, sensor noise and JPEG
   compression, so that a darker or brighter region of evenly spread powder stays background.

Layers are in the bed's convention (the recoater travels left to right; `LabelMap.quarter_turns`
turns photographs taken otherwise).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from .data import scaled_window, shrink
from .models import device_of
from .synth import BACKGROUND, HOPPING, INCOMPLETENESS, STREAKING, SUPER_ELEVATION, blob, random_parts

# The share of a whole layer's pixels that top-k pooling averages for a present class (L_pres):
# about a scratch across a 1024-px bed (3 px x 1024 px = 0.3 %), and at most what a small uncovered
# patch covers, so that a present class is not asked to cover clean powder.
# A class whose instances are far smaller than that gets its own k (`train --presence-top-k`):
# L_pres pulls its k pixels towards the class, so a k larger than the defect makes the network
# call that many pixels of every such layer the class, wherever it can find something to call it.
# Measured on PBLM: super-elevation there is a speck of 200-260 px (a part's tip, hand labels) on
# a 1024x1024 bed, and under k = 2,100 px the model called the dark rim of uneven beds
# super-elevation (115 of 286 held-out layers without any; quantize/README.md, "Real beds").
TOP_K_SHARE = 0.002
# The share of the whole real layers of weak_step that are clean (absence of every class). Crops of
# every real layer already carry the absence terms each step; a whole defective layer is the only
# place the presence term is taken, so most whole layers are defective.
WHOLE_CLEAN_SHARE = 0.3
# p_c is clamped away from 0 and 1 before the logarithms.
EPS = 1e-6


def weak_losses(logits: torch.Tensor, present: torch.Tensor, absent: torch.Tensor, top_k_share: float | list[float] | None = TOP_K_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_abs, L_pres) of a batch of real layers. `logits` [N, K, H, W]; `present` and `absent`
    [N, K] booleans per segmentation class (a class in neither is not supervised: background, and
    classes the label cannot speak of). `top_k_share`: L_pres's k as a share of the pixels, one for
    every class or a list of K (`presence_top_k`); None skips L_pres (crops). L_abs pools its top k
    over TOP_K_SHARE of the pixels whatever the image. Each term is the mean over the (layer,
    class) pairs it covers; a batch without any gives 0."""
    p = torch.softmax(logits.float(), dim=1).clamp(EPS, 1.0 - EPS)
    n, k, h, w = p.shape
    flat = p.flatten(2)  # [N, K, H*W]
    zero = logits.sum() * 0.0
    absent_pairs = absent.nonzero()
    if len(absent_pairs):
        scores = flat[absent_pairs[:, 0], absent_pairs[:, 1]]
        per_pixel = -torch.log1p(-scores).mean(dim=1)
        top = max(1, int(round(TOP_K_SHARE * h * w)))
        pooled = -torch.log1p(-scores.topk(top, dim=1).values.mean(dim=1))
        loss_absent = (per_pixel + pooled).mean()
    else:
        loss_absent = zero
    present_pairs = present.nonzero()
    if top_k_share is not None and len(present_pairs):
        shares = [float(top_k_share)] * k if isinstance(top_k_share, (int, float)) else list(top_k_share)
        scores = torch.stack([flat[i, c].topk(max(1, int(round(shares[c] * h * w)))).values.mean() for i, c in present_pairs.tolist()])
        loss_present = -torch.log(scores).mean()
    else:
        loss_present = zero
    return loss_absent, loss_present


def mask_absence_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """weak_losses' absence term on crops whose masks are known (`train` gives it the synthetic
    ones): a defect class that no pixel of a crop's mask holds is absent from every pixel of it,
    its mean and its top k alike. Cross-entropy under inverse-frequency class weights prices a
    background pixel lowest, so a few hundred pixels of a class on a part's edge barely move it
    (measured: streaking along the horizontal edges of synthetic parts, 0.05-0.07 % of clean
    layers); the top-k pooled term is the hard-negative mining of Shrivastava et al., "Training
    Region-based Object Detectors with Online Hard Example Mining" (CVPR 2016), taken per class
    within each crop. On the planted real crops too it taught the real uneven beds' texture away
    (Powder_Uneven layers stopped: 90 % at weight 1, 4 % at 3; on the synthetic crops alone, 100 %
    at 3). `logits` [N, K, H, W], `target` [N, H, W] class indices; class 0 is background and
    never absent."""
    held = F.one_hot(target, logits.shape[1]).flatten(1, 2).any(dim=1)  # [N, K]
    absent = ~held
    absent[:, 0] = False
    loss_absent, _ = weak_losses(logits, torch.zeros_like(absent), absent, top_k_share=None)
    return loss_absent


def class_targets(layer_classes: list[list[str]], seg_class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(present, absent) [N, K] for layers whose labels name their layer classes. A layer class
    names the segmentation class of the same name; every class but background that a label does
    not name is absent (the label is the whole description of the layer: a clean layer has none,
    and a layer without supports has no lattice)."""
    n, k = len(layer_classes), len(seg_class_names)
    present = np.zeros((n, k), dtype=bool)
    absent = np.zeros((n, k), dtype=bool)
    for i, classes in enumerate(layer_classes):
        for c, name in enumerate(seg_class_names):
            if c == BACKGROUND:
                continue
            if name in classes:
                present[i, c] = True
            else:
                absent[i, c] = True
    return present, absent


def lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A random change of lighting and camera on one grey layer (float, 0..255) of evenly spread
    powder: exposure, a linear gradient up to +-25 % across the bed in any direction, a vignette
    up to 35 % darker in the corners, and at times blur, sensor noise and JPEG compression. The
    mask does not change."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w - 0.5, yy / h - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(-0.25, 0.25) * (np.cos(angle) * u + np.sin(angle) * v) * 2
    cx, cy = rng.uniform(-0.2, 0.2, size=2)
    light *= 1.0 - rng.uniform(0.0, 0.35) * ((u - cx) ** 2 + (v - cy) ** 2) / 0.5
    out = image.astype(np.float32) * light * rng.uniform(0.7, 1.3) + rng.uniform(-15, 15)
    if rng.random() < 0.3:
        out = defocus(rng, out)
    if rng.random() < 0.5:
        out = sensor_noise(rng, out)
    out = np.clip(out, 0, 255)
    if rng.random() < 0.3:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.round(out).astype(np.uint8)).save(buffer, format="JPEG", quality=int(rng.integers(50, 96)))
        out = np.asarray(Image.open(buffer), dtype=np.float32)
    return out.astype(np.float32)


def defocus(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A focus that moved: Gaussian blur of sigma 0.5-1.5 px (float in, float out)."""
    return ndimage.gaussian_filter(image, rng.uniform(0.5, 1.5))


def sensor_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian sensor noise of 0.5-4 grey levels (float in, float out, not clipped)."""
    return image + rng.normal(0, rng.uniform(0.5, 4.0), size=image.shape)


def _smooth_walk(rng: np.random.Generator, n: int, scale: float, smoothness: float) -> np.ndarray:
    return ndimage.gaussian_filter1d(rng.normal(0, 1, n), smoothness, mode="nearest") * scale * np.sqrt(smoothness)


def _plant_streak(rng, image, mask, local):
    """A thin groove (or ridge) along the travel, from where the blade caught to the far edge."""
    h, w = image.shape
    yc = rng.uniform(0.03, 0.97) * h
    x0 = int(rng.uniform(0.0, 0.7) * w) if rng.random() < 0.6 else 0
    _drag_streak(rng, image, mask, local, yc, x0)


def _drag_streak(rng, image, mask, local, yc: float, x0: int):
    """The groove of _plant_streak from (x0, yc) to the far edge of the travel."""
    h, w = image.shape
    width = rng.uniform(1.5, 4.0)
    # mostly darker grooves, as faint as real ones: PBLM's scratches are 4-7 % darker than the
    # powder beside them (flat-fielded, 2-4 px wide at 1024 px), under a grain of about 5 %
    depth = rng.uniform(0.03, 0.15) * (1 if rng.random() < 0.8 else -0.6)
    xs = np.arange(w)
    # real scratches drift across the rows as they run (PBLM: 13 px over the 1024-px bed, the
    # camera and the blade not quite square), and wander a little
    slope = rng.uniform(-0.015, 0.015)
    centre = yc + slope * (xs - w / 2) + _smooth_walk(rng, w, 0.3, 40.0)
    yy = np.arange(h, dtype=np.float32)[:, None]
    profile = np.exp(-((yy - centre[None, :]) ** 2) / (2 * (width / 2) ** 2))
    profile[:, xs < x0] = 0.0
    # the groove fades in where the blade caught
    ramp = np.clip((xs - x0) / max(1.0, rng.uniform(5, 30)), 0, 1)
    profile *= ramp[None, :]
    image -= depth * local * profile
    mask[profile > 0.5] = STREAKING


def _plant_incompleteness(rng, image, mask, local):
    """An uncovered region behind a ragged spreading front: the powder ran out before the end
    of the travel, or left a tongue-shaped gap; the layer below shows through, darker."""
    h, w = image.shape
    y0 = int(rng.uniform(0.0, 0.7) * h)
    y1 = min(h, y0 + int(rng.uniform(0.1, 0.5) * h))
    front_x = rng.uniform(0.5, 0.95) * w if rng.random() < 0.7 else rng.uniform(0.15, 0.6) * w
    front = front_x + _smooth_walk(rng, h, rng.uniform(2, 8), 6.0)
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    # the region narrows towards its ends along y, so it is a tongue, not a band
    t = np.clip((yy - y0) / max(1, y1 - y0), 0, 1)
    inset = (1 - np.sin(np.pi * t)) * rng.uniform(0.05, 0.3) * w
    region = (xx >= front[:, None] + inset) & (yy >= y0) & (yy < y1)
    if region.sum() < 50:
        return
    soft = ndimage.gaussian_filter(region.astype(np.float32), 1.5)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), rng.uniform(1.5, 4)) * rng.uniform(4, 10)
    darker = rng.uniform(0.12, 0.4)
    image -= soft * (darker * local - texture)
    # a dark ridge of heaped powder along the front
    edge = soft * (1 - soft) * 4
    image -= edge * rng.uniform(0.05, 0.15) * local
    mask[soft > 0.5] = INCOMPLETENESS


def _plant_short_feed(rng, image, mask, local):
    """Too little powder at the side of the bed towards the end of the travel (PBLM's uneven
    layers): a wedge along one side, ending at the far edge, where the blade left a layer too thin
    to hold and it cracked. As the training split's uneven beds show it at 1024 px: no step in
    brightness at the wedge's edge, but a dark crack along its front, a network of cracks between
    the front and the side, densest at the side (2-5 px wide, 15-35 % darker than the powder), and
    mottled powder between them, a few per cent darker as a whole. The cracks are the zero set of
    smoothed noise, drawn a set width wide (|f| / |grad f| is the distance to it), and broken where
    a second noise is low, so that they branch and end instead of closing into cells."""
    h, w = image.shape
    x0 = rng.uniform(0.2, 0.8) * w
    depth = rng.uniform(0.06, 0.22) * h
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    # the wedge deepens from where the powder started to run short to the end of the travel
    reach = depth * np.clip((xx - x0) / max(1.0, w - x0), 0, 1) ** 0.3 + _smooth_walk(rng, w, rng.uniform(3, 8), 5.0)[None, :]
    from_side = yy if rng.random() < 0.5 else (h - 1) - yy
    region = (from_side < reach) & (xx >= x0)
    if region.sum() < 50:
        return
    inside = ndimage.gaussian_filter(region.astype(np.float32), 1.0)
    # smoothed unequally along the two axes, so the cracks run jagged and mostly one way
    noise = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), (rng.uniform(4, 10), rng.uniform(4, 10)))
    gy, gx = np.gradient(noise)
    to_crack = np.abs(noise) / (np.hypot(gy, gx) + 1e-6)
    half_width = rng.uniform(1.0, 2.5)
    near_side = np.clip(1.3 - from_side / np.maximum(reach, 1.0), 0, 1)
    broken = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), rng.uniform(6, 15))
    broken = np.clip(broken / (broken.std() + 1e-6) + rng.uniform(0.0, 0.8), 0, 1)
    cracks = np.exp(-((to_crack / half_width) ** 2)) * near_side * broken
    front = np.exp(-(((from_side - reach) / half_width) ** 2)) * (xx >= x0) * np.clip(broken + 0.5, 0, 1)
    mottle = ndimage.gaussian_filter(rng.normal(0, 1, image.shape), rng.uniform(5, 12))
    mottle /= mottle.std() + 1e-6
    shade = ndimage.gaussian_filter(region.astype(np.float32), 8.0) * (rng.uniform(0.02, 0.06) + 0.03 * mottle * near_side)
    image -= local * (shade + rng.uniform(0.15, 0.35) * np.maximum(cracks * inside, front))
    mask[region] = INCOMPLETENESS


def _plant_uncovered(rng, image, mask, local):
    """Incompleteness, one of its two looks on PBLM's beds: an uncovered region behind a
    spreading front, or a short feed's cracked wedge along a side."""
    (_plant_incompleteness if rng.random() < 0.5 else _plant_short_feed)(rng, image, mask, local)


# A planted part's size is the generator's on a 1024-px bed (synth.random_parts), whatever the crop.
PART_BED_PX = 1024


def _plant_parts(rng, image, local, count: int) -> np.ndarray:
    """Parts' cross-sections showing through the fresh powder, as the generator draws them
    (synth.render_layer): brighter and smoother than powder (melted metal) with a faint hatch,
    20-35 % above the local powder. Labelled background: a part is not a defect, and a model that
    never saw a part on a real bed calls a clean part's edge super-elevation or hopping. Returns
    the parts' union (bool [H, W]); the image (square) is changed in place."""
    h, w = image.shape
    union = np.zeros((h, w), dtype=bool)
    if count == 0:
        return union
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hatch_angle = rng.choice([np.pi / 4, -np.pi / 4])
    # the generator's hatch pitch (4 px per 256) on a 1024-px bed
    hatch = np.sin((xx * np.cos(hatch_angle) + yy * np.sin(hatch_angle)) * (2 * np.pi / 16.0))
    texture = image - local
    for part in random_parts(rng, h, count, PART_BED_PX):
        union |= part.mask(h)
    smooth = local * rng.uniform(1.2, 1.35) + 0.3 * texture + 0.025 * local * hatch
    soft = ndimage.gaussian_filter(union.astype(np.float32), 0.8)
    image[:] = image * (1 - soft) + smooth * soft
    return union


def _plant_super_elevation(rng, image, mask, local, parts):
    """Specular glare where a part's edge stands proud of the powder (synth.render_layer's
    super-elevation, its brightness relative to the local powder): on the edge of a planted part,
    one planted first if there is none."""
    if not parts.any():
        parts |= _plant_parts(rng, image, local, 1)
    soft = ndimage.gaussian_filter(parts.astype(np.float32), 0.8)
    ys, xs = np.nonzero((soft > 0.1) & (soft < 0.9))
    if len(xs) == 0:
        return
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(xs)))
        radius = rng.uniform(3.0, 7.0) * PART_BED_PX / 256 + 1
        region = blob(rng, image.shape[0], float(xs[i]), float(ys[i]), radius, 0.3)
        glare = ndimage.gaussian_filter(region.astype(np.float32), 0.7)
        speckle = 1.0 + 0.1 * ndimage.gaussian_filter(rng.normal(0, 1, image.shape), 1.0)
        image[:] = image * (1 - glare) + np.minimum(250.0, local * rng.uniform(1.8, 2.1)) * speckle * glare
        mask[region] = SUPER_ELEVATION


def _plant_tip(rng, image, mask, local):
    """Super-elevation as PBLM's Deformation beds show it: the tip of a part standing proud of the
    fresh powder, a small glint near saturation (5-12 px across at 0.24 mm per pixel), and most
    times the scratch the blade dragged from it to the end of the travel (the blade catches on
    the tip). The glint is labelled super-elevation, the scratch streaking."""
    h, w = image.shape
    x, y = rng.uniform(0.02, 0.8) * w, rng.uniform(0.03, 0.97) * h
    if rng.random() < 0.8:
        _drag_streak(rng, image, mask, local, y, int(x))
    region = blob(rng, h, float(x), float(y), rng.uniform(2.5, 6.0), 0.3)
    glare = ndimage.gaussian_filter(region.astype(np.float32), 0.7)
    image[:] = image * (1 - glare) + np.minimum(250.0, local * rng.uniform(1.8, 2.4)) * glare
    mask[region] = SUPER_ELEVATION


def _plant_hopping(rng, image, mask, local):
    """Bands across the travel where the blade hopped over an obstacle and chattered."""
    h, w = image.shape
    n = int(rng.integers(3, 8))
    pitch = rng.uniform(6, 16)
    width = rng.uniform(1.5, 4.0)
    x_start = rng.uniform(0.05, 0.8) * w
    y0 = rng.uniform(0.0, 0.5) * h
    y1 = min(h, y0 + rng.uniform(0.2, 0.8) * h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = (yy >= y0) & (yy < y1)
    amplitude = rng.uniform(0.08, 0.2)
    for i in range(n):
        sign = 1.0 if i % 2 == 0 else -1.0
        image += sign * amplitude * local * np.exp(-((xx - x_start - i * pitch) ** 2) / (2 * (width / 2) ** 2)) * inside
    band = inside & (xx >= x_start - width) & (xx <= x_start + (n - 1) * pitch + width)
    mask[band] = HOPPING


# Super-elevation is planted on a part's edge (_plant_super_elevation) or as a part's tip
# (_plant_tip), the others anywhere.
PLANTERS = {
    STREAKING: _plant_streak,
    INCOMPLETENESS: _plant_uncovered,
    SUPER_ELEVATION: None,
    HOPPING: _plant_hopping,
}
# The share of planted crops flush with a side of the bed (RealLayers._crop). A uniform 256-px crop
# of a 1024-px bed holds the outermost 20 px of one given side one time in 40, and then only at
# the crop's border; a model trained so calls the dim rim at the start of the travel hopping on
# every real layer (measured: 100 % of the held-out layers, clean ones included).
EDGE_SHARE = 0.3
# The share of planted crops that get clean parts (background) under their defects.
PARTS_SHARE = 0.5


def plant(rng: np.random.Generator, bed: np.ndarray, classes: list[int] | None = None, parts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic defects drawn on a real clean layer (uint8 [H, W], square, the bed's convention):
    returns (image float32 0..255, mask uint8 class index). `classes` None draws a random set
    (sometimes none: a clean real layer stays a clean example); `parts` is how many clean parts
    to draw first (None: none, or 1-3 one time in PARTS_SHARE). Contrast is relative to the local
    powder brightness, so a defect in a dark corner is as faint as a real one there."""
    image = bed.astype(np.float32)
    local = ndimage.uniform_filter(image, 31)
    mask = np.full(bed.shape, BACKGROUND, dtype=np.uint8)
    if classes is None:
        classes = [c for c in PLANTERS if rng.random() < 0.4]
    if parts is None:
        parts = int(rng.integers(1, 4)) if rng.random() < PARTS_SHARE else 0
    part_union = _plant_parts(rng, image, local, parts)
    for c in classes:
        if c == SUPER_ELEVATION:
            # a part's edge in glare, or a part's tip standing proud with its scratch
            if rng.random() < 0.5:
                _plant_super_elevation(rng, image, mask, local, part_union)
            else:
                _plant_tip(rng, image, mask, local)
            continue
        for _ in range(int(rng.integers(1, 3))):
            PLANTERS[c](rng, image, mask, local)
    return np.clip(image, 0, 255), mask


# A class counts as found on a whole 1024-px layer from this many of its pixels, wherever they are
# (about 2.3 mm² at 0.24 mm per pixel). The box counts a component from the configuration's
# min_defect_area_mm2 (5 mm² shipped, 84 px at 1024), so this validation figure is stricter on
# speckle spread over the bed and kinder on one small blob than the box.
FOUND_MIN_PX = 40


class RealLayers:
    """The real layers of a run: the training split (all of it under the absence losses, the
    defective ones under the presence loss, the clean ones as beds to plant on) and a few
    validation layers judged whole after each epoch."""

    def __init__(self, train, val, classes, label_map, weak_classes: list[str] | None = None, presence_top_k: dict[str, float] | None = None, weak_absent_classes: list[str] | None = None):
        self.train = train
        self.val = val
        self.label_map = label_map
        self.class_names = [c.name for c in classes]
        self.defect = np.array([c.defect for c in classes])
        names = [label_map.labels[label] for label in train.labels]
        self.present, self.absent = class_targets(names, self.class_names)
        self.clean = np.nonzero(~self.present.any(1))[0]
        self.defective = np.nonzero(self.present.any(1))[0]
        # On the defective layers the weak losses speak only of `weak_classes` (None: every
        # class). A clean layer keeps every class absent whatever they are: its label is a pixel
        # label (no defect anywhere), the one image label that says where. Of `weak_absent_classes`
        # they speak only where the label lacks the class (its absence, not its presence).
        self.weak_classes = list(self.class_names[1:]) if weak_classes is None else list(weak_classes)
        absent_only = set(weak_absent_classes or [])
        unsupervised = [c for c, name in enumerate(self.class_names) if name not in self.weak_classes]
        not_absent = [c for c in unsupervised if self.class_names[c] not in absent_only]
        self.weak_present, self.weak_absent = self.present.copy(), self.absent.copy()
        self.weak_present[np.ix_(self.defective, unsupervised)] = False
        self.weak_absent[np.ix_(self.defective, not_absent)] = False
        if len(self.clean) == 0 or len(self.defective) == 0:
            raise ValueError("the real training layers need clean and defective layers")
        # L_pres's k per class (TOP_K_SHARE where not given): see presence_top_k
        self.presence_shares = [float((presence_top_k or {}).get(name, TOP_K_SHARE)) for name in self.class_names]

    def _crop(self, rng, image: np.ndarray, crop: int, edge_share: float = 0.0) -> np.ndarray:
        """A random crop, flipped at random; one time in `edge_share` flush with a random side of
        the bed, so that the bed's rim (where the camera's light falls off and the flat field
        lifts the noise with it) is seen in its place as often as the open powder is."""
        h, w = image.shape
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        if rng.random() < edge_share:
            side = int(rng.integers(0, 4))
            top = 0 if side == 0 else h - crop if side == 1 else top
            left = 0 if side == 2 else w - crop if side == 3 else left
        out = image[top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            out = out[:, ::-1]
        if rng.random() < 0.5:
            out = out[::-1, :]
        return out

    @staticmethod
    def _normalise(images: list[np.ndarray], mean: float, std: float) -> np.ndarray:
        return ((np.stack(images)[:, None] / 255.0 - mean) / std).astype(np.float32)

    def planted_batch(self, rng, n: int, crop: int, mean: float, std: float, min_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """n crops of clean real layers with planted defects, lit anew: (inputs [n,1,c,c], masks
        [n,c,c]). With `min_scale` below 1, as train._augment's synthetic crops: half of them
        planted on a window up to crop / min_scale wide and shrunk to the crop, so that real
        powder is background at every scale the synthetic patterns are shown at."""
        xs, ys = [], []
        for _ in range(n):
            layer = self.train.images[int(rng.choice(self.clean))]
            window = min(*layer.shape, scaled_window(rng, crop, min_scale))
            image, mask = plant(rng, self._crop(rng, layer, window, EDGE_SHARE))
            image = lighting(rng, image)
            if window != crop:
                image, mask = shrink(image, mask, crop)
            xs.append(image)
            ys.append(mask.astype(np.int64))
        return self._normalise(xs, mean, std), np.stack(ys)

    def weak_step(self, rng, model, n_crops: int, crop: int, whole: bool, mean: float, std: float, clean_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_abs, L_pres) of this step: absence on `n_crops` crops of any real layers, and with
        `whole` both terms on one whole layer, clean (absence only) one time in WHOLE_CLEAN_SHARE,
        else defective. `clean_only`: the clean layers alone, crops and whole (absence of every
        class: the one image label that says where, everywhere), no presence term. Whole layers matter beyond crops: the network pools globally (ASPP's image
        pooling, the fusion's channel attention), so a whole bed is not a crop's context, and a
        model that never saw a clean bed whole may call all of it a defect. The real layers pass
        the network with its BatchNorm in eval mode (multitask.frozen_batch_norm): normalised by
        the statistics of the pixel-labelled batches, which already hold real beds (the planted
        crops)."""
        from .multitask import frozen_batch_norm

        device = device_of(model)
        picks = rng.choice(self.clean, n_crops) if clean_only else rng.integers(0, len(self.train.names), n_crops)
        # Clean beds are taken as the box delivers them (flat-fielded, not lit anew): relit, their
        # darkened corners would teach that a darker region is never incompleteness, which the
        # planted (labelled) crops teach where it is true. Measured: relit, the clean-only absence
        # drove incompleteness to 0.02 synthetic IoU within one epoch.
        clean = set(self.clean.tolist())

        def relight(i: int, image: np.ndarray) -> np.ndarray:
            return image if i in clean else lighting(rng, image)

        # Flush with a side as often as the planted crops: the rim is where false defects sit,
        # and a uniform 256-px crop of a 1024-px bed holds a given side's outermost rows one
        # time in 769.
        x = self._normalise([relight(i, self._crop(rng, self.train.images[i], crop, EDGE_SHARE).astype(np.float32)) for i in picks], mean, std)
        with frozen_batch_norm(model):
            absent, _ = weak_losses(model(torch.from_numpy(x).to(device)), torch.from_numpy(self.weak_present[picks]).to(device), torch.from_numpy(self.weak_absent[picks]).to(device), top_k_share=None)
            present = absent * 0.0
            if whole:
                i = int(rng.choice(self.clean if clean_only or rng.random() < WHOLE_CLEAN_SHARE else self.defective))
                image = self.train.images[i]
                if rng.random() < 0.5:
                    image = image[::-1, :]
                x = self._normalise([relight(i, image.astype(np.float32))], mean, std)
                whole_absent, present = weak_losses(model(torch.from_numpy(x).to(device)), torch.from_numpy(self.weak_present[i : i + 1]).to(device), torch.from_numpy(self.weak_absent[i : i + 1]).to(device), self.presence_shares)
                absent = 0.5 * (absent + whole_absent)
        return absent, present

    @torch.no_grad()
    def validate(self, model, mean: float, std: float) -> dict:
        """Judge the validation layers whole: the mean flagged share (defect-class pixels) of the
        clean ones, the share of clean ones with a class found (false alarms), and the layer
        classes found (FOUND_MIN_PX) against their labels, as macro F1 over the label map's
        classes. real_score = 0.5 layer F1 + 0.5 (1 - false-alarm rate)."""
        from .multitask import multilabel_metrics

        model.eval()
        layer_classes = self.label_map.classes
        seg_index = [self.class_names.index(c) if c in self.class_names else None for c in layer_classes]
        found = np.zeros((len(self.val.names), len(layer_classes)), dtype=bool)
        flagged = np.zeros(len(self.val.names))
        for n, image in enumerate(self.val.images):
            x = self._normalise([image.astype(np.float32)], mean, std)
            pred = model(torch.from_numpy(x).to(device_of(model))).argmax(1)[0].cpu().numpy()
            counts = np.bincount(pred.ravel(), minlength=len(self.class_names))
            flagged[n] = counts[self.defect].sum() / pred.size
            found[n] = [c is not None and counts[c] >= FOUND_MIN_PX for c in seg_index]
        truth = self.val.targets > 0.5
        clean = ~truth.any(1)
        layer_f1 = multilabel_metrics(found.astype(np.float32), self.val.targets, layer_classes)["macro_f1"]
        false_alarms = float(found[clean].any(1).mean()) if clean.any() else 0.0
        return {
            "real_layer_f1": layer_f1,
            "real_clean_flagged": float(flagged[clean].mean()) if clean.any() else 0.0,
            "real_clean_false_alarms": false_alarms,
            "real_defective_flagged": float(flagged[~clean].mean()) if (~clean).any() else 0.0,
            "real_score": 0.5 * layer_f1 + 0.5 * (1.0 - false_alarms),
        }


def load_real_layers(root, label_map_path, size: int, classes, max_per_label: int | None, mixed_sizes: str, val_layers: int, progress: bool, weak_classes: list[str] | None = None, presence_top_k: dict[str, float] | None = None, weak_absent_classes: list[str] | None = None) -> RealLayers:
    """The training split of the real layers at the model's input size (turned to the bed's
    convention), and `val_layers` of the validation split: every clean one, then the others
    spread over the folders in turn."""
    from .layers import load_label_map, load_layer_folders

    label_map = load_label_map(label_map_path)
    train = load_layer_folders(root, label_map, size, splits=("train",), max_per_label=max_per_label, mixed_sizes=mixed_sizes, progress=progress)
    val = load_layer_folders(root, label_map, size, splits=("val",), mixed_sizes=mixed_sizes, progress=False)
    clean = [i for i, label in enumerate(val.labels) if not label_map.labels[label]]
    others: dict[str, list[int]] = {}
    for i, label in enumerate(val.labels):
        if label_map.labels[label]:
            others.setdefault(label, []).append(i)
    chosen = clean[:val_layers]
    queues = [list(v[:: max(1, len(v) // val_layers)]) for v in others.values()]
    while len(chosen) < val_layers and any(queues):
        for q in queues:
            if q and len(chosen) < val_layers:
                chosen.append(q.pop(0))
    return RealLayers(train, val.subset(sorted(chosen)), classes, label_map, weak_classes, presence_top_k, weak_absent_classes)
