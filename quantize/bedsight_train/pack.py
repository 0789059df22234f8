"""`bedsight-train pack`: build a model image (.bsimg) with `bedsight image pack`.

The format has one implementation, in Rust (`images`); this module only prepares the inputs and
calls the binary: the fp32 graph, the INT8 graph (the default one the box runs, when present), the
manifest written by `export`, the members' PyTorch weights `export` put beside them (for
`finetune --from IMAGE`; the box never reads them), and a self-test sample made here: a synthetic layer at the model's
input size and the mask that the fp32 graph gives on it through onnxruntime and the appliance's
fusion (mean of softmax(z_i / T_i), argmax; seed 000 Eq. 21 and 12).

The binary is found through $BEDSIGHT_BIN, else `bedsight` on PATH, else target/debug/bedsight or
target/release/bedsight of the Cargo workspace above the current folder (or above this package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import data as data_mod
from .common import BadInput, read_toml, save_png_grey
from .evaluate import check_manifest, run_members
from .export import WEIGHTS_NAME
from .metrics import fuse
from .synth import DEFECT_CLASSES, render_layer


class PackError(Exception):
    """`bedsight image pack` failed."""


def _workspace_roots() -> list[Path]:
    roots = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in [start, *start.parents]:
            cargo = folder / "Cargo.toml"
            if cargo.exists():
                try:
                    if "[workspace]" in cargo.read_text():
                        roots.append(folder)
                        break
                except OSError:
                    continue
    return roots


def find_bedsight_bin() -> Path | None:
    """The `bedsight` binary, or None when there is none."""
    env = os.environ.get("BEDSIGHT_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            raise BadInput(f"BEDSIGHT_BIN={env}: no such file")
        return path
    on_path = shutil.which("bedsight")
    if on_path:
        return Path(on_path)
    candidates = []
    for root in _workspace_roots():
        for profile in ("debug", "release"):
            path = root / "target" / profile / "bedsight"
            if path.is_file() and os.access(path, os.X_OK):
                candidates.append(path)
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)  # the most recently built


# The box compares a defect class by IoU when either mask holds this many of its pixels
# (images/src/slots.rs, SELFTEST_CLASS_MIN_PIXELS); fewer, and the install does not check it.
SELFTEST_CLASS_MIN_PIXELS = 50
# how many of the generator's layers make_selftest tries before it settles for the best one
SELFTEST_TRIES = 8


def make_selftest(model: Path, manifest: dict, out_dir: Path, seed: int = 7, tries: int = SELFTEST_TRIES) -> tuple[Path, Path]:
    """A synthetic layer with every class planted and the fp32 graph's fused mask on it, so that
    the install's self-test compares every class. The generator draws some defects faint (a
    shallow streak), and a class the graph does not find there is one the install would not
    check: the first layer (seeds `seed`, `seed` + 1, ...) on which the graph finds every planted
    class is the sample; when none of `tries` is, the one with the most classes, and a warning
    names the classes left unchecked."""
    from .export import ort_session

    size_w, size_h = manifest["input"]["width"], manifest["input"]["height"]
    if size_w != size_h:
        raise BadInput(f"{model}: the self-test generator makes square layers; this model takes {size_w}x{size_h}")
    session = ort_session(model)
    best = None
    for attempt in range(seed, seed + tries):
        layer = render_layer(np.random.default_rng(attempt), size_w, set(DEFECT_CLASSES))
        x = data_mod.to_input(layer.image[None], manifest["input"]["mean"][0], manifest["input"]["std"][0])
        _, mask, _ = fuse(run_members(session, x), manifest["ensemble"]["temperatures"])
        counts = np.bincount(mask.ravel(), minlength=max(DEFECT_CLASSES) + 1)
        missed = [c for c in sorted(layer.planted) if counts[c] < SELFTEST_CLASS_MIN_PIXELS]
        if best is None or len(missed) < len(best[2]):
            best = (layer, mask, missed)
        if not missed:
            break
    layer, mask, missed = best
    if missed:
        names = ", ".join(c["name"] for i, c in enumerate(manifest["classes"]) if i in missed)
        print(f"warning: {model}: the graph finds no {names} on any of {tries} self-test layers; the install will not check {'it' if len(missed) == 1 else 'them'}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_png, mask_png = out_dir / "input.png", out_dir / "expected_mask.png"
    save_png_grey(input_png, layer.image)
    save_png_grey(mask_png, mask)
    return input_png, mask_png


def pack(
    model: Path,
    out: Path,
    int8: Path | None = None,
    manifest: Path | None = None,
    key: Path | None = None,
    selftest_input: Path | None = None,
    selftest_mask: Path | None = None,
    selftest_seed: int = 7,
    progress: bool = True,
    weights: Path | None = None,
    fp32_only: bool = False,
) -> Path:
    model = Path(model)
    if not model.is_file():
        raise BadInput(f"{model}: model not found")
    manifest = Path(manifest) if manifest else model.parent / "manifest.toml"
    manifest_doc = check_manifest(manifest, read_toml(manifest))
    if int8 is None and not fp32_only and (model.parent / "model.int8.onnx").is_file() and model.name == "model.onnx":
        int8 = model.parent / "model.int8.onnx"
    if int8 is not None and not Path(int8).is_file():
        raise BadInput(f"{int8}: INT8 graph not found")
    if weights is None and (model.parent / WEIGHTS_NAME).is_file():
        weights = model.parent / WEIGHTS_NAME  # what `export` put there
    if weights is not None and not Path(weights).is_file():
        raise BadInput(f"{weights}: training weights not found")
    if key is not None and not Path(key).is_file():
        raise BadInput(f"{key}: signing key not found")
    if (selftest_input is None) != (selftest_mask is None):
        raise BadInput("--selftest-input and --selftest-mask go together")
    binary = find_bedsight_bin()
    if binary is None:
        raise PackError("no `bedsight` binary: set BEDSIGHT_BIN, put it on PATH, or build it with `cargo build -p appliance`")
    with tempfile.TemporaryDirectory() as tmp:
        if selftest_input is None:
            selftest_input, selftest_mask = make_selftest(model, manifest_doc, Path(tmp) / "selftest", selftest_seed)
        cmd = [str(binary), "image", "pack", "--onnx", str(model)]
        if int8 is not None:
            cmd += ["--int8", str(int8)]
        cmd += ["--manifest", str(manifest), "--selftest-input", str(selftest_input), "--selftest-mask", str(selftest_mask)]
        if weights is not None:
            cmd += ["--training-weights", str(weights)]
        if key is not None:
            cmd += ["--key", str(key)]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        cmd += ["-o", str(out)]
        if progress:
            print("running: " + " ".join(cmd), flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.stdout and progress:
        print(result.stdout.rstrip())
    if result.returncode != 0:
        raise PackError(f"`bedsight image pack` failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    if progress:
        print(f"packed {out} ({'INT8 default, fp32 beside it' if int8 else 'fp32 only'})")
    return Path(out)
