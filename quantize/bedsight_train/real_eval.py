"""Real-data figures of a model image as the box judges: the `bedsight` binary's verdicts and
masks on real powder-bed photographs (the PBLM layer folders and the hand-labelled set in
quantize/real-eval/).

    python -m bedsight_train.real_eval --model M.bsimg [--config C.toml] [--bin PATH] \\
        --layers /work/shared/data/pblm --labels quantize/real-eval/labels.json --split test --out DIR

What it measures (OUT/real-eval.json, and the same for a person in OUT/real-eval.md):
- per label folder: verdict counts (PASS, RECOAT, REVIEW, PAUSE, FAULT), the share not PASS, the
  mean flagged share of the bed (pixels of a defect class in the box's mask / all pixels; which
  classes are defects is the model image's manifest), and how often each defect class is among
  the defects the box reports;
- clean layers (label folders the label map gives no class): the false-alarm rate (share not
  PASS) and the mean flagged share;
- layer classification: a layer "has" a class when the box reports at least one defect of it
  and its verdict is not PASS; per class precision, recall and F1 against the label map's classes
  of the layer's folder, and their macro mean (FAULT layers were not judged and are left out);
- on the hand-labelled layers (labels.json, polygons drawn on the original photographs): the
  share of flagged pixels inside the labelled regions of any class, and inside a region of the
  same class; per region, whether at least N flagged pixels (N = the configuration's [model]
  min_defect_area_mm2 in pixels of the model's mask) fall inside it, of any defect class and of
  its own;
  the flagged share of the hand-labelled clean layers;
- one overlay PNG per hand-labelled layer in OUT/overlays/ (the turned photograph, the box's
  flagged pixels tinted in their class colour, the labelled polygons outlined).
The folder, clean and classification figures are over the chosen split (`layers.held_out_split`,
the tail of every folder); the hand-labelled figures are over the hand-labelled layers, whichever
split they are in (each layer record says which).

Why through the binary: the box's figure is what matters, and the box is not the Python model.
It resizes the frame itself, runs the graph the box runs (`[model] precision = "auto"`: fp32 on
these CPUs, INT8 on TensorRT), fuses the members, refines, drops
components below min_defect_area_mm2, applies the configured rules, the uncertainty gate and the
layer-head call. A figure computed by Python inference would miss any of those, and any drift
between the two implementations. So the photographs are written out as the camera would deliver
a rectified bed (grey, turned so the recoater travels left to right) and judged by
`bedsight analyze --json --out`; the figures are read back from its JSON lines and its masks.

How the layers are prepared: each photograph is turned by the label map's quarter turns (PBLM:
one quarter counter-clockwise) and written as a grey PNG at its own resolution, except that a
photograph whose long side exceeds 1024 px (PBLM's Plateform_Powder_Uneven layers, 3772x3302) is
resized to a long side of 1024 px, keeping its aspect ratio (layers.load_photograph, as training
reads them). A folder whose camera the label map describes ([cameras.*]) is judged as that
camera's integrator would set the box up: a copy of the configuration with [bed] corners_px from
the camera's bed corners, and, when the camera has a clean reference folder, [bed] flat_field
written by `bedsight calibrate --flat-field` from its first training-split layer; the report
lists every camera and what was set. A folder in no camera is taken as the bed: the box refuses
(FAULT) a frame whose aspect differs from the configured bed's by more than 2 %, so such a layer
is judged with a copy of the configuration whose bed is given the frame's aspect (the longer side
keeps the configured millimetres).

What the figures cannot show:
- PBLM has image-level labels only, and the label map's classes are what the folder name means,
  not what every layer shows (see quantize/real-eval/README.md: the Plateform layers carry
  streaks, Powder_Uneven_With_Scratch shows no visible incompleteness). Layer-classification
  figures inherit those label errors.
- The hand-labelled regions were drawn by eye by one person; "inside a region" is a figure of
  agreement with that person, not a pixel-exact truth. Regions are rasterised at the mask's size
  (the model's input, e.g. 256x256); a region smaller than N pixels there cannot count as
  detected, and the report says how many such regions there are.
- The samples are small: 4 clean layers in the test split, 34 hand-labelled layers. Rates come
  with a 95 % Wilson interval; read them as coarse.
- The bed corners were read off the mean of each camera's photographs by eye, and the flat field
  of the 1024 camera comes from one clean layer of a build; the Plateform camera has no clean
  layer, so its lighting is not corrected. A camera that moved within a folder would shift the bed.
- No RECOAT outcome, track or defect-map rule is exercised: every layer is judged on its own,
  as a fresh `bedsight analyze` judges it. `--as-build` adds them: each folder's layers of the
  split replayed as a build through `bedsight run` (build_replay.py), where the photograph after
  a RECOAT stands in for the re-spread bed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import build_replay
from .common import BadInput, config_with_keys, read_toml
from .flat_field import MIN_MEDIAN_FRAMES
from .layers import CAMERA_LONG_SIDE, bed_corners_px, bed_square, flat_field_references, held_out_split, homography, load_label_map, load_photograph, map_points, rectify, scan_layer_folders
from .metrics import auroc

VERDICTS = build_replay.VERDICTS
# A photograph whose long side is above this is resized to it (keeping the aspect ratio), as the
# training tool's loader does (layers.CAMERA_LONG_SIDE).
MAX_SIDE = CAMERA_LONG_SIDE
# Images per `bedsight analyze` process (bounds the process's memory and the loss to one crash).
BATCH = 50
# The box refuses a frame whose aspect differs from the bed's by more than this
# (appliance/src/judge/pipeline.rs, check_frame).
ASPECT_TOLERANCE = 0.02
DEFAULT_MIN_AREA_MM2 = 5.0  # the box's default (appliance/src/config/model.rs)
LABELS_FORMAT = "bedsight-real-eval 1"
OVERLAY_WIDTH = 512
# The overlays stretch the grey levels of at least this range to 0..255.
OVERLAY_MIN_RANGE = 128
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Pure geometry and metric functions (numpy in, numbers out): what the tests check by hand.


def min_area_px(area_mm2: float, bed_mm: tuple[float, float], mask_size: tuple[int, int]) -> int:
    """The box's smallest component in mask pixels (ModelConfig::min_defect_area_px in
    appliance/src/config/model.rs): the least whole number of pixels covering `area_mm2` of
    the bed."""
    pixel_mm2 = (bed_mm[0] / mask_size[0]) * (bed_mm[1] / mask_size[1])
    return max(0, math.ceil(area_mm2 / pixel_mm2 - 1e-9))


def turn_points(points: Sequence[Sequence[float]], width: int, height: int, quarter_turns: int) -> np.ndarray:
    """Points (x, y) of a `width` x `height` image, in the image turned by np.rot90(img, k)
    (counter-clockwise quarter turns). Pixel coordinates: x to the right, y down, a pixel's
    index is its centre. k=1: (x, y) -> (y, W-1-x); k=2: (W-1-x, H-1-y); k=3: (H-1-y, x)."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    k = quarter_turns % 4
    if k == 0:
        out = (x, y)
    elif k == 1:
        out = (y, width - 1 - x)
    elif k == 2:
        out = (width - 1 - x, height - 1 - y)
    else:
        out = (height - 1 - y, x)
    return np.stack(out, axis=1)


def turned_size(width: int, height: int, quarter_turns: int) -> tuple[int, int]:
    """(width, height) of a width x height image after `quarter_turns` quarter turns."""
    return (height, width) if quarter_turns % 2 else (width, height)


