"""A synthetic powder-bed layer generator, for demos and tests.

Each layer is an 8-bit grey image of a freshly recoated bed: granular powder texture under uneven
lighting, the cross-sections of the parts (melted regions: brighter, smoother, with a faint hatch),
and the five classes of seed 000 §4.1 (Fig. 4) drawn the way they look there:

- super-elevation: bare metal standing proud of the powder at a part's edge, brighter than the
  powder by a sheen to saturation: a spot, a curled stretch of the contour, or a cluster of specks;
- incompleteness: large dark areas that the powder did not cover;
- hopping: the blade's chatter after striking a protrusion, stripes perpendicular to the recoater
  travel (vertical here: the recoater moves along +x), 2.5-11 mm apart, dying away along the travel;
- streaking: thin lines parallel to the recoater travel (horizontal here), dragged to the far end:
  darker grooves or brighter ridges, shallow to deep, alone or a few side by side;
- lattice: the strut tops of support lattices, dots 2.5-8 mm apart on a square or staggered grid at
  any turn (not a defect in the strict sense);
- and spatter, single particles on the powder that are no defect.

The ranges come from the process (the blade's speed and ringing, support pitches, the lamp's
reflection off bare metal), not from the second generator (synth_alt.py), which tests only.

The mask holds the class index per pixel. The same generator makes the demo's sample build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .common import DEFAULT_CLASSES, RECOATER_DIRECTION, SYNTH_BED_WIDTH_MM, save_png_grey, synthetic_dataset_doc, toml_dumps

BACKGROUND, SUPER_ELEVATION, INCOMPLETENESS, HOPPING, STREAKING, LATTICE = range(6)
DEFECT_CLASSES = (SUPER_ELEVATION, INCOMPLETENESS, HOPPING, STREAKING, LATTICE)


@dataclass
class Part:
    """One part's cross-section on the bed: an ellipse or a rotated rectangle, in pixels."""

    kind: str
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float

    def mask(self, size: int) -> np.ndarray:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (xx - self.cx) * c + (yy - self.cy) * s
        v = -(xx - self.cx) * s + (yy - self.cy) * c
        if self.kind == "ellipse":
            return (u / self.rx) ** 2 + (v / self.ry) ** 2 <= 1.0
        return (np.abs(u) <= self.rx) & (np.abs(v) <= self.ry)


@dataclass
class Layer:
    image: np.ndarray  # uint8 [S, S]
    mask: np.ndarray  # uint8 [S, S], class index per pixel
    planted: list[int] = field(default_factory=list)  # classes present in the mask


def random_parts(rng: np.random.Generator, size: int, count: int, bed_px: int | None = None) -> list[Part]:
    """`count` parts on a square of `size` px, sized for a bed of `bed_px` (default: the square)."""
    parts: list[Part] = []
    for _ in range(count):
        r = rng.uniform(0.06, 0.16) * (bed_px or size)
        parts.append(
            Part(
                kind=str(rng.choice(["ellipse", "rect"])),
                cx=float(rng.uniform(0.2, 0.8) * size),
                cy=float(rng.uniform(0.2, 0.8) * size),
                rx=float(r * rng.uniform(0.7, 1.4)),
                ry=float(r * rng.uniform(0.7, 1.4)),
                angle=float(rng.uniform(0, np.pi)),
            )
        )
    return parts


def _unit_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return field_ / (field_.std() + 1e-6)


