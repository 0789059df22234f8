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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass
class LabelMap:
    path: Path
    classes: list[str]  # the layer classes, in the classification head's output order
    labels: dict[str, list[str]]  # label folder -> its layer classes
    recoater_travel: str = "right"  # where the recoater moves in the photographs (RECOATER_TRAVEL)

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
    unknown = sorted(set(doc) - {"classes", "labels", "recoater_travel"})
    if unknown:
        raise BadInput(f"{path}: unknown key(s) {', '.join(unknown)}; a label map has `classes`, `recoater_travel` and [labels]")
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
    return LabelMap(path=path, classes=list(classes), labels={k: list(v) for k, v in labels.items()}, recoater_travel=travel)


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


def load_layer_image(path: Path, size: int, quarter_turns: int = 0) -> np.ndarray:
    """One layer as the model sees it: grey, resized to size x size, turned to the bed's
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
    images = np.zeros((len(chosen), size, size), dtype=np.uint8)
    for n, i in enumerate(tqdm(chosen, desc="load layers", unit="img", disable=not progress)):
        images[n] = load_layer_image(found[i][1], size, label_map.quarter_turns)
    labels = [found[i][0] for i in chosen]
    targets = np.stack([label_map.target(label) for label in labels]) if chosen else np.zeros((0, len(label_map.classes)), np.float32)
    return LayerSet(Path(root), label_map, [names[i] for i in chosen], labels, targets, images)


def split_of(layers: LayerSet) -> dict[str, list[int]]:
    """Indices of `layers` in each split (the split follows each layer's name, not its index)."""
    return held_out_split(layers.names)
