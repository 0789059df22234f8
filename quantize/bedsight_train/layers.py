"""Layers labelled per image, not per pixel: a folder of label folders (the folder name is the
label, e.g. pblm/Powder_Uneven/0001.jpg), a label map onto the product's layer classes, and a
held-out split that training never touches.

The label map is a TOML file (`label_maps/pblm.toml` is the one for the PBLM layers):

    classes = ["incompleteness", "streaking", "super-elevation"]   # the layer classes, in order
    [labels]
    No_Defect = []                                                 # folder -> its layer classes
    Powder_Uneven_With_Scratch = ["incompleteness", "streaking"]

Every label folder must be in the map: an unmapped one is an error before any image is read.
Every image must have the channel count of the first one: a colour image in a grey set is refused
with its path. Sizes may differ (PBLM's Plateform_Powder_Uneven layers are 3772x3302, the others
1024x1024): with `mixed_sizes="resize"` (the default) every layer is resized to the model's input
size, as the box resizes its bed, and the loader says how many layers differed from the first;
with `mixed_sizes="refuse"` the first layer of another size is an error naming it. JPEGs are
decoded at a reduced scale where that is exact enough (PIL's draft mode).

A label map may also say where the bed is in the photographs and how they are lit, per camera:

    [cameras.pblm]
    folders = ["No_Defect", "Powder_Uneven"]      # the label folders this camera took
    bed_corners = [[0.01, 0.05], [0.97, 0.01], [0.98, 0.97], [0.01, 0.97]]
    flat_field_from = "No_Defect"                   # a clean folder of this camera

`bed_corners` are the bed's corners in the turned photograph (top-left, top-right, bottom-right,
bottom-left, as the box's [bed] corners_px), as shares of its width and height; the loader warps
that quadrilateral to the model's square, as the box's homography does, so walls and the frame
around the bed are never taken for powder. `flat_field_from` names a clean label folder: its
first training-split layer is the camera's commissioning frame, and its lighting is divided out
of every layer of the camera before the warp (flat_field.py, the box's `[bed] flat_field`). A
camera that has no clean folder may name instead `flat_field_median_of = "FOLDER"`, one of its
folders: the per-pixel median of that folder's training-split layers is its commissioning frame (a
defect that moves from layer to layer drops out of the median; flat_field.median_frame). A
folder in no camera is taken as the bed itself, lit as it is.

Split (`held_out_split`): by build and by long runs of layers, the way new layers reach a box.
Consecutive layers of one build are near-duplicates (PBLM's `converted_ 0131.jpg` and `0132.jpg`
differ by ~3 grey levels on average, layers of different labels by ~10), so a split that
interleaves them (every fifth file, or hashed blocks of ten) puts a near-twin of every test layer
in training and measures recognising the build, not judging a new layer. Here each label folder is
ordered by the numbers in its file names (layer numbers, or date and time); its last 20 % form the
test split and the 10 % before them the validation split, which also keeps training layers away
from test layers. Where the names carry a date as well as a time (PBLM's
`PowderRecoat_20210909_143323.jpg`) and a folder holds at least three dates, whole dates are
taken (one date is one build), so no build is cut in two. The split depends only on the names;
adding later layers to a folder moves its tail into the test split, as a later build would be.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import flat_field
from .common import IMAGE_SUFFIXES, BadInput, read_toml

# Share of each label folder's layers, from its end, in the held-out test split and, before
# them, in the validation split.
TEST_SHARE = 0.2
VAL_SHARE = 0.1
# A folder whose names carry dates is split by whole dates from this many dates on.
MIN_DATES_TO_SPLIT_BY_DATE = 3
LABEL_MAPS = Path(__file__).parent / "label_maps"
# `recoater_travel` of a label map -> counter-clockwise quarter turns to the bed's convention (the
# recoater travels left to right on the rectified bed, as the box's bed.corners_px order says).
RECOATER_TRAVEL = {"right": 0, "down": 1, "left": 2, "up": 3}


# A photograph with a longer side than this is first resized to it, as the camera path delivers
# frames here (real_eval writes them at this size for the box).
CAMERA_LONG_SIDE = 1024


@dataclass
class Camera:
    """Where the bed is in one camera's photographs and which clean folder lit it (see the
    module's docstring)."""

    name: str
    folders: list[str]
    bed_corners: list[tuple[float, float]] | None  # shares of the turned photograph: TL, TR, BR, BL
    flat_field_from: str | None  # a clean label folder of this camera
    flat_field_median_of: str | None = None  # or a folder whose training layers' median lit it


