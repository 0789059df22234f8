"""A second, independent synthetic powder-bed generator: for TEST SETS ONLY, never for training.

Why it exists: a model trained on `synth.py` layers learns that generator as well as the defects
(MIoU 0.80 on synth.py layers, 0.45 on layers drawn by someone else). Scoring it on layers from a
generator that shares none of synth.py's drawing code measures what it learned about powder beds
rather than about synth.py. Train on this generator and that figure means nothing again: keep it
out of every training set.

It writes the same dataset layout as `synth.write_dataset` (out/dataset.toml, out/images/*.png,
out/masks/*.png; 8-bit grey images, class index per mask pixel, seed 000's class table from
common.DEFAULT_CLASSES), named "synthetic-alt", so `bedsight-train evaluate --data DIR --split all`
scores a model on it:

    python -m bedsight_train.synth_alt --out DIR --layers N --size S --seed K

How it differs from synth.py (every drawing step is a different process, written apart from it):

- powder: sparse grains (Poisson points, log-normal brightness, two grain sizes) blurred and lit
  from the side so each grain casts a small shadow, over fractal value noise (interpolated random
  lattices) and a multiplicative log-normal speckle; synth.py blurs Gaussian white noise;
- lighting: a point lamp above the bed (inverse-square and cosine falloff), a tilted plane, a cos^4
  lens vignette, a slow banding across y, a random exposure and a gamma curve, then a slight optical
  blur and signal-dependent shot noise; synth.py multiplies a linear tilt and a quadratic vignette;
- parts: random star-shaped polygons, rounded (superelliptic) rectangles and tubes, log-normal
  sizes, brightness from a little below to well above the powder, a scan hatch at any angle laid in
  alternating stripes and a contour track; synth.py draws brighter ellipses and rectangles with a
  +-45 degree hatch;
- incompleteness: an uncovered tongue reaching in from one bed edge (mostly the +x end, where a
  short powder feed runs out) and ending in a ragged spreading front; the previous layer shows
  through, dark, with the old parts faintly brighter;
- streaking: thin lines along x from a random start to the far (+x) edge, of varying width and
  contrast, either dark grooves or bright ridges;
- super-elevation: bright crescents along the part edges that face away from the recoater (+x),
  widest in the middle and tapering to nothing at both ends;
- hopping: a damped chatter of vertical bands (sharp dark edge, slow recovery, amplitude decaying
  along x) in a rectangle;
- lattice: a rotated rectangle holding a rotated square or staggered grid of hard-edged bright
  dots (strut tops);
- plus a few unlabelled spatter particles on the powder, as on a real bed.

The recoater travels along +x (common.RECOATER_DIRECTION). Each mask pixel is set exactly where the
drawing of its class covers at least half of that pixel, and drawing order decides overlaps (later
drawn, later labelled): parts, lattice, hopping, streaking, incompleteness, super-elevation.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .common import DEFAULT_CLASSES, save_png_grey, synthetic_dataset_doc, toml_dumps

_INDEX = {c.name: i for i, c in enumerate(DEFAULT_CLASSES)}
BACKGROUND = _INDEX["background"]
SUPER_ELEVATION = _INDEX["super-elevation"]
INCOMPLETENESS = _INDEX["incompleteness"]
HOPPING = _INDEX["hopping"]
STREAKING = _INDEX["streaking"]
LATTICE = _INDEX["lattice"]
DEFECT_CLASSES = (SUPER_ELEVATION, INCOMPLETENESS, HOPPING, STREAKING, LATTICE)

DATASET_NAME = "synthetic-alt"
GENERATOR = "bedsight-train synth_alt (test sets only)"

_SUPERSAMPLE = 4  # polygon rasterisation: coverage from a 4x4 grid per pixel


@dataclass
class AltLayer:
    image: np.ndarray  # uint8 [S, S]
    mask: np.ndarray  # uint8 [S, S], class index per pixel
    planted: list[int] = field(default_factory=list)  # classes present in the mask


# ---------------------------------------------------------------------------------------------
# noise processes


def _value_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Random values on a lattice of `cell` pixels, cubic-spline interpolated; zero mean, unit std."""
    n = int(np.ceil(size / cell)) + 4
    lattice = rng.random((n, n))
    offset = rng.uniform(1.0, 2.0, size=2)
    coords = np.arange(size, dtype=np.float64) / cell
    cy, cx = np.meshgrid(coords + offset[0], coords + offset[1], indexing="ij")
    out = ndimage.map_coordinates(lattice, [cy, cx], order=3, mode="mirror")
    return ((out - out.mean()) / (out.std() + 1e-9)).astype(np.float32)


