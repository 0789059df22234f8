#!/usr/bin/env python3
"""Validate the hand-labelled real evaluation set (labels.json beside this file) and, optionally,
render one overlay PNG per layer so that another person can review the regions.

    python3 check_labels.py                          # validate, print counts
    python3 check_labels.py --render /tmp/real-eval  # + one overlay PNG per layer, 512 px wide
    python3 check_labels.py --data /path/to/pblm --labels other.json

Checks: the format tag and the class list; per layer that the image exists under the data folder,
that its real size matches width/height, that folder_label is the image's folder, that it appears
only once; per region that the class is known, the polygon has >= 3 [x, y] points, every point lies
inside the image (0 <= x <= width, 0 <= y <= height), and the area is not zero. Exit status 0 when
everything is valid, 1 otherwise (every problem is printed, not only the first).

Needs numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMAT = "bedsight-real-eval 1"
CLASSES = ["incompleteness", "streaking", "super-elevation"]
COLOURS = {"incompleteness": (0, 200, 255), "streaking": (255, 60, 60), "super-elevation": (60, 255, 60)}
DEFAULT_DATA = os.environ.get("BEDSIGHT_PBLM", "/work/shared/data/pblm")
HERE = Path(__file__).resolve().parent


def polygon_area(points: list[list[float]]) -> float:
    xy = np.asarray(points, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def validate(doc: dict, data: Path) -> list[str]:
    errors: list[str] = []
    if doc.get("format") != FORMAT:
        errors.append(f'format is {doc.get("format")!r}, expected {FORMAT!r}')
    classes = doc.get("classes")
    if classes != CLASSES:
        errors.append(f"classes are {classes!r}, expected {CLASSES!r}")
    known = set(classes or []) & set(CLASSES)
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        return errors + ["layers: missing or empty"]
    seen: set[str] = set()
    for li, layer in enumerate(layers):
        image = layer.get("image")
        where = f"layers[{li}] ({image})"
        if not isinstance(image, str) or not image:
            errors.append(f"{where}: no image path")
            continue
        if image in seen:
            errors.append(f"{where}: listed twice")
        seen.add(image)
        if Path(image).is_absolute() or ".." in Path(image).parts:
            errors.append(f"{where}: image must be relative to the data folder, without '..'")
            continue
        folder = Path(image).parts[0]
        if layer.get("folder_label") != folder:
            errors.append(f'{where}: folder_label {layer.get("folder_label")!r} is not the image\'s folder {folder!r}')
        width, height = layer.get("width"), layer.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            errors.append(f"{where}: width/height must be positive integers, got {width!r} x {height!r}")
            continue
        path = data / image
        if not path.is_file():
            errors.append(f"{where}: image not found at {path}")
        else:
            try:
                with Image.open(path) as im:
                    real = im.size
            except OSError as e:
                errors.append(f"{where}: cannot read {path}: {e}")
            else:
                if real != (width, height):
                    errors.append(f"{where}: labels say {width}x{height}, the image is {real[0]}x{real[1]}")
        if not isinstance(layer.get("notes", ""), str):
            errors.append(f"{where}: notes must be a string")
        regions = layer.get("regions")
        if not isinstance(regions, list):
            errors.append(f"{where}: regions must be a list (empty for a clean layer)")
            continue
        for ri, region in enumerate(regions):
            rw = f"{where} regions[{ri}]"
            cls = region.get("class")
            if cls not in known:
                errors.append(f"{rw}: unknown class {cls!r} (known: {', '.join(CLASSES)})")
            if not isinstance(region.get("note", ""), str):
                errors.append(f"{rw}: note must be a string")
            poly = region.get("polygon")
            if not isinstance(poly, list) or len(poly) < 3:
                errors.append(f"{rw}: polygon needs at least 3 points")
                continue
            bad = [p for p in poly if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p))]
            if bad:
                errors.append(f"{rw}: points must be [x, y] numbers, got {bad[0]!r}")
                continue
            outside = [p for p in poly if not (0 <= p[0] <= width and 0 <= p[1] <= height)]
            if outside:
                errors.append(f"{rw}: {len(outside)} point(s) outside the {width}x{height} image, e.g. {outside[0]}")
            if polygon_area(poly) <= 0:
                errors.append(f"{rw}: polygon has zero area")
    return errors


def summary(doc: dict) -> str:
    folders: dict[str, Counter] = {}
    for layer in doc.get("layers", []):
        c = folders.setdefault(layer.get("folder_label", "?"), Counter())
        c["layers"] += 1
        for region in layer.get("regions", []):
            c[region.get("class")] += 1
            c["regions"] += 1
    head = f"{'folder':28} {'layers':>6} {'regions':>7} " + " ".join(f"{c:>15}" for c in CLASSES)
    lines = [head]
    total = Counter()
    for folder, c in folders.items():
        total.update(c)
        lines.append(f"{folder:28} {c['layers']:>6} {c['regions']:>7} " + " ".join(f"{c[k]:>15}" for k in CLASSES))
    lines.append(f"{'total':28} {total['layers']:>6} {total['regions']:>7} " + " ".join(f"{total[k]:>15}" for k in CLASSES))
    return "\n".join(lines)


def render(doc: dict, data: Path, out: Path, width: int = 512) -> int:
    """One PNG per layer: the grey image contrast-stretched (1st..99th percentile), downscaled to
    `width` pixels wide, with each region outlined and lightly filled in its class colour."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for layer in doc["layers"]:
        path = data / layer["image"]
        with Image.open(path) as im:
            grey = im.convert("L")
            scale = width / grey.width
            grey = grey.resize((width, max(1, round(grey.height * scale))), Image.LANCZOS)
        a = np.asarray(grey, dtype=np.float32)
        lo, hi = np.percentile(a, [1, 99])
        a = np.clip((a - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
        base = Image.fromarray(a).convert("RGBA")
        over = Image.new("RGBA", base.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(over)
        counts = Counter()
        for region in layer["regions"]:
            colour = COLOURS.get(region["class"], (255, 255, 0))
            pts = [(x * scale, y * scale) for x, y in region["polygon"]]
            draw.polygon(pts, fill=colour + (50,), outline=colour + (255,), width=2)
            counts[region["class"]] += 1
        body = Image.alpha_composite(base, over)
        # caption on a strip above the image, so that it hides nothing near the top edge
        merged = Image.new("RGBA", (body.width, body.height + 16), (0, 0, 0, 255))
        merged.paste(body, (0, 16))
        draw = ImageDraw.Draw(merged)
        caption = layer["image"] + "  " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "no regions")
        draw.text((3, 2), caption, fill=(255, 255, 0, 255))
        x, y = merged.width - 100, 40  # legend near the top right, clear of the bottom-left corner
        draw.rectangle([x - 2, y, merged.width, y + 14 * len(CLASSES) + 2], fill=(0, 0, 0, 160))
        for k in CLASSES:
            draw.rectangle([x + 1, y + 4, x + 9, y + 12], fill=COLOURS[k] + (255,))
            draw.text((x + 13, y + 2), k, fill=(255, 255, 255, 255))
            y += 14
        name = layer["image"].replace("/", "__").replace(" ", "_").rsplit(".", 1)[0] + ".png"
        merged.convert("RGB").save(out / name)
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=Path, default=HERE / "labels.json", help="labels file (default: labels.json beside this script)")
    ap.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help=f"PBLM folder the image paths are relative to (default: $BEDSIGHT_PBLM or {DEFAULT_DATA})")
    ap.add_argument("--render", type=Path, metavar="OUT_DIR", help="write one overlay PNG per layer here (keep it outside the repository)")
    ap.add_argument("--width", type=int, default=512, help="overlay width in pixels (default 512)")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.labels.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"{args.labels}: {e}", file=sys.stderr)
        return 1
    errors = validate(doc, args.data)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    print(summary(doc))
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    print(f"{args.labels}: valid")
    if args.render:
        n = render(doc, args.data, args.render, args.width)
        print(f"wrote {n} overlay(s) to {args.render}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
