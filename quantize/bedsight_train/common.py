"""Small shared pieces: the error type for bad outside input, the default class table, TOML writing,
thread limits and image I/O helpers."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class BadInput(Exception):
    """An outside input (dataset, checkpoint, model file, argument) is unusable.

    The message names the file and says what is wrong; `bedsight-train` prints it without a
    traceback and exits with status 2."""


@dataclass(frozen=True)
class ClassInfo:
    name: str
    colour: str
    defect: bool


# The powder-spreading classes of seed 000 (§4.1, Fig. 4, Table 1), in class-index order.
# Lattice is a support structure, not a defect in the strict sense (seed 000 §4.1).
DEFAULT_CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo("background", "#000000", False),
    ClassInfo("super-elevation", "#ff3b30", True),
    ClassInfo("incompleteness", "#007aff", True),
    ClassInfo("hopping", "#ffcc00", True),
    ClassInfo("streaking", "#34c759", True),
    ClassInfo("lattice", "#af52de", False),
)

# The recoater travels along +x (left to right in the image): streaking is parallel to it
# (horizontal stripes), hopping perpendicular to it (vertical stripes); seed 000 §4.1.
RECOATER_DIRECTION = "+x"

# Width of the printer's bed that a synthetic layer image spans.
SYNTH_BED_WIDTH_MM = 250.0


def limit_threads(n: int | None = None) -> None:
    """Keep torch (and the BLAS under numpy) to a few threads: the workstation may share its
    cores with other builds. BEDSIGHT_TRAIN_THREADS overrides the default of 2."""
    import torch

    if n is None:
        n = int(os.environ.get("BEDSIGHT_TRAIN_THREADS", "2"))
    torch.set_num_threads(max(1, n))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process


def config_with_keys(text: str, table: str, values: dict[str, Any]) -> str:
    """Configuration text with the given keys of [table] set (an existing plain key line replaced,
    a missing one added under the table's header); everything else, comments included, unchanged."""
    lines = text.splitlines(keepends=True)
    section = None
    header_at = None
    done = set()
    for i, line in enumerate(lines):
        header = re.match(r"\s*\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            section = header.group(1).strip()
            if section == table:
                header_at = i
            continue
        if section != table:
            continue
        for key, value in values.items():
            if re.match(rf"\s*{key}\s*=", line):
                comment = line.split("#", 1)[1].strip() if "#" in line else None
                lines[i] = f"{key} = {_toml_value(value)}" + (f"  # {comment}" if comment else "") + "\n"
                done.add(key)
    if header_at is None:
        raise BadInput(f"configuration: no [{table}] table to set {', '.join(values)} in")
    added = [f"{key} = {_toml_value(value)}\n" for key, value in values.items() if key not in done]
    if not lines[header_at].endswith("\n"):  # the header is the file's last line
        lines[header_at] += "\n"
    lines[header_at + 1 : header_at + 1] = added
    out = "".join(lines)
    written = tomllib.loads(out).get(table, {})
    if any(written.get(key) != value for key, value in values.items()):
        raise BadInput(f"configuration: could not set the [{table}] keys (write them as plain keys under [{table}])")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not np.isfinite(value):
            raise ValueError(f"cannot write non-finite float {value} to TOML")
        text = repr(float(value))
        return text
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (np.floating,)):
        return _toml_value(float(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_dumps(doc: dict[str, Any]) -> str:
    """A small TOML writer for our own files: in each table its scalars and arrays first, then its
    tables (dicts) and arrays of tables (lists of dicts), nested as deep as they go, in the order
    they were given."""
    lines: list[str] = []
    _write_table(lines, [], doc)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        name = ".".join(_toml_key(k) for k in [*path, key])
        if isinstance(value, dict):
            lines += ["", f"[{name}]"]
            _write_table(lines, [*path, key], value)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{name}]]"]
                _write_table(lines, [*path, key], item)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, dict) for v in value)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return _toml_value(key)


def read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: not valid TOML: {e}") from None


def save_png_grey(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)), mode="L").save(path)


def load_grey(path: Path) -> np.ndarray:
    """An 8-bit grey layer image as uint8 [H, W]; colour images become ITU-R 601 luma."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode == "L":
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                raise BadInput(f"{path}: 16-bit images are not supported; save it as 8-bit grey")
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"{path}: not a readable image ({e})") from None


def class_colours_rgb(classes: tuple[ClassInfo, ...] | list[ClassInfo]) -> np.ndarray:
    return np.array([[int(c.colour[i : i + 2], 16) for i in (1, 3, 5)] for c in classes], dtype=np.uint8)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def synthetic_dataset_doc(size: int, seed: int, layers: int, name: str, generator: str) -> dict:
    """The dataset.toml document of a synthetic generator's dataset (synth.py, synth_alt.py)."""
    return {
        "name": name,
        "generator": generator,
        "seed": seed,
        "layers": layers,
        "size": size,
        "channels": 1,
        "recoater_direction": RECOATER_DIRECTION,
        "mm_per_px": SYNTH_BED_WIDTH_MM / size,
        "classes": [{"index": i, "name": c.name, "colour": c.colour, "defect": c.defect} for i, c in enumerate(DEFAULT_CLASSES)],
    }