@dataclass
class LabelMap:
    path: Path
    classes: list[str]  # the layer classes, in the classification head's output order
    labels: dict[str, list[str]]  # label folder -> its layer classes
    recoater_travel: str = "right"  # where the recoater moves in the photographs (RECOATER_TRAVEL)
    cameras: dict[str, Camera] = field(default_factory=dict)  # label folder -> its camera

    def camera(self, label: str) -> Camera | None:
        return self.cameras.get(label)

    @property
    def quarter_turns(self) -> int:
        """Counter-clockwise quarter turns (np.rot90's k) that bring a photograph to the bed's
        convention, the recoater travelling left to right (streaking horizontal)."""
        return RECOATER_TRAVEL[self.recoater_travel]

    def target(self, label: str) -> np.ndarray:
        """The multi-label target of a layer with this label: 1.0 for each of its classes."""
        y = np.zeros(len(self.classes), dtype=np.float32)
        for name in self.labels[label]:
            y[self.classes.index(name)] = 1.0
        return y


def load_label_map(path: Path) -> LabelMap:
    """Read and check a label map. A bare name (`pblm`) means the map shipped in label_maps/."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and (LABEL_MAPS / f"{path.name}.toml").exists():
        path = LABEL_MAPS / f"{path.name}.toml"
    doc = read_toml(path)
    unknown = sorted(set(doc) - {"classes", "labels", "recoater_travel", "cameras"})
    if unknown:
        raise BadInput(f"{path}: unknown key(s) {', '.join(unknown)}; a label map has `classes`, `recoater_travel`, [labels] and [cameras.*]")
    travel = doc.get("recoater_travel", "right")
    if travel not in RECOATER_TRAVEL:
        raise BadInput(f"{path}: recoater_travel = {travel!r}: expected one of {', '.join(RECOATER_TRAVEL)} (where the recoater moves in the photographs)")
    classes = doc.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise BadInput(f"{path}: `classes` must be a non-empty list of layer class names")
    if len(set(classes)) != len(classes):
        raise BadInput(f"{path}: `classes` names a class twice")
    labels = doc.get("labels")
    if not (isinstance(labels, dict) and labels):
        raise BadInput(f"{path}: needs a [labels] table: label folder = [layer classes]")
    for label, names in labels.items():
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise BadInput(f"{path}: labels.{label} must be a list of layer class names")
        bad = [n for n in names if n not in classes]
        if bad:
            raise BadInput(f"{path}: labels.{label} names {', '.join(bad)}, which `classes` does not list ({', '.join(classes)})")
    cameras = _read_cameras(path, doc.get("cameras", {}), labels)
    return LabelMap(path=path, classes=list(classes), labels={k: list(v) for k, v in labels.items()}, recoater_travel=travel, cameras=cameras)


def _read_cameras(path: Path, tables: Any, labels: dict[str, list[str]]) -> dict[str, Camera]:
    if not isinstance(tables, dict):
        raise BadInput(f"{path}: `cameras` must be tables [cameras.NAME]")
    by_folder: dict[str, Camera] = {}
    for name, table in tables.items():
        where = f"{path}: cameras.{name}"
        if not isinstance(table, dict):
            raise BadInput(f"{where} must be a table")
        unknown = sorted(set(table) - {"folders", "bed_corners", "flat_field_from", "flat_field_median_of"})
        if unknown:
            raise BadInput(f"{where}: unknown key(s) {', '.join(unknown)}; a camera has folders, bed_corners and flat_field_from or flat_field_median_of")
        folders = table.get("folders")
        if not (isinstance(folders, list) and folders and all(isinstance(f, str) for f in folders)):
            raise BadInput(f"{where}.folders must be a non-empty list of label folders")
        for folder in folders:
            if folder not in labels:
                raise BadInput(f"{where}.folders names {folder}, which [labels] does not list")
            if folder in by_folder:
                raise BadInput(f"{where}.folders names {folder}, which cameras.{by_folder[folder].name} already holds")
        corners = table.get("bed_corners")
        if corners is not None:
            ok = isinstance(corners, list) and len(corners) == 4 and all(
                isinstance(c, list) and len(c) == 2 and all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in c) for c in corners
            )
            if not ok:
                raise BadInput(f"{where}.bed_corners must be four [x, y] shares of the turned photograph (0..1): top-left, top-right, bottom-right, bottom-left")
            corners = [(float(x), float(y)) for x, y in corners]
            if _signed_area(corners) <= 0.05:
                raise BadInput(f"{where}.bed_corners are not a bed: top-left, top-right, bottom-right, bottom-left, going clockwise round at least 5 % of the photograph")
        reference = table.get("flat_field_from")
        if reference is not None:
            if reference not in folders:
                raise BadInput(f"{where}.flat_field_from = {reference!r}: not one of this camera's folders")
            if labels[reference]:
                raise BadInput(f"{where}.flat_field_from = {reference!r}: a flat field is measured on a clean bed, and this folder's layers carry {', '.join(labels[reference])}")
        median_of = table.get("flat_field_median_of")
        if median_of is not None:
            if reference is not None:
                raise BadInput(f"{where}: flat_field_from and flat_field_median_of both set; a camera's lighting is measured one way")
            if median_of not in folders:
                raise BadInput(f"{where}.flat_field_median_of = {median_of!r}: not one of this camera's folders")
        camera = Camera(name=name, folders=list(folders), bed_corners=corners, flat_field_from=reference, flat_field_median_of=median_of)
        for folder in folders:
            by_folder[folder] = camera
    return by_folder


def _signed_area(points: list[tuple[float, float]]) -> float:
    """Shoelace area, positive when the points go clockwise on an image (y down)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the four points `src` to `dst` (each [4, 2])."""
    a = []
    for (x, y), (u, v) in zip(np.asarray(src, float), np.asarray(dst, float)):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(a))
    h = vt[-1].reshape(3, 3)
    return h / h[2, 2]


def map_points(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 2] through the homography h."""
    p = np.c_[np.asarray(points, float), np.ones(len(points))] @ h.T
    return p[:, :2] / p[:, 2:3]


