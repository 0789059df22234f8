"""Datasets: reading and checking a labelled folder, the 8:1:1 split, normalisation, batches.

A dataset folder holds `dataset.toml` (the class table, optionally `recoater_direction` and
`mm_per_px`), `images/NAME.png` (8-bit grey layers) and `masks/NAME.png` (class index per pixel,
same name, same size). Everything is checked before any training starts; a bad file gives one
`BadInput` error naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import IMAGE_SUFFIXES, BadInput, ClassInfo, load_grey, read_toml


@dataclass
class Dataset:
    root: Path
    classes: list[ClassInfo]
    names: list[str]  # file stems, sorted
    images: np.ndarray  # uint8 [N, H, W]
    masks: np.ndarray  # uint8 [N, H, W]
    recoater_direction: str
    mm_per_px: float | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: list[int]) -> "Dataset":
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            root=self.root,
            classes=self.classes,
            names=[self.names[i] for i in indices],
            images=self.images[idx],
            masks=self.masks[idx],
            recoater_direction=self.recoater_direction,
            mm_per_px=self.mm_per_px,
        )


def read_class_table(path: Path) -> tuple[list[ClassInfo], dict]:
    doc = read_toml(path)
    raw = doc.get("classes")
    if not isinstance(raw, list) or len(raw) < 2:
        raise BadInput(f"{path}: needs a [[classes]] table per class (at least background and one more)")
    classes: list[ClassInfo] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise BadInput(f"{path}: class {i} has no name")
        if "index" in entry and entry["index"] != i:
            raise BadInput(f"{path}: class {entry['name']!r} has index {entry['index']}, expected {i} (classes must be listed in index order)")
        colour = entry.get("colour", "#808080")
        if not (isinstance(colour, str) and len(colour) == 7 and colour[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in colour[1:])):
            raise BadInput(f"{path}: class {entry['name']!r} has colour {colour!r}; expected '#rrggbb'")
        defect = entry.get("defect", i != 0)
        if not isinstance(defect, bool):
            raise BadInput(f"{path}: class {entry['name']!r}: defect must be true or false")
        classes.append(ClassInfo(entry["name"], colour.lower(), defect))
    if len(classes) > 255:
        raise BadInput(f"{path}: {len(classes)} classes; masks are 8-bit, at most 255")
    return classes, doc


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_dataset(root: Path, progress: bool = False) -> Dataset:
    """Read and check a dataset folder. Raises BadInput naming the first bad file."""
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: dataset folder not found")
    table = root / "dataset.toml"
    classes, doc = read_class_table(table)
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir():
        raise BadInput(f"{image_dir}: folder not found (a dataset holds images/ and masks/)")
    if not mask_dir.is_dir():
        raise BadInput(f"{mask_dir}: folder not found (a dataset holds images/ and masks/)")
    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not image_files:
        raise BadInput(f"{image_dir}: no images")
    names, images, masks = [], [], []
    shape = None
    for image_path in tqdm(image_files, desc="load", unit="img", disable=not progress):
        mask_path = _find_image(mask_dir, image_path.stem)
        if mask_path is None:
            raise BadInput(f"{image_path}: no mask with the same name in {mask_dir}")
        image = load_grey(image_path)
        mask = _load_mask(mask_path)
        if mask.shape != image.shape:
            raise BadInput(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise BadInput(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]}, the others are {shape[1]}x{shape[0]}; "
                "resize the dataset to one size"
            )
        top = int(mask.max())
        if top >= len(classes):
            bad = sorted(int(v) for v in np.unique(mask) if v >= len(classes))
            raise BadInput(
                f"{mask_path}: class indices {bad} are outside the class table of {table} "
                f"({len(classes)} classes, 0..{len(classes) - 1})"
            )
        names.append(image_path.stem)
        images.append(image)
        masks.append(mask)
    orphan = sorted(
        p.name for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in set(names)
    )
    if orphan:
        raise BadInput(f"{mask_dir / orphan[0]}: mask without an image in {image_dir}")
    direction = doc.get("recoater_direction", "+x")
    if direction not in ("+x", "-x", "+y", "-y"):
        raise BadInput(f"{table}: recoater_direction {direction!r}; expected one of +x, -x, +y, -y")
    mm_per_px = doc.get("mm_per_px")
    if mm_per_px is not None and not (isinstance(mm_per_px, (int, float)) and mm_per_px > 0):
        raise BadInput(f"{table}: mm_per_px must be a positive number")
    return Dataset(
        root=root,
        classes=classes,
        names=names,
        images=np.stack(images),
        masks=np.stack(masks),
        recoater_direction=direction,
        mm_per_px=float(mm_per_px) if mm_per_px is not None else None,
    )


def _load_mask(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise BadInput(f"{path}: mask must be an 8-bit single-channel PNG of class indices, found mode {im.mode}")
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"{path}: not a readable mask image ({e})") from None


def split_dataset(ds: Dataset, seed: int = 0, ratios: tuple[int, int, int] = (8, 1, 1)) -> dict[str, list[int]]:
    """Split train/validation/test 8:1:1 with every class present in each split (seed 000 §4.2:
    "we make a manual adjustment to ensure that each type of defect has a certain number in each
    set"). Deterministic for a seed. Raises BadInput when a split would be empty or lack a class."""
    n = len(ds.names)
    total = sum(ratios)
    n_val = max(1, round(n * ratios[1] / total))
    n_test = max(1, round(n * ratios[2] / total))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise BadInput(
            f"{ds.root}: {n} images cannot be split {ratios[0]}:{ratios[1]}:{ratios[2]} into non-empty "
            "train/validation/test sets; at least 3 are needed"
        )
    present = np.stack([np.bincount(m.ravel(), minlength=ds.num_classes) > 0 for m in ds.masks])  # [N, K]
    counts = present.sum(0)
    for k, c in enumerate(ds.classes):
        if counts[k] < 3:
            raise BadInput(
                f"{ds.root}: class {k} ({c.name}) appears in {int(counts[k])} image(s); every class must be in "
                "the train, validation and test splits, so it needs at least 3 images"
            )
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(n))
    splits = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    # The manual adjustment, automated: while a split lacks a class, move in the training image
    # that brings the most missing classes (and that training can spare), then hand back to
    # training an image of that split whose classes are all covered by its other images, so the
    # split keeps its size where it can (it grows by an image where it cannot).
    target_size = {"val": n_val, "test": n_test}
    for name in ("val", "test"):
        while True:
            have = present[splits[name]].any(0)
            missing = [k for k in range(ds.num_classes) if not have[k]]
            if not missing:
                break
            in_train = present[splits["train"]].sum(0)
            donors = [
                i for i in splits["train"]
                if any(present[i, k] for k in missing)
                and all(in_train[k] > 1 for k in range(ds.num_classes) if present[i, k])
            ]
            if not donors:
                raise BadInput(
                    f"{ds.root}: cannot put class(es) {', '.join(ds.classes[k].name for k in missing)} in the {name} "
                    "split without taking the last example out of training; label more images"
                )
            donor = max(donors, key=lambda i: (sum(present[i, k] for k in missing), -present[i].sum()))
            splits["train"].remove(donor)
            splits[name].append(donor)
            if len(splits[name]) > target_size[name]:
                covered = present[splits[name]].sum(0)
                for j in splits[name]:
                    if j != donor and all(covered[k] > 1 for k in range(ds.num_classes) if present[j, k]):
                        splits[name].remove(j)
                        splits["train"].append(j)
                        break
    for name, idx in splits.items():
        missing = [ds.classes[k].name for k in range(ds.num_classes) if not present[idx, k].any()]
        if missing:
            raise BadInput(f"{ds.root}: the {name} split has no image with class(es) {', '.join(missing)}; label more images")
    return {k: sorted(int(i) for i in v) for k, v in splits.items()}


