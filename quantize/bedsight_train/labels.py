"""A site's pixel labels, and the formats that labelling tools read (issue 15).

The label store is a folder with two files per labelled layer:

- `NAME.mask.png`: 8-bit grey, the layer's size, each pixel its class index in `classes`
  (0 background). The mask is the label: whatever drew it (polygons, a brush, an eraser).
- `NAME.labels.json`:

      {"format": "bedsight-labels 1", "image": "NAME.png", "width": W, "height": H,
       "classes": ["background", "super-elevation", ...],
       "polygons": [{"class": "streaking", "points": [[x, y], ...]}, ...],
       "labelled_by": "who", "labelled_at": "2026-12-03T10:20:00Z"}

  `polygons` are the outlines the labeller drew, kept for editing; pixel (x, y) is inside a
  polygon as PIL's ImageDraw.polygon fills it (as labelme does).

`export_labels` writes the store for other tools and `import_labels` reads their files back:

- COCO (`coco`, one JSON; CVAT imports and exports it): a category per defect class, an image
  per layer; every polygon that lies within its class's pixels is an annotation with that polygon
  (iscrowd 0), and the rest of each class's pixels one run-length encoded mask (iscrowd 1,
  pycocotools' RLE), so that nothing is lost whatever drew it.
- labelme (`labelme`, one JSON per layer beside the layer's name): the same split into `polygon`
  shapes and `mask` shapes (a base64 PNG of the mask inside its bounding box, labelme >= 5.3).

Export then import gives the same masks, pixel for pixel (a test); a polygon that an eraser cut
into is kept only as pixels (it is no longer the outline of its class's region).

`make_dataset` turns a store and the layer images it labels into a dataset (images/, masks/,
dataset.toml): `evaluate --split all` measures a model on the site's own labels with it, and
`train` reads it where every class has labelled layers enough for its splits.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import DEFAULT_CLASSES, RECOATER_DIRECTION, BadInput, load_grey, save_png_grey, toml_dumps

FORMAT = "bedsight-labels 1"
FORMATS = ("coco", "labelme")


@dataclass
class LayerLabels:
    name: str  # the layer's name: its files are NAME.mask.png and NAME.labels.json
    image: str  # the layer image the labels belong to (relative to the store, or a file name)
    mask: np.ndarray  # uint8 [H, W], class indices into `classes`
    classes: list[str]
    polygons: list[dict[str, Any]] = field(default_factory=list)  # {"class", "points"}
    labelled_by: str = ""
    labelled_at: str = ""


def rasterise(points: list[list[float]], width: int, height: int) -> np.ndarray:
    """The pixels inside a polygon (bool [H, W]) as PIL fills it."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _check_polygon(points: Any, width: int, height: int, where: str) -> list[list[float]]:
    if not isinstance(points, list) or len(points) < 3 or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
        raise BadInput(f"{where}: a polygon needs at least 3 points [x, y]")
    out = []
    for x, y in points:
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in (x, y)):
            raise BadInput(f"{where}: point [{x}, {y}] is not a pair of finite numbers")
        if not (0 <= x <= width and 0 <= y <= height):
            raise BadInput(f"{where}: point [{x}, {y}] lies outside the {width}x{height} image")
        out.append([float(x), float(y)])
    return out