def _fractal_noise(rng: np.random.Generator, size: int, largest: float, octaves: int, gain: float = 0.55) -> np.ndarray:
    total = np.zeros((size, size), np.float32)
    amp, cell = 1.0, largest
    for _ in range(octaves):
        total += amp * _value_noise(rng, size, max(cell, 2.0))
        amp *= gain
        cell /= 2.0
    return total / (total.std() + 1e-9)


def _noise_1d(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """A smooth random curve of `n` samples (cosine-interpolated random values every `cell`)."""
    knots = rng.standard_normal(int(np.ceil(n / max(cell, 1.0))) + 2)
    t = np.arange(n) / max(cell, 1.0)
    i = np.floor(t).astype(int)
    f = t - i
    w = (1 - np.cos(np.pi * f)) / 2
    return knots[i] * (1 - w) + knots[i + 1] * w


def _shift(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    return ndimage.shift(a, (dy, dx), order=1, mode="nearest")


def _grains(rng: np.random.Generator, size: int, light_dir: tuple[float, float]) -> np.ndarray:
    """Powder grains: Poisson-scattered particles of log-normal brightness in two sizes, blurred,
    each with a shadow on the side away from the light. Zero mean, unit std, skewed bright."""
    total = np.zeros((size, size), np.float32)
    populations = (
        # density per pixel, blur sigma (px), log-normal mu, sigma
        (rng.uniform(0.25, 0.45), rng.uniform(0.7, 1.0), 0.0, 0.5),
        (rng.uniform(0.01, 0.03), rng.uniform(1.4, 2.0), 0.6, 0.35),
    )
    for density, sigma, mu, spread in populations:
        count = rng.poisson(density * size * size)
        ys = rng.integers(0, size, count)
        xs = rng.integers(0, size, count)
        points = np.zeros((size, size), np.float32)
        np.add.at(points, (ys, xs), rng.lognormal(mu, spread, count).astype(np.float32))
        total += ndimage.gaussian_filter(points, sigma)
    dy, dx = light_dir
    relief = total - 0.45 * _shift(total, dy * 1.2, dx * 1.2)
    return (relief - relief.mean()) / (relief.std() + 1e-9)


# ---------------------------------------------------------------------------------------------
# geometry


def _coverage(size: int, polygons: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Fraction of each pixel covered by the polygons, drawn in order with fill 255 (add) or
    0 (cut a hole). Vertices are (x, y) in pixel coordinates, pixel centres at integers."""
    from PIL import Image, ImageDraw

    ss = _SUPERSAMPLE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for vertices, fill in polygons:
        pts = [(float((x + 0.5) * ss), float((y + 0.5) * ss)) for x, y in vertices]
        draw.polygon(pts, fill=fill)
    cov = np.asarray(canvas, dtype=np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))
    return cov / 255.0


def _superellipse(cx, cy, a, b, p, angle, n=96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    u = a * np.sign(c) * np.abs(c) ** (2 / p)
    v = b * np.sign(s) * np.abs(s) ** (2 / p)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + u * ca - v * sa, cy + u * sa + v * ca], 1)


def _star_polygon(rng, cx, cy, r) -> np.ndarray:
    n = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.65, 1.0, n)
    # spread the vertices out a little so no sliver polygons appear
    even = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    angles = 0.5 * angles + 0.5 * np.sort(np.mod(even, 2 * np.pi))
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)


def _random_part(rng: np.random.Generator, size: int) -> list[tuple[np.ndarray, int]]:
    """One part's cross-section as polygons for `_coverage`: a star-shaped polygon, a rounded
    rectangle or a tube. Sizes are log-normal: many small parts, a few large ones."""
    r = float(np.clip(rng.lognormal(np.log(0.085 * size), 0.45), 0.035 * size, 0.24 * size))
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    kind = rng.choice(["polygon", "rounded", "tube"], p=[0.4, 0.4, 0.2])
    angle = rng.uniform(0, np.pi)
    if kind == "polygon":
        return [(_star_polygon(rng, cx, cy, r), 255)]
    if kind == "rounded":
        aspect = rng.uniform(0.45, 1.0)
        return [(_superellipse(cx, cy, r, r * aspect, rng.uniform(3.0, 8.0), angle), 255)]
    inner = r * rng.uniform(0.45, 0.7)
    return [(_superellipse(cx, cy, r, r, 2.0, 0.0), 255), (_superellipse(cx, cy, inner, inner, 2.0, 0.0), 0)]


# ---------------------------------------------------------------------------------------------
# the layer


class _Canvas:
    """The image being drawn (float, before lighting) and its mask; `paint` blends a drawing in
    by its coverage and labels the pixels it covers at least half of."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.mask = np.zeros(image.shape, np.uint8)

    def paint(self, drawn: np.ndarray, alpha: np.ndarray, cls: int | None) -> None:
        alpha = np.clip(alpha, 0.0, 1.0)
        self.image = self.image * (1 - alpha) + drawn * alpha
        if cls is not None:
            self.mask[alpha >= 0.5] = cls


def render_layer(rng: np.random.Generator, size: int, plant=()) -> AltLayer:
    """One layer with the classes in `plant` (any subset of 1..5) drawn where the generator picks."""
    plant = {int(c) for c in plant}
    unknown = plant - set(DEFECT_CLASSES)
    if unknown:
        raise ValueError(f"cannot plant classes {sorted(unknown)}; expected some of {list(DEFECT_CLASSES)}")
    s = size / 256.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Light comes from one side: grains cast their shadows away from it.
    azimuth = rng.uniform(0, 2 * np.pi)
    light_dir = (float(np.sin(azimuth)), float(np.cos(azimuth)))
    powder_level = rng.uniform(95, 150)
    grains = _grains(rng, size, light_dir)
    clumps = _fractal_noise(rng, size, rng.uniform(0.25, 0.5) * size, 4)
    speckle = np.exp(rng.uniform(0.03, 0.07) * rng.standard_normal((size, size))).astype(np.float32)
    grain_amp = rng.uniform(7, 12)
    powder = (powder_level * (1 + rng.uniform(0.03, 0.07) * clumps) + grain_amp * grains) * speckle
    canvas = _Canvas(powder)

    # Parts (not a class): melted cross-sections under a thin fresh layer.
    n_parts = int(min(rng.poisson(1.8), 5))
    if SUPER_ELEVATION in plant and n_parts == 0:
        n_parts = 1
    part_cov = np.zeros((size, size), np.float32)
    part_shapes = []
    for _ in range(n_parts):
        cov = _coverage(size, _random_part(rng, size))
        if cov.max() < 0.5:
            continue
        part_shapes.append(cov)
        part_cov = np.maximum(part_cov, cov)
        theta = rng.uniform(0, np.pi)
        pitch = max(2.2, rng.uniform(2.6, 4.5) * s)
        stripe = max(6.0, rng.uniform(14, 26) * s)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        flip = np.where(np.floor(v / stripe) % 2 == 0, 0.0, np.pi)
        hatch = np.sin(2 * np.pi * u / pitch + flip)
        inside = ndimage.distance_transform_edt(cov >= 0.5)
        contour = ((inside > 0) & (inside <= max(1.0, 1.5 * s))).astype(np.float32)
        level = powder_level + rng.uniform(-8, 40)
        drawn = level + 0.3 * grain_amp * grains + rng.uniform(1.5, 4.5) * hatch + rng.uniform(-8, 12) * contour
        canvas.paint(drawn, cov, None)

    if LATTICE in plant:
        for _ in range(int(rng.integers(1, 3))):
            _lattice(rng, canvas, size, s, xx, yy, powder_level, part_cov)
    if HOPPING in plant:
        for _ in range(int(rng.integers(1, 3))):
            _hopping(rng, canvas, size, s, xx, yy)
    if STREAKING in plant:
        for _ in range(int(rng.integers(1, 4))):
            _streak(rng, canvas, size, s, xx, yy)
    if INCOMPLETENESS in plant:
        for _ in range(1 if rng.random() < 0.75 else 2):
            _incompleteness(rng, canvas, size, s, xx, yy, powder_level, part_cov)
    if SUPER_ELEVATION in plant and part_shapes:
        for _ in range(int(rng.integers(1, 4))):
            _super_elevation(rng, canvas, size, s, xx, yy, part_shapes[int(rng.integers(len(part_shapes)))])

    # Spatter: a few bright, unlabelled particles thrown onto the powder by earlier layers.
    for _ in range(int(rng.integers(0, 7))):
        px, py = rng.uniform(0, size, 2)
        r = rng.uniform(0.5, 1.3)
        blob = np.clip(r + 0.5 - np.hypot(xx - px, yy - py), 0, 1)
        canvas.image = canvas.image + rng.uniform(25, 60) * blob

    image = _expose(rng, canvas.image, size, xx, yy)
    mask = canvas.mask
    planted = sorted(int(c) for c in np.unique(mask) if c != BACKGROUND)
    return AltLayer(image=image, mask=mask, planted=planted)


def _lattice(rng, canvas: _Canvas, size, s, xx, yy, powder_level, part_cov) -> None:
    """Support lattice: a rotated rectangle of hard-edged bright dots on a square or staggered grid."""
    w = rng.uniform(0.1, 0.28) * size
    h = rng.uniform(0.1, 0.28) * size
    angle = rng.uniform(-0.5, 0.5)
    ca, sa = np.cos(angle), np.sin(angle)
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    earlier = canvas.mask == LATTICE
    for attempt in range(12):  # a spot off the parts (preferably) and off other lattices (always)
        cx, cy = rng.uniform(0.08, 0.92, 2) * size
        rect = np.stack([cx + corners[:, 0] * ca - corners[:, 1] * sa, cy + corners[:, 0] * sa + corners[:, 1] * ca], 1)
        cov = _coverage(size, [(rect, 255)])
        if not (cov > 0).any() or (earlier & (cov > 0)).any():
            continue
        if part_cov[int(cy), int(cx)] < 0.5 or attempt >= 8:
            break
    else:
        return
    pitch = max(3.5, rng.uniform(4.5, 8.0) * s)
    radius = max(0.8, pitch * rng.uniform(0.2, 0.3))
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    row = np.round(v / pitch)
    stagger = 0.5 * pitch * (row % 2) if rng.random() < 0.5 else 0.0
    du = u - stagger - np.round((u - stagger) / pitch) * pitch
    dv = v - row * pitch
    dots = np.clip(radius + 0.5 - np.hypot(du, dv), 0, 1)
    floor = canvas.image - rng.uniform(4, 12)
    drawn = floor * (1 - dots) + (powder_level + rng.uniform(45, 80)) * dots
    canvas.paint(drawn, cov, LATTICE)


def _hopping(rng, canvas: _Canvas, size, s, xx, yy) -> None:
    """Recoater chatter: the blade bounced after hitting something and left vertical bands, each
    a sharp dark edge and a slow recovery, their amplitude decaying along x."""
    period = max(4.0, rng.uniform(7, 16) * s)
    n_bands = int(rng.integers(3, 8))
    length = n_bands * period
    xa = rng.uniform(0.0, max(1.0, size - length))
    xb = min(float(size), xa + length)
    height = rng.uniform(0.3, 1.0) * size
    ya = rng.uniform(0, size - height)
    yb = ya + height
    tau = rng.uniform(0.18, 0.32)
    a0 = rng.uniform(30, 48)
    decay = length / np.log(1 / rng.uniform(0.45, 0.6))
    jitter = _noise_1d(rng, size, 10 * s + 2)[:, None] * 0.8 * s  # bands not perfectly straight
    phase = np.mod((xx - xa + jitter) / period, 1.0)
    wave = 1 - 2 * np.exp(-phase / tau)
    wave = wave - (1 - 2 * tau * (1 - np.exp(-1 / tau)))  # zero mean over a period
    amp = a0 * np.exp(-np.clip(xx - xa, 0, None) / decay)
    ends = np.clip(np.minimum(yy - ya + 0.5, yb - yy - 0.5) / 2.0 + 0.5, 0, 1)
    box = [(np.array([[xa - 0.5, ya - 0.5], [xb - 0.5, ya - 0.5], [xb - 0.5, yb - 0.5], [xa - 0.5, yb - 0.5]]), 255)]
    cov = _coverage(size, box)
    canvas.paint(canvas.image + amp * wave * ends, cov, HOPPING)


def _streak(rng, canvas: _Canvas, size, s, xx, yy) -> None:
    """A line along x from where a particle caught the blade to the far (+x) edge: a dark groove,
    or a bright ridge of packed powder, of varying width and contrast."""
    yc = rng.uniform(0.04, 0.96) * size
    x0 = rng.uniform(0.0, 0.7) * size
    x = np.arange(size, dtype=np.float32)
    ycurve = yc + rng.uniform(-0.012, 0.012) * (x - x0) + _noise_1d(rng, size, 20 * s + 4) * 0.6 * s
    half = np.clip(rng.uniform(0.6, 1.8) * max(s, 0.5) * (1 + 0.3 * _noise_1d(rng, size, 16 * s + 4)), 0.55, None)
    contrast = (rng.uniform(22, 40) if rng.random() < 0.35 else -rng.uniform(25, 45)) * (1 + 0.25 * _noise_1d(rng, size, 24 * s + 4))
    ramp = max(2.0, 4 * s)
    start = np.clip((x - x0) / ramp + 0.5, 0, 1)
    d = np.abs(yy - ycurve[None, :]) / half[None, :]
    profile = 1 / (1 + d**4)  # flat-topped: at least half the contrast inside |d| <= 1
    line = (d <= 1) & (start[None, :] >= 0.5)
    alpha = profile * start[None, :]
    canvas.image = canvas.image + contrast[None, :] * alpha
    canvas.mask[line] = STREAKING


def _incompleteness(rng, canvas: _Canvas, size, s, xx, yy, powder_level, part_cov) -> None:
    """An uncovered tongue reaching in from one bed edge: the powder ran out before the end of the
    travel (+x, most often) or the blade missed a side, ending in a ragged spreading front."""
    edge = rng.choice(["+x", "+y", "-y", "-x"], p=[0.6, 0.15, 0.15, 0.1])
    # depth: distance from that edge; along: the coordinate along it
    depth, along = {
        "+x": (size - 1 - xx, yy),
        "-x": (xx, yy),
        "+y": (size - 1 - yy, xx),
        "-y": (yy, xx),
    }[str(edge)]
    reach = rng.uniform(0.12, 0.4) * size
    if rng.random() < 0.3:
        a0, a1 = -0.1 * size, 1.1 * size  # the whole side
    else:
        span = rng.uniform(0.3, 0.8) * size
        a0 = rng.uniform(-0.1 * size, size - 0.6 * span)
        a1 = a0 + span
    a = np.arange(size, dtype=np.float32)
    bump = np.clip((a - a0) * (a1 - a) / ((a1 - a0) / 2) ** 2, 0, 1) ** 0.4
    ragged = 0.15 * _noise_1d(rng, size, 28 * s + 4) + 0.06 * _noise_1d(rng, size, 9 * s + 3)
    front = reach * bump * (1 + ragged) + 1.2 * max(s, 0.5) * _noise_1d(rng, size, 4 * s + 2)
    front = np.where(bump > 0, ndimage.gaussian_filter1d(front, 1.0 * max(s, 0.5)), -1.0)
    soft = rng.uniform(1.5, 3.5) * max(s, 0.5)  # the thinning powder at the front
    along_i = np.clip(along.astype(int), 0, size - 1)
    f = front[along_i] - depth  # > 0 inside the uncovered region
    alpha = np.clip(f / soft + 0.5, 0, 1)
    # the previous layer shows through: dark, finer texture, old parts faintly brighter
    bare_level = powder_level * rng.uniform(0.3, 0.5)
    texture = _fractal_noise(rng, size, 0.1 * size + 4, 3)
    old_parts = ndimage.gaussian_filter(part_cov, 0.8)
    bare = bare_level + rng.uniform(2, 5) * texture + rng.uniform(6, 14) * old_parts
    canvas.paint(bare, alpha, INCOMPLETENESS)


def _super_elevation(rng, canvas: _Canvas, size, s, xx, yy, part_cov) -> None:
    """A bright crescent on a part edge facing +x (away from the recoater): the edge curled up,
    the blade scraped it bare and the metal reflects the lamp."""
    inside = part_cov >= 0.5
    smooth = ndimage.gaussian_filter(part_cov, 1.5)
    gy, gx = np.gradient(smooth)
    norm = np.hypot(gx, gy) + 1e-9
    nx = -gx / norm  # outward normal, x component
    d_in = ndimage.distance_transform_edt(inside)
    d_out = ndimage.distance_transform_edt(~inside)
    rim = (d_in == 1) & (nx > 0.4)
    ys, xs = np.nonzero(rim)
    if len(xs) == 0:
        return
    i = int(rng.integers(len(xs)))
    px, py = float(xs[i]), float(ys[i])
    arc = rng.uniform(6, 14) * s + 3
    width = rng.uniform(2, 4.5) * s + 1.5
    taper = np.clip(1 - ((xx - px) ** 2 + (yy - py) ** 2) / arc**2, 0, 1) * np.clip((nx - 0.1) / 0.3, 0, 1)
    w = width * taper
    # signed distance into the crescent: inside the part up to w, outside (the raised lip) up to w/3
    depth = np.where(inside, d_in - 0.5, d_out - 0.5)
    reach = np.where(inside, w, w / 3)
    f = reach - depth
    f = np.where(taper > 0, f, -1.0)
    alpha = np.clip(f + 0.5, 0, 1)
    level = rng.uniform(205, 245)
    closeness = np.clip(1 - depth / np.maximum(w, 1e-6), 0, 1)
    drawn = level * (0.85 + 0.15 * closeness) + 3 * rng.standard_normal((size, size))
    canvas.paint(drawn, alpha, SUPER_ELEVATION)


def _expose(rng, scene: np.ndarray, size: int, xx, yy) -> np.ndarray:
    """Lamp, lens and sensor: a point light above the bed, a tilt, a cos^4 vignette, slow banding
    across y, exposure and gamma, a slight blur, then shot and read noise."""
    lx, ly = rng.uniform(-0.2, 1.2, 2) * size
    h = rng.uniform(1.2, 2.5) * size
    lamp = h**3 / (((xx - lx) ** 2 + (yy - ly) ** 2 + h**2) ** 1.5)
    tilt = 1 + rng.uniform(-0.08, 0.08) * (xx / size - 0.5) + rng.uniform(-0.08, 0.08) * (yy / size - 0.5)
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    focal = rng.uniform(1.3, 2.5) * size
    vignette = 1 / (1 + ((xx - cx) ** 2 + (yy - cy) ** 2) / focal**2) ** 2
    banding = 1 + rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * yy / (rng.uniform(0.4, 1.2) * size) + rng.uniform(0, 2 * np.pi))
    log_light = np.log(lamp * tilt * vignette * banding)
    log_light -= log_light.mean()
    span = float(log_light.max() - log_light.min())
    max_span = np.log(1.4)  # brightest to darkest bare powder at most 1.4x
    if span > max_span:
        log_light *= max_span / span
    lit = scene * np.exp(log_light) * rng.uniform(0.85, 1.15)
    gamma = rng.uniform(0.85, 1.15)
    lit = 255.0 * (np.clip(lit, 0, None) / 255.0) ** gamma
    lit = ndimage.gaussian_filter(lit, rng.uniform(0.35, 0.65))
    gain = rng.uniform(0.08, 0.3)
    noisy = lit + np.sqrt(gain * np.clip(lit, 0, None)) * rng.standard_normal((size, size)) + rng.normal(0, 1.0, (size, size))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# datasets


def random_plan(rng: np.random.Generator, p_clean: float = 0.12) -> set[int]:
    """Which classes a layer gets: a few clean layers, otherwise one to three classes."""
    if rng.random() < p_clean:
        return set()
    k = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    return {int(c) for c in rng.choice(DEFECT_CLASSES, size=k, replace=False)}


def plan_dataset(rng: np.random.Generator, layers: int) -> list[set[int]]:
    """Random plans, then every class added to a random layer that lacks it, so that a test set of
    a handful of layers still holds every class (as far as `layers` allows)."""
    plans = [random_plan(rng) for _ in range(layers)]
    for c in DEFECT_CLASSES:
        if not any(c in p for p in plans):
            candidates = [i for i, p in enumerate(plans) if p and len(p) < 3] or [i for i, p in enumerate(plans) if p] or list(range(layers))
            plans[int(rng.choice(candidates))].add(int(c))
    return plans


def dataset_toml(size: int, seed: int, layers: int) -> str:
    doc = {**synthetic_dataset_doc(size, seed, layers, DATASET_NAME, GENERATOR), "test_only": True}
    return (
        "# A labelled powder-bed TEST set from the second synthetic generator (synth_alt): never train on it.\n"
        "# images/*.png (8-bit grey) and masks/*.png (class index per pixel, same file name). The recoater\n"
        "# travels along recoater_direction in image coordinates.\n" + toml_dumps(doc)
    )


def write_dataset(out: Path, layers: int, size: int, seed: int, progress: bool = True) -> list[list[int]]:
    """Write `layers` layers to out/images, out/masks and out/dataset.toml, in the layout of
    synth.write_dataset. Returns the classes present in each layer's mask."""
    from tqdm import tqdm

    if layers < 1:
        raise ValueError("--layers must be at least 1")
    if size < 32:
        raise ValueError("--size must be at least 32 pixels")
    out = Path(out)
    # a different stream from synth.py's for the same seed number
    rng = np.random.default_rng([seed, 0x5A17])
    plans = plan_dataset(rng, layers)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(layers)))
    planted_all: list[list[int]] = []
    for i in tqdm(range(layers), desc="synth-alt", unit="layer", disable=not progress):
        layer = render_layer(rng, size, plans[i])
        stem = f"layer-{i + 1:0{width}d}"
        save_png_grey(out / "images" / f"{stem}.png", layer.image)
        save_png_grey(out / "masks" / f"{stem}.png", layer.mask)
        planted_all.append(layer.planted)
    (out / "dataset.toml").write_text(dataset_toml(size, seed, layers))
    return planted_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bedsight_train.synth_alt",
        description="Write a labelled synthetic powder-bed TEST set from the second, independent generator "
        "(never train on it; score a model with `bedsight-train evaluate --data DIR --split all`).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--layers", type=int, default=64, help="number of layers (default 64)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        planted = write_dataset(args.out, args.layers, args.size, args.seed, progress=not args.quiet)
    except ValueError as e:
        print(f"synth_alt: {e}", file=sys.stderr)
        return 2
    counts = {DEFAULT_CLASSES[c].name: sum(c in p for p in planted) for c in DEFECT_CLASSES}
    clean = sum(not p for p in planted)
    print(f"wrote {args.layers} layers to {args.out} ({clean} clean; layers per class: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