def dataset_split(ds: Dataset, seed: int = 0) -> dict[str, list[int]]:
    """The dataset's own split when it carries one (split.json beside dataset.toml: the image
    names of train, val and test, as `finetune` writes for a site's labels split by runs of
    layers), else `split_dataset`'s."""
    path = Path(ds.root) / "split.json"
    if not path.is_file():
        return split_dataset(ds, seed=seed)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not readable JSON ({e})") from None
    index = {name: i for i, name in enumerate(ds.names)}
    split = {}
    for which in ("train", "val", "test"):
        names = doc.get(which) if isinstance(doc, dict) else None
        if not isinstance(names, list) or not names:
            raise BadInput(f"{path}: {which} must be a non-empty list of image names")
        unknown = [n for n in names if n not in index]
        if unknown:
            raise BadInput(f"{path}: {which} names {unknown[0]!r}, which is not an image of {ds.root}")
        split[which] = sorted(index[n] for n in names)
    seen = split["train"] + split["val"] + split["test"]
    if len(set(seen)) != len(seen):
        raise BadInput(f"{path}: an image is in more than one split")
    return split


def save_split(path: Path, ds: Dataset, split: dict[str, list[int]]) -> None:
    path.write_text(json.dumps({k: [ds.names[i] for i in v] for k, v in split.items()}, indent=1))


def normalisation(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the training images on the 0..1 scale (manifest [input])."""
    x = images.astype(np.float64) / 255.0
    return float(x.mean()), float(max(x.std(), 1e-3))


def to_input(images_u8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, 1, H, W], the model contract's normalisation."""
    x = images_u8.astype(np.float32) / 255.0
    return ((x - mean) / std)[:, None, :, :].astype(np.float32)


def class_frequencies(masks: np.ndarray, k: int) -> np.ndarray:
    counts = np.bincount(masks.ravel(), minlength=k).astype(np.float64)
    return counts / counts.sum()


def scaled_window(rng: np.random.Generator, crop: int, min_scale: float) -> int:
    """The side of the window a training crop is taken from: the crop itself, or with min_scale
    below 1, one time in two crop / scale with the scale log-uniform in [min_scale, 1]
    (multi-scale training, as DeepLab's and PSPNet's random rescaling). Draws nothing at 1."""
    if min_scale < 1.0 and rng.random() < 0.5:
        return int(round(crop / np.exp(rng.uniform(np.log(min_scale), 0.0))))
    return crop


def shrink(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A window of a layer ([..., H, W] image, [H, W] mask) brought down to `size` px: the image
    by area averaging (what a camera with larger pixels would see), the mask by the nearest
    source pixel."""
    import torch

    image = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None], size)[0].numpy()
    pick = ((np.arange(size) + 0.5) * y.shape[-1] / size).astype(np.int64)
    return image.astype(x.dtype), y[np.ix_(pick, pick)]