# Points are in pixel-centre coordinates (pixel i's centre is i), as the box's rectifier takes
# them (models/src/preprocess.rs): the bed corners map onto the centres of the rectified bed's
# corner pixels.


def bed_corners_px(camera: Camera, width: int, height: int) -> np.ndarray:
    """The camera's bed corners in a turned photograph of width x height: share 0 is the first
    pixel's centre, share 1 the last's."""
    return np.asarray(camera.bed_corners, float) * [width - 1, height - 1]


def bed_square(size: int, height: int | None = None) -> np.ndarray:
    """The centres of the corner pixels of the rectified size x height bed, in bed_corners' order."""
    w, h = size - 1, (size if height is None else height) - 1
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], float)


@dataclass
class LayerSet:
    root: Path
    label_map: LabelMap
    names: list[str]  # "label/file name", sorted
    labels: list[str]  # the label folder of each layer
    targets: np.ndarray  # float32 [N, L]
    images: np.ndarray  # uint8 [N, S, S]

    def subset(self, indices: list[int]) -> "LayerSet":
        idx = np.asarray(indices, dtype=np.int64)
        return LayerSet(self.root, self.label_map, [self.names[i] for i in indices], [self.labels[i] for i in indices], self.targets[idx], self.images[idx])


def scan_layer_folders(root: Path, label_map: LabelMap) -> list[tuple[str, Path]]:
    """(label, path) of every image, sorted; checks the folder layout and that every label is
    mapped, before any image is read."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: layer folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise BadInput(f"{root}: holds no label folders (expected one folder per label, e.g. {root}/No_Defect/*.png)")
    unmapped = [f.name for f in folders if f.name not in label_map.labels]
    if unmapped:
        raise BadInput(
            f"{root}: label folder(s) {', '.join(unmapped)} are not in the label map {label_map.path}; "
            "add them to its [labels] table (an empty list for clean layers)"
        )
    found = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        found += [(folder.name, p) for p in files]
    if not found:
        raise BadInput(f"{root}: its label folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _numbers(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name.rsplit("/", 1)[-1]))


def split_runs(names: list[str]) -> list[list[int]]:
    """The indices of one label folder's layers in order, grouped into the units the split
    takes whole: one date where the names carry dates (see the module's docstring), else one
    layer."""
    order = sorted(range(len(names)), key=lambda i: (_numbers(names[i]), names[i]))
    dates = {_numbers(names[i])[:-1] for i in order if len(_numbers(names[i])) >= 2}
    if len(dates) >= MIN_DATES_TO_SPLIT_BY_DATE and all(len(_numbers(names[i])) >= 2 for i in order):
        runs: list[list[int]] = []
        for i in order:
            if runs and _numbers(names[runs[-1][0]])[:-1] == _numbers(names[i])[:-1]:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs
    return [[i] for i in order]


def held_out_split(names: list[str]) -> dict[str, list[int]]:
    """train/val/test indices of "label/file name"s: per label folder, the last TEST_SHARE of its
    layers are test and the VAL_SHARE before them validation (see the module's docstring)."""
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    folders: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        folders.setdefault(name.rsplit("/", 1)[0] if "/" in name else "", []).append(i)
    for indices in folders.values():
        runs = split_runs([names[i] for i in indices])
        n = len(indices)
        # layer counts, rounded before the ceiling so that 0.3 * 100 is 30, not 30.000000000000004
        test_layers = math.ceil(round(TEST_SHARE * n, 9))
        held_layers = math.ceil(round((TEST_SHARE + VAL_SHARE) * n, 9))
        taken = 0
        for run in reversed(runs):
            which = "test" if taken < test_layers else "val" if taken < held_layers else "train"
            split[which] += [indices[j] for j in run]
            taken += len(run)
    for which in split:
        split[which].sort()
    return split


def _describe(image) -> tuple[tuple[int, int], int]:
    return image.size, len(image.getbands())


MIXED_SIZES = ("resize", "refuse")


def load_photograph(path: Path, quarter_turns: int, draft_to: int | None = None) -> np.ndarray:
    """A photograph as the camera path delivers it here: grey, its long side at most
    CAMERA_LONG_SIDE, turned to the bed's convention (uint8 [H, W]). `draft_to` lets a JPEG be
    decoded at a reduced scale of at least that size (PIL's draft mode)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG" and draft_to is not None:
            im.draft("L", (draft_to, draft_to))
        im = im.convert("L")
        long_side = max(im.size)
        if long_side > CAMERA_LONG_SIDE:
            w, h = im.size
            im = im.resize((round(w * CAMERA_LONG_SIDE / long_side), round(h * CAMERA_LONG_SIDE / long_side)), Image.Resampling.BOX)
        return np.ascontiguousarray(np.rot90(np.asarray(im, dtype=np.uint8), quarter_turns))


def rectify(photo: np.ndarray, corners_px: np.ndarray, size: int) -> np.ndarray:
    """The quadrilateral `corners_px` of a photograph warped to a size x size bed (bilinear), as
    the box's homography rectifies a camera frame."""
    from PIL import Image

    centres = homography(bed_square(size), corners_px)  # bed pixel -> photograph pixel
    # PIL maps output pixel edges to input pixel edges: shift by half a pixel on both sides
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    h = shift @ centres @ np.linalg.inv(shift)
    coeffs = tuple((h / h[2, 2]).ravel()[:8])
    return np.asarray(Image.fromarray(photo).transform((size, size), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR), dtype=np.uint8)


class CameraViews:
    """How each label folder's photographs become beds: turned, their camera's lighting divided
    out (flat field from the clean reference layer), their bed warped to the model's square. The
    flat-field gains are computed once per camera and photograph size."""

    def __init__(self, label_map: LabelMap, references: dict[str, list[Path]]):
        self.label_map = label_map
        self.references = references  # camera name -> its commissioning frame(s)
        self._gains: dict[tuple[str, tuple[int, int]], np.ndarray] = {}

    def gains(self, camera: Camera, shape: tuple[int, int], draft_to: int | None) -> np.ndarray | None:
        if camera.name not in self.references:
            return None
        key = (camera.name, shape)
        if key not in self._gains:
            paths = self.references[camera.name]
            frames = [load_photograph(p, self.label_map.quarter_turns, draft_to) for p in paths]
            origin = f"flat field of camera {camera.name} ({paths[0] if len(paths) == 1 else f'the median of {len(paths)} layers of {paths[0].parent}'})"
            reference = frames[0] if len(frames) == 1 else flat_field.median_frame(frames, origin)
            if reference.shape != shape:
                raise BadInput(f"{origin}: {reference.shape[1]}x{reference.shape[0]} px, but its camera's layers are {shape[1]}x{shape[0]}")
            self._gains[key] = flat_field.gain(flat_field.lighting_reference(reference), origin)
        return self._gains[key]

    def bed(self, label: str, path: Path, size: int) -> np.ndarray:
        """One layer as the model sees it (uint8 [size, size])."""
        camera = self.label_map.camera(label)
        if camera is None:
            return load_layer_image(path, size, self.label_map.quarter_turns)
        draft_to = 2 * size if size < CAMERA_LONG_SIDE // 2 else None
        photo = load_photograph(path, self.label_map.quarter_turns, draft_to)
        gains = self.gains(camera, photo.shape, draft_to)
        if gains is not None:
            photo = flat_field.apply(photo, gains, str(path))
        if camera.bed_corners is None:
            from PIL import Image

            return np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        return rectify(photo, bed_corners_px(camera, photo.shape[1], photo.shape[0]), size)


def flat_field_references(label_map: LabelMap, found: list[tuple[str, Path]], any_split: bool = False) -> dict[str, list[Path]]:
    """Each camera's commissioning frames: the first training-split layer of its flat_field_from
    folder (the layer an integrator would have photographed before the build), or every
    training-split layer of its flat_field_median_of folder (their median is the frame).
    `any_split` (an evaluation of a small folder set): a median folder with too few training
    layers takes every layer it has, and with fewer than the median needs, none (no entry)."""
    names = [f"{label}/{path.name}" for label, path in found]
    train = held_out_split(names)["train"]
    references: dict[str, list[Path]] = {}
    for camera in {c.name: c for c in label_map.cameras.values()}.values():
        key, folder = ("flat_field_from", camera.flat_field_from) if camera.flat_field_from else ("flat_field_median_of", camera.flat_field_median_of)
        if folder is None or not any(label in camera.folders for label, _ in found):
            continue  # no lighting to measure, or no layer of this camera to correct
        candidates = sorted((i for i in train if found[i][0] == folder), key=lambda i: (_numbers(names[i]), names[i]))
        if not candidates and not (any_split and camera.flat_field_median_of):
            raise BadInput(f"{label_map.path}: cameras.{camera.name}.{key} = {folder!r}, but that folder has no training layer to measure the lighting on")
        if camera.flat_field_from:
            references[camera.name] = [found[candidates[0]][1]]
        else:
            if len(candidates) < flat_field.MIN_MEDIAN_FRAMES and any_split:
                candidates = sorted((i for i in range(len(found)) if found[i][0] == folder), key=lambda i: (_numbers(names[i]), names[i]))
                if len(candidates) < flat_field.MIN_MEDIAN_FRAMES:
                    continue
            if len(candidates) < flat_field.MIN_MEDIAN_FRAMES:
                raise BadInput(f"{label_map.path}: cameras.{camera.name}.flat_field_median_of = {folder!r}: {len(candidates)} training layer(s); the median needs at least {flat_field.MIN_MEDIAN_FRAMES}")
            references[camera.name] = [found[i][1] for i in candidates]
    return references


def load_layer_image(path: Path, size: int, quarter_turns: int = 0) -> np.ndarray:
    """One photograph taken as the bed: grey, resized to size x size, turned to the bed's
    convention (`LabelMap.quarter_turns`) (uint8 [size, size])."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("L", (size, size))
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR if im.size[0] <= 2 * size else Image.Resampling.BOX)
        return np.ascontiguousarray(np.rot90(np.asarray(im, dtype=np.uint8), quarter_turns))


def load_layer_folders(root: Path, label_map: LabelMap, size: int, splits: tuple[str, ...] = ("train", "val", "test"), max_per_label: int | None = None, mixed_sizes: str = "resize", progress: bool = False) -> LayerSet:
    """Read the layers of the chosen splits, resized to size x size grey. Every image's header is
    checked (size and channel count) whatever the splits, so that a bad file is found at once.
    `max_per_label` keeps the first N layers (in hash order) of each label per split, to bound a
    training recipe's time."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    if mixed_sizes not in MIXED_SIZES:
        raise BadInput(f"mixed sizes {mixed_sizes!r}: expected one of {', '.join(MIXED_SIZES)}")
    found = scan_layer_folders(root, label_map)
    names = [f"{label}/{path.name}" for label, path in found]
    first: tuple[Path, tuple[tuple[int, int], int]] | None = None
    other_size: list[Path] = []
    for label, path in found:
        try:
            with Image.open(path) as im:
                shape = _describe(im)
        except (UnidentifiedImageError, OSError) as e:
            raise BadInput(f"{path}: not a readable image ({e})") from None
        if first is None:
            first = (path, shape)
            continue
        (w, h), c = shape
        (w0, h0), c0 = first[1]
        if c != c0:
            raise BadInput(
                f"{path}: {c} channel(s), but {first[0]} has {c0}: the layers of one folder must share a channel "
                "count (all grey or all colour); convert or remove this file"
            )
        if (w, h) != (w0, h0):
            if mixed_sizes == "refuse":
                raise BadInput(
                    f"{path}: {w}x{h} px, but {first[0]} is {w0}x{h0} px: the layers must share a size "
                    "(or let the loader resize them: mixed sizes = resize)"
                )
            other_size.append(path)
    if other_size and progress:
        print(f"{root}: {len(other_size)} layer(s) are not {first[1][0][0]}x{first[1][0][1]} px like {first[0].name} "
              f"(e.g. {other_size[0]}); every layer is resized to {size}x{size}")
    split = held_out_split(names)
    chosen: list[int] = []
    for which in splits:
        per_label: dict[str, int] = {}
        for i in sorted(split[which], key=lambda i: hashlib.sha256(names[i].encode()).digest()):
            label = found[i][0]
            if max_per_label is not None and per_label.get(label, 0) >= max_per_label:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            chosen.append(i)
    chosen.sort()
    views = CameraViews(label_map, flat_field_references(label_map, found))
    images = np.zeros((len(chosen), size, size), dtype=np.uint8)
    for n, i in enumerate(tqdm(chosen, desc="load layers", unit="img", disable=not progress)):
        images[n] = views.bed(found[i][0], found[i][1], size)
    labels = [found[i][0] for i in chosen]
    targets = np.stack([label_map.target(label) for label in labels]) if chosen else np.zeros((0, len(label_map.classes)), np.float32)
    return LayerSet(Path(root), label_map, [names[i] for i in chosen], labels, targets, images)


def split_of(layers: LayerSet) -> dict[str, list[int]]:
    """Indices of `layers` in each split (the split follows each layer's name, not its index)."""
    return held_out_split(layers.names)