def write_layer(store: Path, labels: LayerLabels) -> None:
    """Write one layer's mask and labels file into the store (the mask first: a labels file is
    only ever beside its mask)."""
    from PIL import Image

    store.mkdir(parents=True, exist_ok=True)
    h, w = labels.mask.shape
    Image.fromarray(labels.mask.astype(np.uint8), mode="L").save(store / f"{labels.name}.mask.png")
    doc = {
        "format": FORMAT,
        "image": labels.image,
        "width": w,
        "height": h,
        "classes": labels.classes,
        "polygons": labels.polygons,
        "labelled_by": labels.labelled_by,
        "labelled_at": labels.labelled_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (store / f"{labels.name}.labels.json").write_text(json.dumps(doc, indent=1) + "\n")


def read_store(store: Path) -> list[LayerLabels]:
    """Every layer of a label store, checked: the format tag, the mask's size and classes, each
    polygon's class and points. A bad file is refused by name, before anything is written."""
    from PIL import Image, UnidentifiedImageError

    if not store.is_dir():
        raise BadInput(f"{store}: not a folder of labels")
    layers = []
    for path in sorted(store.glob("*.labels.json")):
        name = path.name[: -len(".labels.json")]
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BadInput(f"{path}: not readable JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BadInput(f"{path}: format is {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r}")
        classes = doc.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes) or classes[0] != "background":
            raise BadInput(f"{path}: classes must be a list of names starting with background")
        width, height = doc.get("width"), doc.get("height")
        if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
            raise BadInput(f"{path}: width and height must be positive integers")
        mask_path = store / f"{name}.mask.png"
        try:
            with Image.open(mask_path) as im:
                if im.mode not in ("L", "P"):
                    raise BadInput(f"{mask_path}: a mask is an 8-bit grey PNG of class indices, not {im.mode}")
                mask = np.asarray(im, dtype=np.uint8)
        except FileNotFoundError:
            raise BadInput(f"{path}: its mask {mask_path.name} is missing") from None
        except UnidentifiedImageError:
            raise BadInput(f"{mask_path}: not an image") from None
        if mask.shape != (height, width):
            raise BadInput(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]}, but {path.name} says {width}x{height}")
        if mask.max(initial=0) >= len(classes):
            raise BadInput(f"{mask_path}: class index {int(mask.max())} but only {len(classes)} classes")
        polygons = []
        for i, polygon in enumerate(doc.get("polygons", [])):
            where = f"{path}: polygon {i}"
            if not isinstance(polygon, dict) or polygon.get("class") not in classes[1:]:
                raise BadInput(f"{where}: class {polygon.get('class') if isinstance(polygon, dict) else None!r} is not one of {', '.join(classes[1:])}")
            polygons.append({"class": polygon["class"], "points": _check_polygon(polygon.get("points"), width, height, where)})
        layers.append(LayerLabels(name, str(doc.get("image", "")), mask, list(classes), polygons, str(doc.get("labelled_by", "")), str(doc.get("labelled_at", ""))))
    if not layers:
        raise BadInput(f"{store}: no *.labels.json in it")
    return layers