def scale_points(points: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Points of an image of src_size (w, h) in the same image resized to dst_size, pixel centres
    kept aligned (the centre of pixel i covers (i + 0.5) * src / dst - 0.5)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    sx = dst_size[0] / src_size[0]
    sy = dst_size[1] / src_size[1]
    return np.stack([(p[:, 0] + 0.5) * sx - 0.5, (p[:, 1] + 0.5) * sy - 0.5], axis=1)


def rasterise_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool [height, width]: the pixels whose centre (x, y) = (column, row) lies inside the closed
    polygon (even-odd rule; a centre exactly on a left or top edge is inside, on a right or
    bottom edge outside)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros((height, width), dtype=bool)
    if len(p) < 3 or width <= 0 or height <= 0:
        return inside
    ys = np.arange(height, dtype=np.float64)[:, None]
    xs = np.arange(width, dtype=np.float64)[None, :]
    x0, y0 = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        # the edge spans rows with ay <= y < by (or by <= y < ay): half-open, so a vertex is
        # counted once
        lo, hi = (ay, by) if ay < by else (by, ay)
        rows = (ys >= lo) & (ys < hi)  # [H, 1]
        if not rows.any():
            continue
        x_cross = ax + (ys - ay) * (bx - ax) / (by - ay)  # [H, 1]
        # a ray from the centre to the right crosses this edge
        inside ^= rows & (xs < x_cross)
    return inside


def flagged_map(mask: np.ndarray, defect_ids: Iterable[int]) -> np.ndarray:
    """bool map of the pixels whose class is a defect class."""
    return np.isin(mask, np.asarray(list(defect_ids), dtype=mask.dtype))


def flagged_share(mask: np.ndarray, defect_ids: Iterable[int]) -> float:
    """Pixels of a defect class / all pixels."""
    return float(flagged_map(mask, defect_ids).mean()) if mask.size else 0.0


@dataclass
class Region:
    cls: str  # the region's class name (a class of the model's mask, by name)
    inside: np.ndarray  # bool [H, W] at the mask's size


def inside_counts(mask: np.ndarray, class_names: Sequence[str], defect_ids: Sequence[int], regions: Sequence[Region]) -> dict[str, Any]:
    """Flagged pixels of one layer, all and per flagged class: how many, how many inside a region
    of any class, how many inside a region of their own class (by name)."""
    flagged = flagged_map(mask, defect_ids)
    any_region = np.zeros(mask.shape, dtype=bool)
    per_class_region: dict[str, np.ndarray] = {}
    for region in regions:
        any_region |= region.inside
        per_class_region.setdefault(region.cls, np.zeros(mask.shape, dtype=bool))
        per_class_region[region.cls] |= region.inside
    same = np.zeros(mask.shape, dtype=bool)
    per_class: dict[str, dict[str, int]] = {}
    for c in defect_ids:
        name = class_names[c]
        of_class = mask == c
        own = per_class_region.get(name)
        own_inside = of_class & own if own is not None else np.zeros(mask.shape, dtype=bool)
        same |= own_inside
        per_class[name] = {
            "flagged": int(of_class.sum()),
            "inside_any": int((of_class & any_region).sum()),
            "inside_same": int(own_inside.sum()),
        }
    return {
        "flagged": int(flagged.sum()),
        "inside_any": int((flagged & any_region).sum()),
        "inside_same": int(same.sum()),
        "labelled_pixels": int(any_region.sum()),
        "per_class": per_class,
    }


def region_detection(mask: np.ndarray, class_names: Sequence[str], defect_ids: Sequence[int], region: Region, min_pixels: int) -> dict[str, Any]:
    """Whether the box found a region: at least `min_pixels` flagged pixels inside it (of any
    defect class; and, separately, of the region's own class)."""
    inside = region.inside
    flagged_inside = int((flagged_map(mask, defect_ids) & inside).sum())
    own_ids = [c for c in defect_ids if class_names[c] == region.cls]
    own_inside = int((np.isin(mask, own_ids) & inside).sum()) if own_ids else 0
    return {
        "class": region.cls,
        "area_px": int(inside.sum()),
        "flagged_inside": flagged_inside,
        "own_class_inside": own_inside,
        "detected_any": flagged_inside >= min_pixels,
        "detected_same": own_inside >= min_pixels,
        "below_min_area": int(inside.sum()) < min_pixels,
    }


def chance_inside_share(flagged: Sequence[int], labelled_share: Sequence[float]) -> float | None:
    """The share of flagged pixels that would fall inside the labelled regions if each layer's
    flagged pixels were put at random places of its bed: the flagged-pixel-weighted mean of the
    layers' labelled shares. The inside share means something only above this."""
    total = float(np.sum(flagged))
    return float(np.dot(flagged, labelled_share)) / total if total else None


def classification_metrics(truth: Sequence[Iterable[str]], predicted: Sequence[Iterable[str]], classes: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and counts of layer-level class sets, and the macro F1:
    multitask.multilabel_metrics on the sets as 0/1 rows (a zero denominator gives 0.0)."""
    from .multitask import multilabel_metrics

    truth, predicted = list(truth), list(predicted)
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    rows = lambda sets: np.array([[name in set(s) for name in classes] for s in sets], dtype=np.float32).reshape(len(sets), len(classes))
    metrics = multilabel_metrics(rows(predicted), rows(truth), list(classes))
    del metrics["threshold"]
    return metrics


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of a proportion, [low, high]; None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


# ---------------------------------------------------------------------------------------------
# The model image, the configuration and the binary.


def read_model_manifest(model: Path) -> dict[str, Any]:
    """The manifest of a model image (.bsimg: a tar with manifest.toml), read without unpacking
    the graphs."""
    model = Path(model)
    if not model.is_file():
        raise BadInput(f"{model}: model image not found")
    try:
        with tarfile.open(model, "r") as tar:
            try:
                member = tar.getmember("manifest.toml")
            except KeyError:
                raise BadInput(f"{model}: model image has no manifest.toml") from None
            f = tar.extractfile(member)
            if f is None:
                raise BadInput(f"{model}: manifest.toml is not a file")
            manifest = tomllib.loads(f.read().decode("utf-8"))
    except (tarfile.TarError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"{model}: not a readable model image ({e})") from None
    classes = manifest.get("classes")
    inp = manifest.get("input", {})
    if not (isinstance(classes, list) and classes and all("name" in c and "defect" in c for c in classes)):
        raise BadInput(f"{model}: manifest has no [[classes]] with name and defect")
    if not (isinstance(inp.get("width"), int) and isinstance(inp.get("height"), int)):
        raise BadInput(f"{model}: manifest has no [input] width/height")
    return manifest


def find_binary(explicit: Path | None = None) -> Path | None:
    """The `bedsight` binary: `explicit`, else what `bedsight-train pack` uses ($BEDSIGHT_BIN, PATH,
    the newest target/*/bedsight). None when there is none."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise BadInput(f"--bin {explicit}: no such file")
        return Path(explicit)
    from .pack import find_bedsight_bin

    return find_bedsight_bin()


def default_config_path() -> Path | None:
    """The repository's copy of the configuration embedded in the binary."""
    path = REPO / "assets" / "bedsight.toml"
    return path if path.is_file() else None


def config_with_bed_aspect(text: str, frame_size: tuple[int, int]) -> tuple[str, tuple[float, float]]:
    """Configuration text whose [bed] width_mm/height_mm have the frame's aspect (the longer side
    keeps the configured millimetres); everything else, comments included, unchanged."""
    doc = tomllib.loads(text)
    bed = doc.get("bed", {})
    w_mm, h_mm = float(bed.get("width_mm", 0)), float(bed.get("height_mm", 0))
    if w_mm <= 0 or h_mm <= 0:
        raise BadInput("configuration: [bed] width_mm and height_mm are needed to fit the bed to the frame")
    fw, fh = frame_size
    long_mm = max(w_mm, h_mm)
    new = (long_mm, long_mm * fh / fw) if fw >= fh else (long_mm * fw / fh, long_mm)
    text = config_with_keys(text, "bed", {"width_mm": new[0], "height_mm": new[1]})
    return text, new


def photo_to_bed(corners_px: np.ndarray, bed_size: tuple[int, int]) -> np.ndarray:
    """The homography from a turned photograph to the rectified bed of bed_size (w, h) pixels,
    as the box's [bed] corners_px rectifies (pixel-centre coordinates on both sides)."""
    return homography(corners_px, bed_square(*bed_size))


def aspect_matches(frame_size: tuple[int, int], bed_mm: tuple[float, float]) -> bool:
    """Whether the box takes a frame of this size as the bed (its check_frame rule)."""
    frame_aspect = frame_size[0] / frame_size[1]
    bed_aspect = bed_mm[0] / bed_mm[1]
    return abs(frame_aspect / bed_aspect - 1.0) <= ASPECT_TOLERANCE


# ---------------------------------------------------------------------------------------------
# The layers.


@dataclass
class Layer:
    name: str  # "Label/file name" as in the layer folders
    label: str
    source: Path
    split: str
    hand: dict[str, Any] | None = None  # the labels.json entry, for a hand-labelled layer
    png: Path | None = None
    png_size: tuple[int, int] = (0, 0)  # (w, h) of the turned PNG
    turned_size: tuple[int, int] = (0, 0)  # (w, h) of the turned original
    resized: bool = False
    group: str = ""  # the analysis group (label, + "@WxH" for a fitted bed)
    result: dict[str, Any] | None = None  # the box's JSON line
    mask: np.ndarray | None = None
    corners_px: np.ndarray | None = None  # the camera's bed corners in the PNG (label map), if any
    flat_field: Path | None = None  # the camera's flat-field reference (bedsight calibrate), if any
    extra: dict[str, Any] = field(default_factory=dict)


def load_labels(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: labels file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not a readable labels file ({e})") from None
    if doc.get("format") != LABELS_FORMAT or not isinstance(doc.get("layers"), list):
        raise BadInput(f"{path}: expected format {LABELS_FORMAT!r} with a `layers` list (see quantize/real-eval/README.md)")
    return doc


def in_judged_split(layer_split: str, split: str) -> bool:
    """Whether a layer of `layer_split` (train, val or test) is among the judged `split`, which
    may be `all` (every layer: a camera the model never learnt from, commission's view)."""
    return split == "all" or layer_split == split


def pick_layers(layers_root: Path, label_map, split: str, labels: dict[str, Any] | None) -> list[Layer]:
    """The layers of `split` in every label folder, plus every hand-labelled layer."""
    found = scan_layer_folders(layers_root, label_map)
    names = [f"{label}/{path.name}" for label, path in found]
    splits = held_out_split(names)
    splits_and_all = {**splits, "all": list(range(len(names)))}
    if split not in splits_and_all:
        raise BadInput(f"--split {split!r}: expected one of {', '.join(splits_and_all)}")
    which = {}
    for s, indices in splits.items():
        for i in indices:
            which[i] = s
    hand = {}
    for entry in (labels or {}).get("layers", []):
        hand[entry["image"]] = entry
    index_of = {n: i for i, n in enumerate(names)}
    missing = [n for n in hand if n not in index_of]
    if missing:
        raise BadInput(f"{layers_root}: the hand-labelled layer(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} are not in the layer folders")
    chosen = sorted(set(splits_and_all[split]) | {index_of[n] for n in hand})
    return [Layer(name=names[i], label=found[i][0], source=found[i][1], split=which[i], hand=hand.get(names[i])) for i in chosen]


def _safe_stem(name: str) -> str:
    stem = Path(name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def write_turned_png(layer: Layer, folder: Path, quarter_turns: int) -> None:
    """The layer as a turned grey PNG, as the training tool's loader reads it
    (layers.load_photograph: its own size, a long side above MAX_SIDE resized to it, aspect kept).
    An existing PNG newer than the photograph is kept."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{_safe_stem(layer.source.name)}.png"
    with Image.open(layer.source) as im:
        w, h = im.size
    layer.turned_size = turned_size(w, h, quarter_turns)
    scale = min(1.0, MAX_SIDE / max(w, h))
    target = (round(w * scale), round(h * scale)) if scale < 1.0 else (w, h)
    layer.resized = scale < 1.0
    layer.png_size = turned_size(target[0], target[1], quarter_turns)
    if out.is_file() and out.stat().st_mtime >= layer.source.stat().st_mtime:
        with Image.open(out) as done:
            if done.size == layer.png_size:
                layer.png = out
                return
    turned = load_photograph(layer.source, quarter_turns)
    if (turned.shape[1], turned.shape[0]) != layer.png_size:
        raise BadInput(f"{layer.source}: read as {turned.shape[1]}x{turned.shape[0]} px, expected {layer.png_size[0]}x{layer.png_size[1]}")
    tmp = out.with_suffix(".tmp.png")
    Image.fromarray(turned).save(tmp, compress_level=1)
    tmp.replace(out)
    layer.png = out


# ---------------------------------------------------------------------------------------------
# Running the box.


def run_box(binary: Path, model: Path, config: Path | None, images: list[Path], out_dir: Path, extra_env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """`bedsight analyze --json --out out_dir` over `images`: {image path as given: JSON object}.
    Exit status 1 only says some layer was FAULT or unreadable; an image without a JSON line, or
    any other status, is an error with the binary's message."""
    cmd = [str(binary), "analyze", "--json", "--out", str(out_dir), "--model", str(model)]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += [str(p) for p in images]
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", "2")
    env.update(extra_env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    results: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "image" in obj:
            results[obj["image"]] = obj
    lacking = [str(p) for p in images if str(p) not in results]
    if proc.returncode not in (0, 1) or lacking:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise BadInput(
            f"{binary} analyze exited with status {proc.returncode} and gave no verdict for {len(lacking)} of {len(images)} image(s)"
            + (f" (e.g. {lacking[0]})" if lacking else "")
            + (": " + " | ".join(tail) if tail else "")
        )
    return results


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L") if im.mode not in ("L", "P") else im, dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------------
# The whole evaluation.


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def region_points(layer: Layer, polygon: Sequence[Sequence[float]], size: tuple[int, int], quarter_turns: int) -> np.ndarray:
    """A polygon drawn on the original photograph, in pixel-centre coordinates of the bed the box
    judged, drawn at `size` (w, h): turned, scaled to the PNG the box read, and through the
    camera's bed corners when it has them (else the PNG is the bed, resized)."""
    entry = layer.hand or {}
    w, h = int(entry.get("width", 0)), int(entry.get("height", 0))
    pts = scale_points(turn_points(polygon, w, h, quarter_turns), turned_size(w, h, quarter_turns), layer.png_size)
    if layer.corners_px is None:
        return scale_points(pts, layer.png_size, size)
    return map_points(photo_to_bed(layer.corners_px, size), pts)


def _hand_regions(layer: Layer, mask_size: tuple[int, int], quarter_turns: int) -> list[Region]:
    regions = []
    for region in (layer.hand or {}).get("regions", []):
        pts = region_points(layer, region["polygon"], mask_size, quarter_turns)
        regions.append(Region(cls=region["class"], inside=rasterise_polygon(pts, mask_size[0], mask_size[1])))
    return regions


def _share(n: int, d: int) -> float | None:
    return n / d if d else None


def evaluate_real(
    model: Path,
    layers: Path,
    labels: Path | None,
    out: Path,
    split: str = "test",
    config: Path | None = None,
    bedsight_bin: Path | None = None,
    label_map: str | Path = "pblm",
    progress: bool = True,
    work: Path | None = None,
    batch: int = BATCH,
    flat_field: bool = True,
    as_build: bool = False,
) -> dict[str, Any]:
    """Judge the `split` layers of `layers` and the hand-labelled layers of `labels` with the
    `bedsight` binary, write OUT/real-eval.json, OUT/real-eval.md and OUT/overlays/, and return
    the report (the JSON's content). `work` (default OUT/work) keeps the turned PNGs and the
    box's masks; a rerun reuses the PNGs. `flat_field=False` judges without the cameras' flat
    fields (the corners stay). `as_build=True` also replays each folder's layers of the split as
    a build through `bedsight run` (build_replay.py: the recoat budget and the tracks act)."""
    started = time.time()
    model = Path(model)
    out = Path(out)
    binary = find_binary(bedsight_bin)
    if binary is None:
        raise BadInput("no bedsight binary: pass --bin, set BEDSIGHT_BIN, or build it (cargo build --release --bin bedsight)")
    manifest = read_model_manifest(model)
    class_names = [c["name"] for c in manifest["classes"]]
    defect_ids = [i for i, c in enumerate(manifest["classes"]) if c["defect"]]
    colours = {c["name"]: c.get("colour", "#ffffff") for c in manifest["classes"]}
    mask_size = (int(manifest["input"]["width"]), int(manifest["input"]["height"]))
    config_text_path = Path(config) if config is not None else default_config_path()
    config_doc = read_toml(config_text_path) if config_text_path is not None else {}
    bed = config_doc.get("bed", {"width_mm": 250.0, "height_mm": 250.0})
    bed_mm = (float(bed.get("width_mm", 250.0)), float(bed.get("height_mm", 250.0)))
    min_area = min_area_px(float(config_doc.get("model", {}).get("min_defect_area_mm2", DEFAULT_MIN_AREA_MM2)), bed_mm, mask_size)
    notes: list[str] = []
    if bed.get("corners_px") is not None:
        notes.append("the configuration sets bed.corners_px: the box rectifies every photograph with those corners, which belong to another camera")
    lmap = load_label_map(Path(label_map))
    k = lmap.quarter_turns
    labels_doc = load_labels(labels) if labels is not None else None
    if labels_doc is not None and set(labels_doc.get("classes", [])) - set(class_names):
        notes.append(f"labels classes not in the model: {sorted(set(labels_doc['classes']) - set(class_names))} (never counted as same-class)")
    chosen = pick_layers(Path(layers), lmap, split, labels_doc)
    if not chosen:
        raise BadInput(f"{layers}: no layers in the {split} split and no hand-labelled layers")
    work = Path(work) if work is not None else out / "work"
    out.mkdir(parents=True, exist_ok=True)

    _progress(progress, f"real-eval: {len(chosen)} layers ({sum(1 for l in chosen if in_judged_split(l.split, split))} {split}, {sum(1 for l in chosen if l.hand)} hand-labelled); writing turned PNGs to {work / 'layers'}")
    for n, layer in enumerate(chosen):
        write_turned_png(layer, work / "layers" / layer.label, k)
        if progress and (n + 1) % 100 == 0:
            _progress(progress, f"  {n + 1}/{len(chosen)} PNGs")

    # Groups: one per label folder and frame size; a frame whose aspect is not the bed's gets a
    # copy of the configuration with the frame's aspect.
    groups: dict[str, list[Layer]] = {}
    group_config: dict[str, Path | None] = {}
    fitted: dict[str, dict[str, Any]] = {}
    cameras: dict[str, dict[str, Any]] = {}
    found = scan_layer_folders(Path(layers), lmap)
    references = flat_field_references(lmap, found, any_split=True) if flat_field else {}
    training = {found[i][1] for i in held_out_split([f"{label}/{path.name}" for label, path in found])["train"]}
    for camera in {c.name: c for c in lmap.cameras.values()}.values():
        median_of = camera.flat_field_median_of if flat_field else None
        if median_of is None or not any(label in camera.folders for label, _ in found):
            continue
        if camera.name not in references:
            notes.append(f"camera {camera.name}: fewer than {MIN_MEDIAN_FRAMES} layers of {median_of} to take the median of, so judged without a flat field")
        elif not set(references[camera.name]) <= training:
            notes.append(f"camera {camera.name}: fewer than {MIN_MEDIAN_FRAMES} training-split layers of {median_of}, so its flat field is the median of all its {len(references[camera.name])} layers, the judged ones among them")
    if not flat_field:
        notes.append("judged without the cameras' flat fields (--no-flat-field): the lighting reaches the model as the camera saw it")
    for layer in chosen:
        camera = lmap.camera(layer.label)
        if camera is not None and camera.bed_corners is not None:
            # the box rectifies with the camera's corners (and divides out its flat field)
            layer.corners_px = bed_corners_px(camera, *layer.png_size)
            key = f"{camera.name}@{layer.png_size[0]}x{layer.png_size[1]}"
            if key not in group_config:
                group_config[key], cameras[key] = _camera_config(binary, config_text_path, camera, layer, references.get(camera.name), work, k)
            layer.flat_field = Path(cameras[key]["flat_field"]) if cameras[key]["flat_field"] else None
        elif aspect_matches(layer.png_size, bed_mm):
            key = layer.label
            group_config.setdefault(key, Path(config) if config is not None else None)
        else:
            key = f"{layer.label}@{layer.png_size[0]}x{layer.png_size[1]}"
            if key not in group_config:
                if config_text_path is None:
                    raise BadInput(f"{layer.source}: its aspect is not the bed's, and no configuration text to fit (pass --config)")
                text, new_bed = config_with_bed_aspect(config_text_path.read_text(), layer.png_size)
                path = work / "configs" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.toml"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                group_config[key] = path
                fitted[key] = {"folder": layer.label, "frame_px": list(layer.png_size), "bed_mm": [round(v, 3) for v in new_bed], "config": str(path)}
        layer.group = key
        groups.setdefault(key, []).append(layer)

    judged = 0
    for key, group in groups.items():
        # one folder of outputs per label folder: layers of two folders may share a file name
        # (PBLM numbers each folder's layers on its own), and the box names its masks by it
        by_label: dict[str, list[Layer]] = {}
        for layer in group:
            by_label.setdefault(layer.label, []).append(layer)
        parts = [(label, members[start : start + batch]) for label, members in by_label.items() for start in range(0, len(members), batch)]
        for label, part in parts:
            out_dir = work / "analysis" / re.sub(r"[^A-Za-z0-9_.-]+", "_", key) / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
            results = run_box(binary, model, group_config[key], [l.png for l in part], out_dir)
            for layer in part:
                layer.result = results[str(layer.png)]
                mask_path = out_dir / f"{layer.png.stem}.mask.png"
                if layer.result.get("verdict") != "FAULT" and mask_path.is_file():
                    layer.mask = read_mask(mask_path)
                    if layer.mask.shape != (mask_size[1], mask_size[0]):
                        raise BadInput(f"{mask_path}: {layer.mask.shape[1]}x{layer.mask.shape[0]} px, the model's input is {mask_size[0]}x{mask_size[1]}")
            judged += len(part)
            _progress(progress, f"  judged {judged}/{len(chosen)} ({key})")

    report = _figures(chosen, split, lmap, class_names, defect_ids, mask_size, min_area, k)
    if as_build:
        report["builds"] = _replay_builds(binary, model, groups, group_config, config_text_path, split, work, progress)
    first = next((l.result for l in chosen if l.result and l.result.get("backend")), {}) or {}
    report["run"] = {
        "model": str(model),
        "model_name": manifest.get("name"),
        "model_version": manifest.get("version"),
        "config": str(config) if config is not None else None,
        "config_note": None if config is not None else "the configuration embedded in the binary (assets/bedsight.toml)",
        "binary": str(binary),
        "backend": first.get("backend"),
        "layers_folder": str(layers),
        "labels": str(labels) if labels is not None else None,
        "label_map": str(lmap.path),
        "quarter_turns": k,
        "split": split,
        "mask_size": list(mask_size),
        "defect_classes": [class_names[i] for i in defect_ids],
        "min_defect_area_px": min_area,
        "resized_to_long_side": MAX_SIDE,
        "resized_layers": sum(1 for l in chosen if l.resized),
        "bed_fitted_to_frame": list(fitted.values()),
        "cameras": list(cameras.values()),
        "notes": notes,
        "seconds": round(time.time() - started, 1),
        "mean_box_ms_per_layer": _mean([l.result.get("timing_ms", {}).get("total_ms") for l in chosen if l.result and l.result.get("timing_ms")]),
    }
    report["layers"] = [_layer_record(l, class_names, defect_ids) for l in chosen]
    report["domain"] = domain_summary(report["layers"], split)
    report["uncertainty"] = uncertainty_summary(report["layers"], split, lmap.labels, lmap.classes)
    if labels_doc is not None:
        _write_overlays(chosen, out / "overlays", mask_size, class_names, defect_ids, colours, k)
    (out / "real-eval.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "real-eval.md").write_text(markdown(report))
    _progress(progress, f"real-eval: wrote {out / 'real-eval.json'} and {out / 'real-eval.md'} in {report['run']['seconds']} s")
    return report


def _replay_builds(binary: Path, model: Path, groups: dict[str, list[Layer]], group_config: dict[str, Path | None], config_text_path: Path | None, split: str, work: Path, progress: bool) -> dict[str, dict[str, Any]]:
    """Each folder's layers of the split, in name order, replayed as one build with its camera's
    configuration (build_replay.py): {folder: summary}. A folder whose frames come in two sizes
    (two set-ups of the box) is two builds, named `folder @ group`."""
    builds: dict[str, dict[str, Any]] = {}
    groups_of = Counter(label for group in groups.values() for label in {l.label for l in group})
    for key, group in groups.items():
        config_path = group_config[key] or config_text_path
        if config_path is None:
            raise BadInput("a replayed build needs a configuration text to add its camera and trigger to (pass --config)")
        for label in dict.fromkeys(l.label for l in group):
            layers = sorted((l for l in group if l.label == label and in_judged_split(l.split, split)), key=lambda l: l.source.name)
            if not layers:
                continue
            _progress(progress, f"  replaying {label} as a build of {len(layers)} layers ({key})")
            folder = work / "builds" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
            records = build_replay.replay(binary, model, Path(config_path).read_text(), [l.png for l in layers], folder)
            name = label if groups_of[label] == 1 else f"{label} @ {key}"
            builds[name] = {"folder": label, **build_replay.summarise(records, [l.name for l in layers])}
    return builds


def _camera_config(binary: Path, config_text_path: Path | None, camera, layer: Layer, references: list[Path] | None, work: Path, k: int) -> tuple[Path, dict[str, Any]]:
    """A copy of the configuration for one camera of the label map, as its integrator would set
    it: [bed] corners_px from the label map's bed corners (in the PNG's pixels) and, when the
    camera has a clean reference layer (or layers whose median lit it), [bed] flat_field written
    from it by `bedsight calibrate --flat-field`. Returns the configuration's path and what was set."""
    if config_text_path is None:
        raise BadInput(f"camera {camera.name}: no configuration text to set its bed corners in (pass --config)")
    folder = work / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{camera.name}@{layer.png_size[0]}x{layer.png_size[1]}")
    corners = [[round(float(x), 2), round(float(y), 2)] for x, y in layer.corners_px]
    text = config_with_keys(config_text_path.read_text(), "bed", {"corners_px": corners})
    path = folder / f"{stem}.toml"
    path.write_text(text)
    record: dict[str, Any] = {"camera": camera.name, "folders": camera.folders, "frame_px": list(layer.png_size), "corners_px": corners, "config": str(path), "flat_field": None}
    if references:
        folder_name = camera.flat_field_from or camera.flat_field_median_of
        command = [str(binary), "calibrate", "--config", str(path), "--out", str(folder / stem), "--flat-field"]
        for reference in references:
            ref = Layer(name=reference.name, label=folder_name, source=reference, split="train")
            write_turned_png(ref, work / "references", k)
            if ref.png_size != layer.png_size:
                raise BadInput(f"camera {camera.name}: its reference layer {reference} is {ref.png_size[0]}x{ref.png_size[1]} px, its layer {layer.source} {layer.png_size[0]}x{layer.png_size[1]}")
            command += ["--frame", str(ref.png)]
        out_stem = folder / stem
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BadInput(f"{binary} calibrate --flat-field on {references[0]} failed: {proc.stderr.strip()}")
        tiff = Path(f"{out_stem}.flat-field.tiff")
        text = config_with_keys(text, "bed", {"corners_px": corners, "flat_field": str(tiff.resolve())})
        path.write_text(text)
        described = f"{folder_name}/{references[0].name}" if len(references) == 1 else f"the median of {len(references)} layers of {folder_name}"
        record.update(flat_field=str(tiff), flat_field_reference=described, rectified_check=f"{out_stem}.rectified.png")
    return path, record


def _mean(values: Iterable[float | None]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _found_classes(result: dict[str, Any]) -> set[str]:
    return {d["class"] for d in result.get("defects", [])}


def _layer_record(layer: Layer, class_names: Sequence[str], defect_ids: Sequence[int]) -> dict[str, Any]:
    r = layer.result or {}
    return {
        "name": layer.name,
        "folder": layer.label,
        "split": layer.split,
        "hand_labelled": layer.hand is not None,
        "png": str(layer.png),
        "png_size": list(layer.png_size),
        "resized": layer.resized,
        "verdict": r.get("verdict"),
        "fault": r.get("fault"),
        "reasons": r.get("reasons", []),
        "defects": len(r.get("defects", [])),
        "defects_dropped": r.get("defects_dropped", 0),
        "classes_found": sorted(_found_classes(r)),
        "flagged_share": flagged_share(layer.mask, defect_ids) if layer.mask is not None else None,
        "layer_head": (r.get("layer_class") or {}).get("class"),
        "domain": r.get("domain"),
        # the box's per-layer uncertainty: the share of the bed's pixels whose ensemble variance
        # (seed 000 Eq. 13, summed over classes) passes the gate's pixel threshold
        # (`analyze --json` uncertainty.score)
        "uncertainty": (r.get("uncertainty") or {}).get("score"),
        **layer.extra,
    }


def _figures(chosen: list[Layer], split: str, lmap, class_names, defect_ids, mask_size, min_area: int, k: int) -> dict[str, Any]:
    in_split = [l for l in chosen if in_judged_split(l.split, split)]
    defect_names = [class_names[i] for i in defect_ids]

    # per folder
    per_folder = {}
    for label in lmap.labels:
        ls = [l for l in in_split if l.label == label]
        if not ls:
            continue
        counts = {v: 0 for v in VERDICTS}
        for l in ls:
            counts[l.result["verdict"]] = counts.get(l.result["verdict"], 0) + 1
        not_pass = len(ls) - counts["PASS"]
        judged = [l for l in ls if l.mask is not None]
        per_folder[label] = {
            "label_classes": lmap.labels[label],
            "layers": len(ls),
            "hand_labelled_in_split": sum(1 for l in ls if l.hand),
            "verdicts": counts,
            "not_pass_share": not_pass / len(ls),
            "not_pass_ci95": wilson(not_pass, len(ls)),
            "mean_flagged_share": _mean(flagged_share(l.mask, defect_ids) for l in judged),
            "class_found_share": {c: sum(1 for l in ls if c in _found_classes(l.result)) / len(ls) for c in defect_names},
            "layer_head_defective_share": _share(sum(1 for l in ls if (l.result.get("layer_class") or {}).get("defective")), len(ls)),
        }

    # clean layers
    clean_folders = [f for f, cs in lmap.labels.items() if not cs]
    clean = [l for l in in_split if l.label in clean_folders]
    clean_not_pass = sum(1 for l in clean if l.result["verdict"] != "PASS")
    clean_fig = {
        "folders": clean_folders,
        "layers": len(clean),
        "not_pass": clean_not_pass,
        "false_alarm_rate": _share(clean_not_pass, len(clean)),
        "false_alarm_ci95": wilson(clean_not_pass, len(clean)),
        "mean_flagged_share": _mean(flagged_share(l.mask, defect_ids) for l in clean if l.mask is not None),
    }

    # layer classification (FAULT layers were not judged)
    judged_split = [l for l in in_split if l.result["verdict"] != "FAULT"]
    truth = [lmap.labels[l.label] for l in judged_split]
    predicted = [(_found_classes(l.result) if l.result["verdict"] != "PASS" else set()) for l in judged_split]
    classification = classification_metrics(truth, predicted, lmap.classes)
    classification["left_out_fault"] = len(in_split) - len(judged_split)
    classification["rule"] = "a layer has a class when the box reports a defect of it and the verdict is not PASS"

    # hand-labelled layers
    hand = [l for l in chosen if l.hand is not None]
    hand_fig: dict[str, Any] | None = None
    if hand:
        totals = {"flagged": 0, "inside_any": 0, "inside_same": 0}
        per_class_px = {c: {"flagged": 0, "inside_any": 0, "inside_same": 0} for c in defect_names}
        region_classes = sorted({r["class"] for l in hand for r in l.hand.get("regions", [])})
        regions_fig = {c: {"regions": 0, "detected_any": 0, "detected_same": 0, "below_min_area": 0, "zero_pixels": 0} for c in region_classes}
        clean_hand = []
        not_judged = []
        # per label folder (one camera's few layers can hold most of the flagged pixels)
        per_folder_px: dict[str, dict[str, int]] = {}
        chance_flagged: list[int] = []
        chance_labelled: list[float] = []
        for l in hand:
            if l.mask is None:
                not_judged.append(l.name)
                continue
            regions = _hand_regions(l, mask_size, k)
            counts = inside_counts(l.mask, class_names, defect_ids, regions)
            for key in totals:
                totals[key] += counts[key]
            folder_px = per_folder_px.setdefault(l.label, {"layers": 0, "flagged": 0, "inside_any": 0, "inside_same": 0})
            folder_px["layers"] += 1
            for key in ("flagged", "inside_any", "inside_same"):
                folder_px[key] += counts[key]
            chance_flagged.append(counts["flagged"])
            chance_labelled.append(counts["labelled_pixels"] / l.mask.size)
            for c, v in counts["per_class"].items():
                for key in v:
                    per_class_px[c][key] += v[key]
            dets = [region_detection(l.mask, class_names, defect_ids, r, min_area) for r in regions]
            for d in dets:
                f = regions_fig[d["class"]]
                f["regions"] += 1
                f["detected_any"] += d["detected_any"]
                f["detected_same"] += d["detected_same"]
                f["below_min_area"] += d["below_min_area"]
                f["zero_pixels"] += d["area_px"] == 0
            l.extra = {
                "inside_any_share": _share(counts["inside_any"], counts["flagged"]),
                "inside_same_share": _share(counts["inside_same"], counts["flagged"]),
                "labelled_share": counts["labelled_pixels"] / l.mask.size,
                "regions": [{k2: v for k2, v in d.items()} for d in dets],
            }
            if not l.hand.get("regions"):
                clean_hand.append(l)
        for f in regions_fig.values():
            f["recall_any"] = _share(f["detected_any"], f["regions"])
            f["recall_same"] = _share(f["detected_same"], f["regions"])
        all_regions = {key: sum(f[key] for f in regions_fig.values()) for key in ("regions", "detected_any", "detected_same", "below_min_area", "zero_pixels")}
        all_regions["recall_any"] = _share(all_regions["detected_any"], all_regions["regions"])
        all_regions["recall_same"] = _share(all_regions["detected_same"], all_regions["regions"])
        hand_fig = {
            "layers": len(hand),
            "in_split": sum(1 for l in hand if in_judged_split(l.split, split)),
            "not_judged": not_judged,
            "min_pixels": min_area,
            "flagged_pixels": totals["flagged"],
            "inside_any_share": _share(totals["inside_any"], totals["flagged"]),
            "inside_same_share": _share(totals["inside_same"], totals["flagged"]),
            "inside_any_chance": chance_inside_share(chance_flagged, chance_labelled),
            "labelled_share_of_bed": _mean(chance_labelled),
            "per_flagged_class": {
                c: {**v, "inside_any_share": _share(v["inside_any"], v["flagged"]), "inside_same_share": _share(v["inside_same"], v["flagged"])}
                for c, v in per_class_px.items()
            },
            "per_folder": {
                f: {**v, "inside_any_share": _share(v["inside_any"], v["flagged"]), "inside_same_share": _share(v["inside_same"], v["flagged"])}
                for f, v in sorted(per_folder_px.items())
            },
            "regions": {"all": all_regions, **regions_fig},
            "clean_layers": {
                "layers": len(clean_hand),
                "names": [l.name for l in clean_hand],
                "not_pass": sum(1 for l in clean_hand if l.result["verdict"] != "PASS"),
                "mean_flagged_share": _mean(flagged_share(l.mask, defect_ids) for l in clean_hand),
            },
            "verdicts": {v: sum(1 for l in hand if l.result["verdict"] == v) for v in VERDICTS},
        }

    all_in_split = {v: sum(1 for l in in_split if l.result["verdict"] == v) for v in VERDICTS}
    return {
        "format": "bedsight-real-eval-report 1",
        "split": split,
        "overall": {
            "layers": len(in_split),
            "verdicts": all_in_split,
            "not_pass_share": _share(len(in_split) - all_in_split["PASS"], len(in_split)),
            "mean_flagged_share": _mean(flagged_share(l.mask, defect_ids) for l in in_split if l.mask is not None),
        },
        "per_folder": per_folder,
        "clean": clean_fig,
        "classification": classification,
        "hand_labelled": hand_fig,
    }


# ---------------------------------------------------------------------------------------------
# Overlays and the readable report.


def _hex(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    try:
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    except (ValueError, IndexError):
        return (255, 255, 255)


def _write_overlays(chosen: list[Layer], folder: Path, mask_size, class_names, defect_ids, colours, k: int) -> None:
    """Per hand-labelled layer: the bed the box judged (the turned photograph, its camera's
    lighting divided out and its bed rectified where the label map says; contrast-stretched,
    OVERLAY_WIDTH wide),
    the box's flagged pixels tinted in their class colour, the labelled polygons outlined in
    theirs, a caption strip on top."""
    from PIL import Image, ImageDraw

    from . import flat_field

    folder.mkdir(parents=True, exist_ok=True)
    gains: dict[Path, np.ndarray] = {}
    for layer in chosen:
        if layer.hand is None or layer.png is None:
            continue
        with Image.open(layer.png) as im:
            if layer.corners_px is not None:
                # the bed as the box judged it: its lighting divided out, rectified
                size = (OVERLAY_WIDTH, OVERLAY_WIDTH * mask_size[1] // mask_size[0])
                photo = np.asarray(im.convert("L"), dtype=np.uint8)
                if layer.flat_field is not None:
                    if layer.flat_field not in gains:
                        with Image.open(layer.flat_field) as reference:
                            gains[layer.flat_field] = flat_field.gain(np.asarray(reference, dtype=np.float32), str(layer.flat_field))
                    photo = flat_field.apply(photo, gains[layer.flat_field], str(layer.png))
                bed = rectify(photo, layer.corners_px, size[0])
                grey = np.asarray(Image.fromarray(bed).resize(size), dtype=np.float32)
            else:
                pw, ph = im.size
                scale = OVERLAY_WIDTH / pw
                size = (OVERLAY_WIDTH, max(1, round(ph * scale)))
                grey = np.asarray(im.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
        # stretched at most 2x around the median: enough to see the powder, not so much that an
        # evenly lit bed's grain and JPEG blocks look like texture
        lo, median, hi = np.percentile(grey, [1, 50, 99])
        lo, hi = min(lo, median - OVERLAY_MIN_RANGE / 2), max(hi, median + OVERLAY_MIN_RANGE / 2)
        grey = np.clip((grey - lo) / (hi - lo) * 255, 0, 255)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        if layer.mask is not None:
            big = np.asarray(Image.fromarray(layer.mask).resize(size, Image.Resampling.NEAREST))
            for c in defect_ids:
                sel = big == c
                if sel.any():
                    rgb[sel] = 0.5 * rgb[sel] + 0.5 * np.asarray(_hex(colours[class_names[c]]), dtype=np.float32)
        body = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(body)
        for region in layer.hand.get("regions", []):
            pts = region_points(layer, region["polygon"], size, k)
            colour = _hex(colours.get(region["class"], "#ffffff"))
            xy = [(float(x), float(y)) for x, y in pts]
            draw.line(xy + [xy[0]], fill=(0, 0, 0), width=4)
            draw.line(xy + [xy[0]], fill=colour, width=2)
        strip = 30
        merged = Image.new("RGB", (body.width, body.height + strip), (0, 0, 0))
        merged.paste(body, (0, strip))
        d = ImageDraw.Draw(merged)
        r = layer.result or {}
        fs = layer.extra.get("inside_any_share")
        line1 = f"{layer.name}  [{layer.split}]  {r.get('verdict')}"
        share = flagged_share(layer.mask, defect_ids) if layer.mask is not None else None
        line2 = (f"flagged {share:.1%} of the bed" if share is not None else "not judged") + (
            f", {fs:.0%} of it inside labelled regions" if fs is not None else ""
        ) + "  (tint: box; outline: labels)"
        d.text((3, 2), line1, fill=(255, 255, 0))
        d.text((3, 15), line2, fill=(255, 255, 255))
        merged.save(folder / f"{layer.label}__{_safe_stem(layer.source.name)}.png")


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v * 100:.{digits}f} %"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" ({ci[0] * 100:.0f}-{ci[1] * 100:.0f})"


def uncertainty_summary(layers: list[dict[str, Any]], split: str, label_classes: dict[str, list[str]], classes: Sequence[str]) -> dict[str, Any] | None:
    """Whether the ensemble's per-layer uncertainty says when the box is wrong (issue 19): per
    folder the mean score, and the AUROC of the score for "the layer is judged wrong", where a
    layer is judged wrong when the classes the box reports (none on PASS, the classification's
    rule), of the label map's `classes`, are not exactly its label's. None when no layer has a
    score (FAULT alone)."""
    scored = [l for l in layers if in_judged_split(l["split"], split) and l.get("uncertainty") is not None and l["verdict"] != "FAULT"]
    if not scored:
        return None
    wrong = [set(l["classes_found"] if l["verdict"] != "PASS" else []) & set(classes) != set(label_classes[l["folder"]]) for l in scored]
    score = np.array([l["uncertainty"] for l in scored], dtype=np.float64)
    per_folder: dict[str, dict[str, Any]] = {}
    for layer, w in zip(scored, wrong):
        entry = per_folder.setdefault(layer["folder"], {"judged": 0, "wrong": 0, "scores": []})
        entry["judged"] += 1
        entry["wrong"] += int(w)
        entry["scores"].append(layer["uncertainty"])
    for entry in per_folder.values():
        entry["mean_score"] = float(np.mean(entry.pop("scores")))
    return {
        "judged": len(scored),
        "wrong": int(sum(wrong)),
        "mean_score_wrong": float(score[np.array(wrong)].mean()) if any(wrong) else None,
        "mean_score_right": float(score[~np.array(wrong)].mean()) if not all(wrong) else None,
        "auroc_wrong": auroc(score, np.array(wrong)),
        "per_folder": per_folder,
        "rule": "a layer is judged wrong when the label map's classes the box reports (none on PASS) differ from the label's",
    }


def domain_summary(layers: list[dict[str, Any]], split: str) -> dict[str, Any] | None:
    """The domain check's findings per folder on the chosen split: layers judged with a finding,
    how many familiar; None for a model without a domain check."""
    scored = [l for l in layers if in_judged_split(l["split"], split) and l.get("domain")]
    if not scored:
        return None
    per_folder: dict[str, dict[str, Any]] = {}
    for layer in scored:
        entry = per_folder.setdefault(layer["folder"], {"judged": 0, "familiar": 0, "scores": []})
        entry["judged"] += 1
        entry["familiar"] += int(layer["domain"]["familiar"])
        entry["scores"].append(layer["domain"]["score"])
    for entry in per_folder.values():
        entry["familiar_share"] = entry["familiar"] / entry["judged"]
        entry["median_score"] = float(np.median([v for v in entry.pop("scores") if v is not None])) if entry["judged"] else None
    familiar = sum(e["familiar"] for e in per_folder.values())
    return {
        "threshold": scored[0]["domain"]["threshold"],
        "judged": len(scored),
        "familiar": familiar,
        "familiar_share": familiar / len(scored),
        "per_folder": per_folder,
    }


def _num(value: float | None) -> str:
    # scores are shares of the bed's pixels, often 1e-5 and below: significant digits, not places
    return "n/a" if value is None else f"{value:.2e}"


def markdown(report: dict[str, Any]) -> str:
    """The report for a person."""
    run = report["run"]
    lines = [
        "# Real-data evaluation through the box",
        "",
        f"Model `{run['model']}` ({run['model_name']} {run['model_version']}), configuration "
        f"{'`' + run['config'] + '`' if run['config'] else 'embedded'}, judged by `{run['binary']}` "
        f"(backend {run['backend']}), on the `{run['split']}` split of `{run['layers_folder']}`"
        + (f" and the hand-labelled layers of `{run['labels']}`." if run["labels"] else " (no hand-labelled layers)."),
        "",
        f"- The photographs are turned {run['quarter_turns']} quarter(s) counter-clockwise (label map "
        f"`{run['label_map']}`) and written as grey PNGs; {run['resized_layers']} photograph(s) with a long side above "
        f"{run['resized_to_long_side']} px were resized to {run['resized_to_long_side']} px, aspect kept.",
    ]
    for f in run["bed_fitted_to_frame"]:
        lines.append(
            f"- {f['folder']}: frames of {f['frame_px'][0]}x{f['frame_px'][1]} px are not the bed's aspect (the box would "
            f"FAULT them); judged with a copy of the configuration whose bed is {f['bed_mm'][0]}x{f['bed_mm'][1]} mm."
        )
    for c in run.get("cameras", []):
        lines.append(
            f"- Camera {c['camera']} ({', '.join(c['folders'])}): frames of {c['frame_px'][0]}x{c['frame_px'][1]} px, "
            f"[bed] corners_px = {c['corners_px']}"
            + (f", flat field from {c['flat_field_reference']} (`bedsight calibrate --flat-field`)." if c.get("flat_field") else ", no flat field (no clean layer of this camera).")
        )
    lines += [
        f"- Flagged pixels: pixels of a defect class ({', '.join(run['defect_classes'])}) in the box's "
        f"{run['mask_size'][0]}x{run['mask_size'][1]} mask. A region is detected from {run['min_defect_area_px']} flagged pixels inside it.",
        f"- Rates in brackets: 95 % Wilson interval. {run['seconds']} s in all, {run['mean_box_ms_per_layer'] or 0:.0f} ms per layer in the box.",
    ]
    for n in run["notes"]:
        lines.append(f"- Note: {n}")
    o = report["overall"]
    lines += ["", f"## Per folder ({report['split']} split)", ""]
    defect_classes = run["defect_classes"]
    head = "| folder | label classes | layers | " + " | ".join(VERDICTS) + " | not PASS | mean flagged | " + " | ".join(f"has {c}" for c in defect_classes) + " |"
    lines += [head, "|" + "---|" * (6 + len(VERDICTS) + len(defect_classes) - 1)]
    for label, f in report["per_folder"].items():
        lines.append(
            f"| {label} | {', '.join(f['label_classes']) or 'clean'} | {f['layers']} | "
            + " | ".join(str(f["verdicts"][v]) for v in VERDICTS)
            + f" | {_pct(f['not_pass_share'], 0)}{_ci(f['not_pass_ci95'])} | {_pct(f['mean_flagged_share'])} | "
            + " | ".join(_pct(f["class_found_share"][c], 0) for c in defect_classes)
            + " |"
        )
    lines.append(
        f"| **all** | | {o['layers']} | " + " | ".join(str(o["verdicts"][v]) for v in VERDICTS) + f" | {_pct(o['not_pass_share'], 0)} | {_pct(o['mean_flagged_share'])} |" + " |" * len(defect_classes)
    )
    c = report["clean"]
    lines += [
        "",
        "## Clean layers",
        "",
        (f"{c['layers']} layer(s) of {', '.join(c['folders'])}: false-alarm rate (not PASS) {_pct(c['false_alarm_rate'], 0)}{_ci(c['false_alarm_ci95'])}, "
         f"mean flagged share {_pct(c['mean_flagged_share'])}." if c["folders"] else "No clean folder in the label map."),
        "",
        "## Layer classification",
        "",
        f"A layer has a class when the box reports a defect of it and the verdict is not PASS; truth is the label map's classes of the folder. "
        f"{report['classification']['layers']} layers ({report['classification']['left_out_fault']} FAULT left out).",
        "",
        "| class | support | precision | recall | F1 | TP | FP | FN | TN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["classification"]["per_class"].items():
        lines.append(f"| {name} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['tp']} | {m['fp']} | {m['fn']} | {m['tn']} |")
    lines += ["", f"Macro F1 {report['classification']['macro_f1']:.3f}; exact set match {_pct(report['classification']['exact_match'], 0)}."]
    if report.get("builds"):
        lines += [""] + build_replay.markdown(report["builds"], {label: f["label_classes"] for label, f in report["per_folder"].items()})
    h = report.get("hand_labelled")
    if h:
        lines += [
            "",
            "## Hand-labelled layers",
            "",
            f"{h['layers']} layers ({h['in_split']} of them in the {report['split']} split); verdicts "
            + ", ".join(f"{v} {n}" for v, n in h["verdicts"].items() if n)
            + (f"; not judged: {', '.join(h['not_judged'])}" if h["not_judged"] else "")
            + ".",
            "",
            f"- Of the {h['flagged_pixels']} flagged pixels, {_pct(h['inside_any_share'])} are inside the labelled regions of any class, "
            f"{_pct(h['inside_same_share'])} inside a region of the same class. The labelled regions cover "
            f"{_pct(h['labelled_share_of_bed'])} of these beds on average; the same number of flagged pixels put at random "
            f"places of each bed would have {_pct(h['inside_any_chance'])} inside them (chance level).",
            "",
            "| flagged class | flagged px | inside any region | inside a region of the same class |",
            "|---|---|---|---|",
        ]
        for name, v in h["per_flagged_class"].items():
            lines.append(f"| {name} | {v['flagged']} | {_pct(v['inside_any_share'])} | {_pct(v['inside_same_share'])} |")
        lines += [
            "",
            "Per folder (the shares above weigh each flagged pixel alike, so the folder with most flagged pixels sets them):",
            "",
            "| folder | layers | flagged px | inside any region | inside a region of the same class |",
            "|---|---|---|---|---|",
        ]
        for name, v in h["per_folder"].items():
            lines.append(f"| {name} | {v['layers']} | {v['flagged']} | {_pct(v['inside_any_share'])} | {_pct(v['inside_same_share'])} |")
        lines += [
            "",
            f"Regions detected (at least {h['min_pixels']} flagged pixels inside; a box that flags much of every bed "
            "detects most regions of any class by coverage alone, so read the own-class column):",
            "",
            "| region class | regions | detected (any defect class) | detected (own class) | smaller than the minimum at mask size | no pixel at mask size |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in h["regions"].items():
            lines.append(
                f"| {name} | {v['regions']} | {v['detected_any']} ({_pct(v['recall_any'], 0)}) | {v['detected_same']} ({_pct(v['recall_same'], 0)}) | {v['below_min_area']} | {v['zero_pixels']} |"
            )
        ch = h["clean_layers"]
        lines += [
            "",
            f"Hand-labelled clean layers (no region): {ch['layers']}, not PASS {ch['not_pass']}, mean flagged share {_pct(ch['mean_flagged_share'])}.",
            "",
            "Overlays: `overlays/` (tint: the box's flagged pixels; outline: the labelled regions; both in the class's colour).",
        ]
    domain = report.get("domain")
    if domain:
        lines += [
            "",
            f"## Domain check ({report['split']} split)",
            "",
            f"Threshold {domain['threshold']:.3f}: {domain['familiar']} of {domain['judged']} judged layers familiar "
            f"({_pct(domain['familiar_share'], 0)}); a layer above the threshold is REVIEW.",
            "",
            "| folder | judged | familiar | median score |",
            "|---|---|---|---|",
        ]
        for folder, entry in sorted(domain["per_folder"].items()):
            lines.append(f"| {folder} | {entry['judged']} | {entry['familiar']} ({_pct(entry['familiar_share'], 0)}) | {entry['median_score']:.3f} |")
    unc = report.get("uncertainty")
    if unc:
        auc = "n/a (no layer judged wrong, or none right)" if unc["auroc_wrong"] is None else f"{unc['auroc_wrong']:.3f}"
        lines += [
            "",
            f"## Uncertainty ({report['split']} split)",
            "",
            f"The box's per-layer uncertainty score (the share of the bed's pixels the ensemble is unsure of) against the layers it judged wrong "
            f"({unc['rule']}): {unc['wrong']} of {unc['judged']} layers judged wrong; "
            f"AUROC of the score for them {auc}; mean score {_num(unc['mean_score_wrong'])} on those, {_num(unc['mean_score_right'])} on the rest.",
            "",
            "| folder | judged | judged wrong | mean score |",
            "|---|---|---|---|",
        ]
        for folder, entry in sorted(unc["per_folder"].items()):
            lines.append(f"| {folder} | {entry['judged']} | {entry['wrong']} | {_num(entry['mean_score'])} |")
    lines += [
        "",
        "## What these figures cannot show",
        "",
        "- Folder labels are image-level and sometimes wrong for what a layer shows (quantize/real-eval/README.md); classification figures inherit that.",
        "- Hand-labelled regions were drawn by eye by one person: agreement with that person, not pixel truth.",
        "- Small samples (the clean folder especially): read the intervals.",
        "- Other printers' photographs: bed corners read off each camera's mean photograph by eye, the flat field from one clean layer (for a camera without one, the median of its training layers, which keeps what recurs in their place); every layer judged alone (no tracks, no recoat loop).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bedsight_train.real_eval", description="Real-data figures of a model image as the box judges (through the bedsight binary).")
    ap.add_argument("--model", required=True, type=Path, help="model image (.bsimg)")
    ap.add_argument("--config", type=Path, default=None, help="configuration (TOML); default: the one embedded in the binary")
    ap.add_argument("--bin", type=Path, default=None, help="the bedsight binary; default: $BEDSIGHT_BIN, else target/release then target/debug")
    ap.add_argument("--layers", required=True, type=Path, help="folder of label folders (e.g. /work/shared/data/pblm)")
    ap.add_argument("--labels", type=Path, default=None, help="hand-labelled regions (quantize/real-eval/labels.json)")
    ap.add_argument("--label-map", default="pblm", help="label map (TOML, or `pblm`)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="which layers of each folder (the held-out split of layers.py; all: every layer, for a camera or machine the model never learnt from)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=None, help="where the turned PNGs and the box's masks go (default OUT/work)")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"images per bedsight process (default {BATCH})")
    ap.add_argument("--no-flat-field", action="store_true", help="judge without the cameras' flat fields (to measure what the correction does)")
    ap.add_argument("--as-build", action="store_true", help="also replay each folder's layers as a build through `bedsight run` (recoat budget and tracks)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        report = evaluate_real(
            args.model, args.layers, args.labels, args.out, split=args.split, config=args.config, bedsight_bin=args.bin,
            label_map=args.label_map, progress=not args.quiet, work=args.work, batch=max(1, args.batch), flat_field=not args.no_flat_field,
            as_build=args.as_build,
        )
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