def blob(rng: np.random.Generator, size: int, cx: float, cy: float, radius: float, roughness: float = 0.35) -> np.ndarray:
    """An irregular blob: a disc whose boundary is perturbed by smooth noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(radius, 0.5)
    wobble = _unit_noise(rng, size, max(1.0, radius / 2.5)) * roughness
    return d + wobble < 1.0


@dataclass
class Placed:
    """A defect drawn where a scene wants it (`render_layer(placed=...)`), with the plain look a
    scene's reader expects (not the training ranges), in pixels: a blob of
    `radius` around (x, y) for super-elevation and incompleteness, a streak along +x from x at
    height y for streaking."""

    cls: int
    x: float
    y: float
    radius: float = 0.0


def _incompleteness(rng, image, mask, grain, mottle, cx, cy, radius):
    region = blob(rng, image.shape[0], cx, cy, radius, 0.3)
    level = rng.uniform(35, 62)
    uncovered = level + 0.25 * grain + 0.8 * mottle
    edge = ndimage.gaussian_filter(region.astype(np.float32), 1.0)
    mask[region] = INCOMPLETENESS
    return image * (1 - edge) + uncovered * edge


def _streak(rng, image, mask, xx, yy, s, yc, x0, width=None, depth=None):
    """One line dragged along +x from x0 at height yc. A particle dragged by the blade ploughs a
    groove (less powder: darker under light from above); a nick in the blade lets a ridge of extra
    powder through (brighter). Either can be shallow: seed 000 §4.1 calls streaking "a shallow
    stripe ... difficult to confirm its edges"."""
    size = image.shape[0]
    if width is None:
        width = max(1.0, rng.uniform(1.0, 3.0) * s)
    if depth is None:
        depth = rng.uniform(12, 45) * (1.0 if rng.random() < 0.7 else -0.8)
    wobble = ndimage.gaussian_filter1d(rng.standard_normal(size), 12 * s + 1) * 1.5 * s
    yline = yc + wobble[None, :]
    profile = np.exp(-((yy - yline) ** 2) / (2 * (width / 2 + 0.3) ** 2))
    ramp = np.clip((xx - x0) / (8 * s + 1), 0, 1)
    image = image - depth * profile * ramp
    # a faint bank beside the line, where the displaced powder piled up (or was taken from)
    ridge = np.exp(-((yy - yline - width * 1.3) ** 2) / (2 * (width / 2 + 0.3) ** 2))
    image = image + 0.35 * depth * ridge * ramp
    mask[(np.abs(yy - yline) <= width / 2 + 0.5) & (xx >= x0)] = STREAKING
    return image


def chatter_profile(x, x_start, pitch, width, strokes, decay, sawtooth):
    """Hopping's brightness change along the travel (x, px), per unit amplitude: `strokes` strokes
    `pitch` px apart from `x_start`, stroke k scaled by exp(-k / decay) (the blade's ringing dies
    away). A sawtooth stroke is a dip of -1 where the blade lands, recovering linearly to 0 over
    one pitch; otherwise strokes alternate +1 and -1 ripples of Gaussian profile `width` px wide."""
    ringing = np.zeros_like(x, dtype=np.float32)
    for k in range(strokes):
        xc = x_start + k * pitch
        if sawtooth:
            phase = (x - xc) / pitch
            stroke = np.where((phase >= 0) & (phase < 1), -(1.0 - phase), 0.0)
        else:
            stroke = (1.0 if k % 2 == 0 else -1.0) * np.exp(-((x - xc) ** 2) / (2 * (width / 2 + 0.3) ** 2))
        ringing += np.exp(-k / decay) * stroke
    return ringing


def _glare_level(rng, local):
    """Bare metal standing proud reflects the lamp: how much brighter than the powder around it
    depends on the facet's angle to the lamp and camera, from a sheen to saturation."""
    return np.minimum(255.0, local + rng.uniform(55, 140))


def _super_elevation(rng, image, mask, grain, x, y, radius, plain=False):
    """A spot of glare over _glare_level's range, or `plain`: 225-250 grey, a scene's clear spot."""
    region = blob(rng, image.shape[0], x, y, radius, 0.3)
    glare = ndimage.gaussian_filter(region.astype(np.float32), 0.7)
    mask[region] = SUPER_ELEVATION
    if plain:
        level = rng.uniform(225, 250)
    else:
        level = _glare_level(rng, float(np.median(image[region])) if region.any() else float(image.mean()))
    return image * (1 - glare) + level * glare + 4 * grain * glare