def _split(labels: LayerLabels) -> list[tuple[int, list[list[list[float]]], np.ndarray]]:
    """Per defect class present: (class index, its polygons that lie within its pixels, the rest
    of its pixels). Polygons of one class may overlap; each pixel of the rest is in none of them."""
    h, w = labels.mask.shape
    out = []
    for k in range(1, len(labels.classes)):
        pixels = labels.mask == k
        if not pixels.any():
            continue
        covered = np.zeros_like(pixels)
        kept = []
        for polygon in labels.polygons:
            if polygon["class"] != labels.classes[k]:
                continue
            inside = rasterise(polygon["points"], w, h)
            if inside.any() and not (inside & ~pixels).any():
                kept.append(polygon["points"])
                covered |= inside
        out.append((k, kept, pixels & ~covered))
    return out


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _unrle(rle: dict[str, Any], where: str) -> np.ndarray:
    from pycocotools import mask as coco_mask

    try:
        if isinstance(rle.get("counts"), list):  # uncompressed RLE, as CVAT writes some
            rle = coco_mask.frPyObjects(rle, *rle["size"])
        return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]}).astype(bool)
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{where}: not a COCO run-length encoding ({e})") from None


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def export_labels(store: Path, fmt: str, out: Path) -> Path:
    """Write the store as COCO (one JSON file `out`) or labelme (one JSON per layer in folder
    `out`); returns what was written."""
    layers = read_store(store)
    if fmt == "coco":
        return _export_coco(layers, out)
    if fmt == "labelme":
        return _export_labelme(layers, out)
    raise BadInput(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _export_coco(layers: list[LayerLabels], out: Path) -> Path:
    classes = layers[0].classes
    for layer in layers:
        if layer.classes != classes:
            raise BadInput(f"{layer.name}: classes {layer.classes} differ from {layers[0].name}'s {classes}: one COCO file has one list of categories")
    doc: dict[str, Any] = {
        "info": {"description": "bedsight site labels", "version": FORMAT},
        "categories": [{"id": k, "name": name, "supercategory": "defect"} for k, name in enumerate(classes) if k > 0],
        "images": [],
        "annotations": [],
    }
    for image_id, layer in enumerate(layers, start=1):
        h, w = layer.mask.shape
        doc["images"].append({"id": image_id, "file_name": layer.image or f"{layer.name}.png", "width": w, "height": h, "bedsight_name": layer.name,
                              "labelled_by": layer.labelled_by, "labelled_at": layer.labelled_at})
        for k, polygons, rest in _split(layer):
            for points in polygons:
                inside = rasterise(points, w, h)
                doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": k, "iscrowd": 0,
                                           "segmentation": [[v for p in points for v in p]], "area": float(inside.sum()), "bbox": _bbox(inside)})
            if rest.any():
                doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": k, "iscrowd": 1,
                                           "segmentation": _rle(rest), "area": float(rest.sum()), "bbox": _bbox(rest)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc) + "\n")
    return out


def _png_b64(mask: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _export_labelme(layers: list[LayerLabels], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        h, w = layer.mask.shape
        shapes = []
        for k, polygons, rest in _split(layer):
            name = layer.classes[k]
            for points in polygons:
                shapes.append({"label": name, "points": points, "group_id": None, "description": "", "shape_type": "polygon", "flags": {}, "mask": None})
            if rest.any():
                x, y, bw, bh = (int(v) for v in _bbox(rest))
                shapes.append({"label": name, "points": [[x, y], [x + bw - 1, y + bh - 1]], "group_id": None, "description": "", "shape_type": "mask",
                               "flags": {}, "mask": _png_b64(rest[y : y + bh, x : x + bw])})
        doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": layer.image or f"{layer.name}.png", "imageData": None,
               "imageHeight": h, "imageWidth": w, "bedsight": {"classes": layer.classes, "labelled_by": layer.labelled_by, "labelled_at": layer.labelled_at}}
        (out / f"{layer.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    return out


def import_labels(source: Path, fmt: str, store: Path, classes: list[str] | None = None, labelled_by: str = "") -> list[LayerLabels]:
    """Read COCO (a JSON file) or labelme files (a folder of JSON files) into the label store.
    `classes`: the store's class names (default: the product's, DEFAULT_CLASSES); a label of
    another name is refused. Everything is read and checked before the first file is written."""
    classes = list(classes or [c.name for c in DEFAULT_CLASSES])
    if fmt == "coco":
        layers = _import_coco(source, classes, labelled_by)
    elif fmt == "labelme":
        layers = _import_labelme(source, classes, labelled_by)
    else:
        raise BadInput(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    for layer in layers:
        write_layer(store, layer)
    return layers


def _class_index(name: Any, classes: list[str], where: str) -> int:
    if name not in classes[1:]:
        raise BadInput(f"{where}: label {name!r} is not one of {', '.join(classes[1:])}")
    return classes.index(name)


def _paint(mask: np.ndarray, pixels: np.ndarray, k: int, classes: list[str], where: str) -> None:
    clash = pixels & (mask != 0) & (mask != k)
    if clash.any():
        raise BadInput(f"{where}: {int(clash.sum())} of its pixels are already labelled {classes[int(mask[clash][0])]}: a pixel has one class")
    mask[pixels] = k


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}: not readable JSON ({e})") from None


def _import_coco(path: Path, classes: list[str], labelled_by: str) -> list[LayerLabels]:
    doc = _read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise BadInput(f"{path}: not a COCO file (images, annotations and categories lists)")
    category = {}
    for c in doc["categories"]:
        category[c.get("id")] = _class_index(c.get("name"), classes, f"{path}: category {c.get('id')}")
    layers: dict[Any, tuple[dict, np.ndarray, list]] = {}
    for image in doc["images"]:
        w, h = image.get("width"), image.get("height")
        if not isinstance(w, int) or not isinstance(h, int) or w < 1 or h < 1:
            raise BadInput(f"{path}: image {image.get('id')} has no positive integer width and height")
        layers[image.get("id")] = (image, np.zeros((h, w), np.uint8), [])
    for a in doc["annotations"]:
        where = f"{path}: annotation {a.get('id')}"
        if a.get("image_id") not in layers:
            raise BadInput(f"{where}: image_id {a.get('image_id')} is not an image of the file")
        if a.get("category_id") not in category:
            raise BadInput(f"{where}: category_id {a.get('category_id')} is not a category of the file")
        image, mask, polygons = layers[a["image_id"]]
        k = category[a["category_id"]]
        h, w = mask.shape
        segmentation = a.get("segmentation")
        if isinstance(segmentation, dict):
            pixels = _unrle(segmentation, where)
            if pixels.shape != mask.shape:
                raise BadInput(f"{where}: its mask is {pixels.shape[1]}x{pixels.shape[0]}, the image {w}x{h}")
        elif isinstance(segmentation, list) and segmentation:
            pixels = np.zeros((h, w), bool)
            for flat in segmentation:
                if not isinstance(flat, list) or len(flat) % 2:
                    raise BadInput(f"{where}: a polygon is a flat list of x, y pairs")
                points = _check_polygon([flat[i : i + 2] for i in range(0, len(flat), 2)], w, h, where)
                polygons.append({"class": classes[k], "points": points})
                pixels |= rasterise(points, w, h)
        else:
            raise BadInput(f"{where}: segmentation is neither polygons nor a run-length encoding")
        _paint(mask, pixels, k, classes, where)
    out = []
    for image, mask, polygons in layers.values():
        name = image.get("bedsight_name") or Path(str(image.get("file_name", image.get("id")))).stem
        out.append(LayerLabels(str(name), str(image.get("file_name", "")), mask, classes, polygons, image.get("labelled_by") or labelled_by, image.get("labelled_at", "")))
    return out


def _import_labelme(folder: Path, classes: list[str], labelled_by: str) -> list[LayerLabels]:
    from PIL import Image

    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise BadInput(f"{folder}: no labelme *.json files in it")
    out = []
    for path in files:
        doc = _read_json(path)
        w, h = (doc.get("imageWidth"), doc.get("imageHeight")) if isinstance(doc, dict) else (None, None)
        if not isinstance(w, int) or not isinstance(h, int) or not isinstance(doc.get("shapes"), list):
            raise BadInput(f"{path}: not a labelme file (shapes, imageWidth, imageHeight)")
        mask = np.zeros((h, w), np.uint8)
        polygons = []
        for i, shape in enumerate(doc["shapes"]):
            where = f"{path}: shape {i}"
            k = _class_index(shape.get("label"), classes, where)
            kind = shape.get("shape_type", "polygon")
            if kind == "polygon":
                points = _check_polygon(shape.get("points"), w, h, where)
                polygons.append({"class": classes[k], "points": points})
                pixels = rasterise(points, w, h)
            elif kind == "mask":
                try:
                    (x0, y0), (x1, y1) = shape["points"]
                    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
                    with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as im:
                        crop = np.asarray(im.convert("L")) > 0
                except (KeyError, TypeError, ValueError, OSError) as e:
                    raise BadInput(f"{where}: not a labelme mask shape ({e})") from None
                if crop.shape != (y1 - y0 + 1, x1 - x0 + 1) or x0 < 0 or y0 < 0 or x1 >= w or y1 >= h:
                    raise BadInput(f"{where}: its mask does not fit its box [{x0}, {y0}]-[{x1}, {y1}] in the {w}x{h} image")
                pixels = np.zeros((h, w), bool)
                pixels[y0 : y1 + 1, x0 : x1 + 1] = crop
            else:
                raise BadInput(f"{where}: shape_type {kind!r}: only polygon and mask shapes are labels of regions")
            _paint(mask, pixels, k, classes, where)
        extra = doc.get("bedsight") or {}
        out.append(LayerLabels(path.stem, str(doc.get("imagePath", "")), mask, classes, polygons, extra.get("labelled_by") or labelled_by, extra.get("labelled_at", "")))
    return out


def labelled_images(store: Path, images: Path | None) -> list[tuple[LayerLabels, np.ndarray]]:
    """Every layer of the store with its layer image (its `image` path, relative to `images`: by
    default the box's `images/` beside the store). Refused by name: an empty store, a missing or
    unreadable image, one whose size is not its mask's."""
    layers = read_store(Path(store))
    if not layers:
        raise BadInput(f"{store}: no labelled layers (NAME.labels.json and NAME.mask.png)")
    images = Path(images) if images is not None else Path(store).parent / "images"
    out = []
    for layer in layers:
        path = images / layer.image
        if not layer.image or not path.is_file():
            raise BadInput(f"{layer.name}: its image {path} is not there (give --images, the folder its image path is relative to)")
        image = load_grey(path)
        if image.shape != layer.mask.shape:
            raise BadInput(f"{path}: {image.shape[1]}x{image.shape[0]}, but its mask is {layer.mask.shape[1]}x{layer.mask.shape[0]}")
        out.append((layer, image))
    return out


def make_dataset(store: Path, images: Path | None, out: Path) -> int:
    """A dataset of the store's labelled layers for `train`: each layer's image (its `image`
    path, relative to `images`: by default the box's `images/` beside the store) and its mask, at
    the layer's size, with the store's classes. Refused by name: a missing or unreadable image,
    one whose size is not its mask's, layers of different sizes or classes, an existing `out`."""
    labelled = labelled_images(store, images)
    classes, size = labelled[0][0].classes, labelled[0][0].mask.shape
    pairs = []
    for layer, image in labelled:
        if layer.classes != classes:
            raise BadInput(f"{layer.name}: classes {layer.classes} differ from {labelled[0][0].name}'s {classes}")
        if layer.mask.shape != size:
            raise BadInput(f"{layer.name}: {layer.mask.shape[1]}x{layer.mask.shape[0]}, but {labelled[0][0].name} is {size[1]}x{size[0]}: a dataset has one size")
        pairs.append((layer.name, image, layer.mask))
    if Path(out).exists():
        raise BadInput(f"{out}: already there; pick a new folder")
    for name, image, mask in pairs:
        save_png_grey(Path(out) / "images" / f"{name}.png", image)
        save_png_grey(Path(out) / "masks" / f"{name}.png", mask)
    colours = {c.name: c for c in DEFAULT_CLASSES}
    doc = {
        "name": "site labels",
        "source": str(Path(store).resolve()),
        "layers": len(pairs),
        "size": size[1],
        "channels": 1,
        "recoater_direction": RECOATER_DIRECTION,
        "classes": [
            {"index": i, "name": name, "colour": colours[name].colour if name in colours else "#ffffff", "defect": colours[name].defect if name in colours else True}
            for i, name in enumerate(classes)
        ],
    }
    (Path(out) / "dataset.toml").write_text(
        "# A site's own labelled layers (bedsight-train labels dataset): images/*.png and masks/*.png (class\n"
        "# index per pixel), the layers as the box rectified them.\n" + toml_dumps(doc)
    )
    return len(pairs)