def _curled_edge(rng, image, mask, grain, to_contour, s, x, y):
    """Super-elevation along a stretch of a part's contour: thermal stress curls the edge up
    ("often occurs with the edge of the contour", seed 000 §4.1), highest mid-stretch and fading
    to the powder at both ends: a band 1-4 mm wide on the contour (`to_contour`: each pixel's
    distance to it), up to `length` px either side of (x, y)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    length = rng.uniform(6, 28) * s
    along = np.sqrt((xx - x) ** 2 + (yy - y) ** 2) / length
    band = (to_contour <= rng.uniform(0.5, 2.0) * s) & (along < 1.0)
    taper = np.clip(1.0 - along, 0.0, 1.0) ** 0.5
    glare = ndimage.gaussian_filter((band * taper).astype(np.float32), 0.7)
    mask[band & (taper > 0.25)] = SUPER_ELEVATION
    level = _glare_level(rng, float(np.median(image[band])))
    return image * (1 - glare) + level * glare + 4 * grain * glare


def _edge_specks(rng, image, mask, grain, xs, ys, s):
    """Dense dotted super-elevation (seed 000 §4.2): several small specks close together on one
    stretch of an edge, each a point of the contour standing proud."""
    i = int(rng.integers(0, len(xs)))
    near = np.nonzero((xs - xs[i]) ** 2 + (ys - ys[i]) ** 2 < (rng.uniform(6, 16) * s) ** 2)[0]
    for j in rng.choice(near, size=min(len(near), int(rng.integers(3, 9))), replace=False):
        image = _super_elevation(rng, image, mask, grain, float(xs[j]), float(ys[j]), rng.uniform(0.8, 2.0) * s + 0.6)
    return image


def render_layer(
    rng: np.random.Generator,
    size: int,
    plant: set[int] | list[int] | tuple[int, ...] = (),
    parts: list[Part] | None = None,
    placed: list[Placed] | tuple[Placed, ...] = (),
) -> Layer:
    """Render one layer with the classes in `plant` drawn on it (any subset of 1..5) where the
    generator picks, and the `placed` defects where the caller says (scenes of a build)."""
    s = size / 256.0
    plant = set(int(c) for c in plant)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # Powder: fine grain plus a slower mottling, around a grey level that varies from build to build.
    base = rng.uniform(105, 135)
    grain = _unit_noise(rng, size, 0.6) * rng.uniform(9, 14)
    mottle = _unit_noise(rng, size, 6 * s + 1) * rng.uniform(3, 7)
    image = base + grain + mottle

    # Part cross-sections: brighter and smoother (melted metal), with a faint diagonal hatch.
    if parts is None:
        parts = random_parts(rng, size, int(rng.integers(0, 4)))
    if SUPER_ELEVATION in plant and not parts:
        parts = random_parts(rng, size, 1)
    part_union = np.zeros((size, size), dtype=bool)
    hatch_angle = rng.choice([np.pi / 4, -np.pi / 4])
    hatch = np.sin((xx * np.cos(hatch_angle) + yy * np.sin(hatch_angle)) * (2 * np.pi / max(3.0, 4 * s)))
    for part in parts:
        region = part.mask(size)
        part_union |= region
        level = base + rng.uniform(28, 45)
        smooth = level + 0.3 * grain + 0.5 * mottle + 3.0 * hatch
        image = np.where(region, smooth, image)
    soft = ndimage.gaussian_filter(part_union.astype(np.float32), 0.8)
    mask = np.zeros((size, size), dtype=np.uint8)

    # Incompleteness: a large dark area the powder did not cover; the previous, smoother melted
    # layer shows through. Most often at the end of the recoater's travel (+x side).
    if INCOMPLETENESS in plant:
        for _ in range(int(rng.integers(1, 3))):
            radius = rng.uniform(0.12, 0.24) * size
            cx = rng.uniform(0.45, 1.0) * size if rng.random() < 0.6 else rng.uniform(0.1, 0.9) * size
            cy = rng.uniform(0.15, 0.85) * size
            image = _incompleteness(rng, image, mask, grain, mottle, cx, cy, radius)

    # Lattice: the tops of a support lattice's struts, dots on a square or staggered grid in a
    # rectangular patch, the grid turned as the part is turned on the plate. Pitch 2.5-8 mm (fine
    # block supports to open lattices; at 256 px the pitch stays at least 3 px).
    if LATTICE in plant:
        for _ in range(int(rng.integers(1, 3))):
            w = rng.uniform(0.12, 0.3) * size
            h = rng.uniform(0.12, 0.3) * size
            x0 = rng.uniform(0.02, 0.98) * size - w / 2
            y0 = rng.uniform(0.02, 0.98) * size - h / 2
            region = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            pitch = max(3.0, rng.uniform(2.5, 8.0) * s)
            dot_r = max(0.7, rng.uniform(0.15, 0.3) * pitch)
            turn = rng.uniform(0, np.pi / 2)
            u = (xx - x0) * np.cos(turn) + (yy - y0) * np.sin(turn)
            v = -(xx - x0) * np.sin(turn) + (yy - y0) * np.cos(turn)
            if rng.random() < 0.5:  # staggered: every other row shifted by half a pitch
                u = u + (np.floor(v / pitch) % 2) * pitch / 2
            phase = rng.uniform(0, pitch, size=2)
            du = ((u + phase[0]) % pitch) - pitch / 2
            dv = ((v + phase[1]) % pitch) - pitch / 2
            dots = np.exp(-(du**2 + dv**2) / (2 * dot_r**2))
            if rng.random() < 0.5:  # a strut top has a hard rim at the camera's resolution
                dots = ndimage.gaussian_filter((du**2 + dv**2 <= (1.4 * dot_r) ** 2).astype(np.float32), 0.6)
            patch = image - rng.uniform(5, 15) + rng.uniform(30, 65) * dots
            image = np.where(region, patch, image)
            mask[region] = LATTICE

    # Hopping: the recoater struck a protrusion and chatters; stripes across its travel (vertical
    # lines, constant x). The pitch is the blade's speed over the frequency it rings at (a blade at
    # 100-200 mm/s ringing at 18-40 Hz: 2.5-11 mm), and the ringing dies away along x; each stroke
    # is either a symmetric ripple or a sharp dip where the blade lands and a slow recovery behind it.
    if HOPPING in plant:
        for _ in range(int(rng.integers(1, 3))):
            n_stripes = int(rng.integers(3, 12))
            pitch = max(3.0, rng.uniform(2.5, 11) * s)
            width = max(1.0, rng.uniform(0.25, 0.45) * pitch)
            decay = rng.uniform(2.0, 12.0)  # strokes over which the ringing falls to 1/e
            x_start = rng.uniform(0.05, 0.95) * size - n_stripes * pitch / 2
            y0 = rng.uniform(0.0, 0.4) * size
            y1 = min(size, y0 + rng.uniform(0.4, 1.0) * size)
            amplitude = rng.uniform(20, 42)
            sawtooth = rng.random() < 0.5
            # the label covers the band of stripes, as a person would outline it
            x_end = x_start + (n_stripes if sawtooth else n_stripes - 1) * pitch + width
            band = (xx >= x_start - width) & (xx <= x_end) & (yy >= y0) & (yy < y1)
            mask[band] = HOPPING
            inside = (yy >= y0) & (yy < y1)
            taper = np.clip(np.minimum(yy - y0, y1 - yy) / (6 * s + 1), 0, 1)
            ringing = chatter_profile(xx[0], x_start, pitch, width, n_stripes, decay, sawtooth)
            image = image + amplitude * ringing[None, :] * taper * inside

    # Streaking: thin lines parallel to the recoater travel (horizontal), dragged by a damaged
    # blade or a particle from where it caught to the end of the travel (+x edge); a blade nicked
    # in several places leaves a few lines close together.
    if STREAKING in plant:
        for _ in range(int(rng.integers(1, 4))):
            yc = rng.uniform(0.05, 0.95) * size
            x0 = rng.uniform(0.0, 0.6) * size
            for k in range(int(rng.integers(2, 4)) if rng.random() < 0.25 else 1):
                image = _streak(rng, image, mask, xx, yy, s, yc + k * rng.uniform(3, 8) * s, x0)

    # Super-elevation: the melted layer stands proud of the powder at a part's edge and reflects
    # the light: a spot, a curled stretch of the contour, or a cluster of specks along it.
    if SUPER_ELEVATION in plant and parts:
        edge_band = (soft > 0.1) & (soft < 0.9)
        ys, xs = np.nonzero(edge_band)
        to_contour = ndimage.distance_transform_edt(~edge_band)
        for _ in range(int(rng.integers(1, 4))):
            if len(xs) == 0:
                break
            i = int(rng.integers(0, len(xs)))
            form = rng.random()
            if form < 0.4:
                radius = rng.uniform(3.0, 7.0) * s + 1
                image = _super_elevation(rng, image, mask, grain, float(xs[i]), float(ys[i]), radius)
            elif form < 0.8:
                image = _curled_edge(rng, image, mask, grain, to_contour, s, float(xs[i]), float(ys[i]))
            else:
                image = _edge_specks(rng, image, mask, grain, xs, ys, s)

    # Spatter: a few single particles thrown out of the melt pool, bright or dark, a pixel or two
    # at 1024 px; on every real bed, and no defect. A scene (placed defects) draws only what it
    # places, so that its layers stay the ones its tests were written against.
    for _ in range(0 if placed else int(rng.integers(0, 12))):
        px, py = rng.uniform(0, size, size=2)
        speck = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * max(0.5, rng.uniform(0.2, 0.5) * s) ** 2))
        image = image + rng.choice([-1.0, 1.0]) * rng.uniform(30, 80) * speck

    for defect in placed:
        if defect.cls == INCOMPLETENESS:
            image = _incompleteness(rng, image, mask, grain, mottle, defect.x, defect.y, defect.radius)
        elif defect.cls == STREAKING:
            # a scene's streak is a plain, clear groove
            width, depth = max(1.0, rng.uniform(1.5, 2.8) * s), rng.uniform(30, 45)
            image = _streak(rng, image, mask, xx, yy, s, defect.y, defect.x, width, depth)
        elif defect.cls == SUPER_ELEVATION:
            image = _super_elevation(rng, image, mask, grain, defect.x, defect.y, defect.radius, plain=True)
        else:
            raise ValueError(f"placed defects are super-elevation, incompleteness or streaking, not class {defect.cls}")

    # Uneven lighting: a tilted plane and a vignette, up to about +-15 % (darker corners than that
    # would make bare powder as dark as an uncovered area; a real installation corrects its
    # lighting, or flat-fields the camera, well before that).
    cx, cy = rng.uniform(0.3, 0.7, size=2) * size
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (size**2)
    light = 1.0 + rng.uniform(-0.15, 0.15) * (xx / size - 0.5) + rng.uniform(-0.15, 0.15) * (yy / size - 0.5)
    light = light - rng.uniform(0.0, 0.2) * r2
    image = image * light + rng.normal(0, 2.0, size=(size, size))

    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)
    planted = sorted(int(c) for c in np.unique(mask) if c != BACKGROUND)
    return Layer(image=image_u8, mask=mask, planted=planted)


def random_plan(rng: np.random.Generator, p_defect: float = 0.45, p_clean: float = 0.15) -> set[int]:
    """Which classes a training layer gets: each with probability `p_defect`, a few clean layers."""
    if rng.random() < p_clean:
        return set()
    return {c for c in DEFECT_CLASSES if rng.random() < p_defect}


def dataset_toml(size: int, seed: int, layers: int, name: str = "synthetic") -> str:
    doc = synthetic_dataset_doc(size, seed, layers, name, "bedsight-train synth")
    return (
        "# A labelled powder-bed dataset: images/*.png (8-bit grey) and masks/*.png (class index per\n"
        "# pixel, same file name). The recoater travels along recoater_direction in image coordinates.\n"
        + toml_dumps(doc)
    )


def write_dataset(out: Path, layers: int, size: int, seed: int, progress: bool = True) -> list[list[int]]:
    """Write `layers` random synthetic layers to out/images, out/masks and out/dataset.toml.
    Returns the planted classes per layer."""
    from tqdm import tqdm

    if layers < 1:
        raise ValueError("--layers must be at least 1")
    if size < 32:
        raise ValueError("--size must be at least 32 pixels")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    planted_all: list[list[int]] = []
    width = max(4, len(str(layers)))
    for i in tqdm(range(layers), desc="synth", unit="layer", disable=not progress):
        layer = render_layer(rng, size, random_plan(rng))
        stem = f"layer-{i + 1:0{width}d}"
        save_png_grey(out / "images" / f"{stem}.png", layer.image)
        save_png_grey(out / "masks" / f"{stem}.png", layer.mask)
        planted_all.append(layer.planted)
    (out / "dataset.toml").write_text(dataset_toml(size, seed, layers))
    return planted_all


# The demo's sample build: a clean first layer, then layers that each plant defect classes, with
# clean layers in between. The parts stay where they are from layer to layer, as in a real build.
SAMPLE_BUILD_PLAN: tuple[tuple[int, ...], ...] = (
    (),
    (SUPER_ELEVATION,),
    (),
    (INCOMPLETENESS,),
    (HOPPING,),
    (),
    (STREAKING,),
    (LATTICE,),
    (),
    (SUPER_ELEVATION, STREAKING),
    (HOPPING, LATTICE),
    (),
)


def write_sample_build(out: Path, size: int = 256, seed: int = 2026) -> list[list[int]]:
    """The layers `bedsight demo` replays: out/layer-NNNN.png, out/masks/layer-NNNN.png, a ledger
    out/layers.toml and a README.md."""
    rng = np.random.default_rng(seed)
    parts = random_parts(rng, size, 3)
    out.mkdir(parents=True, exist_ok=True)
    ledger = []
    planted_all = []
    for i, plan in enumerate(SAMPLE_BUILD_PLAN):
        layer = render_layer(rng, size, plan, parts=parts)
        name = f"layer-{i + 1:04d}.png"
        save_png_grey(out / name, layer.image)
        save_png_grey(out / "masks" / name, layer.mask)
        counts = np.bincount(layer.mask.ravel(), minlength=len(DEFAULT_CLASSES))
        ledger.append(
            {
                "file": name,
                "planted": [DEFAULT_CLASSES[c].name for c in layer.planted],
                "planted_index": [int(c) for c in layer.planted],
                "pixels": [int(counts[c]) for c in layer.planted],
                "clean": not layer.planted,
            }
        )
        planted_all.append(layer.planted)
    doc = {
        "generator": "bedsight-train synth (sample build)",
        "seed": seed,
        "size": size,
        "recoater_direction": RECOATER_DIRECTION,
        "mm_per_px": SYNTH_BED_WIDTH_MM / size,
        "layers": ledger,
    }
    (out / "layers.toml").write_text(
        "# Ledger of the sample build: which classes are planted in which layer (masks/ holds the truth).\n"
        + toml_dumps(doc)
    )
    rows = "\n".join(
        f"| {row['file']} | {', '.join(row['planted']) if row['planted'] else 'clean'} |" for row in ledger
    )
    (out / "README.md").write_text(
        "# Sample build\n\n"
        f"{len(ledger)} synthetic layers ({size}x{size}, 8-bit grey, {SYNTH_BED_WIDTH_MM / size:.4f} mm per pixel, "
        "recoater travelling along +x) that `bedsight demo` replays. Made by "
        "`quantize/scripts/build-default-model.sh` with `bedsight_train.synth.write_sample_build`; "
        "the ground truth is in `masks/` (class index per pixel) and `layers.toml`.\n\n"
        "| layer | planted |\n|---|---|\n" + rows + "\n"
    )
    return planted_all
