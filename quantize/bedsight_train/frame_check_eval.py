"""How often the box's frame checks fire on real frames, clean and corrupted the way cameras fail.

    python -m bedsight_train.frame_check_eval --layers ../shared/data/pblm --per-folder 50 --out out/frame-checks

Each label folder is one build, commissioned as its integrator would: the label map's camera
gives the bed corners and the flat field (from the clean layer it names), and the folder's first
layer is the commissioning frame (`bedsight calibrate --frame-reference`; PBLM's camera was not
in the same place for every build, and a box is commissioned again when its camera is
remounted). Real layers become camera frames as the box would get them (grey PNG, the
recoater travelling left to right), and `bedsight analyze --json` judges them in order, as a
running box would:

- clean: runs of 5 consecutive layers (neighbouring layers are the hardest case for `frozen`);
  any check that fires is a false alarm;
- each corruption (blur, fog, shift, rotation, dark bar, bright spot) of each layer, after a
  judged frame of the layer before it, as a new layer follows another bed on a printer;
- repeats (the same bytes; fresh sensor noise): each layer, then its repeat.

A check fires when the layer's `frame_check` names it. Detection: the share of corrupted frames
on which an expected check fired. Writes OUT/frame-checks.json and OUT/frame-checks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .common import BadInput, config_with_keys
from .layers import bed_corners_px, flat_field_references, load_label_map, load_photograph, scan_layer_folders
from .real_eval import default_config_path, find_binary

# The corruptions, what each stands for, and the checks that count as finding it.
CORRUPTIONS: dict[str, tuple[str, set[str]]] = {
    "blur": ("a 9-px Gaussian blur (sigma 1.7): lens out of focus or soiled", {"blurred"}),
    "fog": ("half the frame veiled at grey 200: condensation, a fume cloud", {"low_contrast", "blurred"}),
    "shift": ("the frame moved 40 px to the right: a knocked camera", {"camera_moved"}),
    "rotation": ("the frame turned 2 degrees about its centre: a mount that relaxed", {"camera_moved"}),
    "dark_bar": ("a dark bar (grey 15) 6 % of the bed wide across the travel: the recoater in view", {"occluded"}),
    "bright_spot": ("a saturated disc of 5 % of the bed's width: spatter glare, the plume", {"occluded"}),
    "repeat": ("the last judged frame again, the same bytes: a hung camera", {"frozen"}),
    "repeat_noise": ("the last judged frame again with fresh sensor noise (sigma 2): the same bed", {"frozen"}),
}
# Corruptions of a new layer (they follow a judged layer of another bed), and repeats of the last one.
NEW_LAYER = ("blur", "fog", "shift", "rotation", "dark_bar", "bright_spot")
REPEATS = ("repeat", "repeat_noise")


def corrupt(frame: np.ndarray, kind: str, corners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`frame` (grey uint8, camera pixels) as a failing camera would deliver it."""
    f = frame.astype(np.float32)
    h, w = frame.shape
    scale = max(h, w) / 1024.0
    if kind == "blur":
        out = ndimage.gaussian_filter(f, 1.7 * scale, truncate=4.0 / 1.7)
    elif kind == "fog":
        out = 0.5 * f + 0.5 * 200.0
    elif kind == "shift":
        out = ndimage.shift(f, (0.0, 40.0 * scale), order=1, mode="nearest")
    elif kind == "rotation":
        out = ndimage.rotate(f, 2.0, reshape=False, order=1, mode="nearest")
    elif kind in ("dark_bar", "bright_spot"):
        out = f.copy()
        x0, x1 = corners[:, 0].min(), corners[:, 0].max()
        y0, y1 = corners[:, 1].min(), corners[:, 1].max()
        yy, xx = np.mgrid[0:h, 0:w]
        if kind == "dark_bar":
            centre = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
            out[(np.abs(xx - centre) < 0.03 * (x1 - x0)) & (yy >= y0) & (yy <= y1)] = 15.0
        else:
            cx, cy = x0 + rng.uniform(0.2, 0.8) * (x1 - x0), y0 + rng.uniform(0.2, 0.8) * (y1 - y0)
            out[np.hypot(xx - cx, yy - cy) < 0.05 * (x1 - x0)] = 255.0
    elif kind == "repeat":
        return frame.copy()
    elif kind == "repeat_noise":
        out = f + rng.normal(0.0, 2.0, f.shape)
    else:
        raise ValueError(kind)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass
class Frame:
    path: Path
    layer: str  # "Folder/file"
    kind: str  # "clean" or a corruption
    result: dict[str, Any] | None = None
    clean_passes: bool | None = None  # for a corrupted frame: whether its layer's clean frame passed every check


def _save(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, compress_level=1)
    return path


def pick(paths: list[Path], n: int) -> list[Path]:
    """`n` layers spread evenly over a folder, in order."""
    if len(paths) <= n:
        return list(paths)
    return [paths[int(round(i))] for i in np.linspace(0, len(paths) - 1, n)]


def runs(paths: list[Path], n: int, length: int = 5) -> list[Path]:
    """About `n` layers in runs of `length` consecutive ones, the runs spread evenly, in order."""
    if len(paths) <= n:
        return list(paths)
    starts = pick(list(range(len(paths) - length + 1)), max(1, n // length))
    return [paths[i] for start in starts for i in range(start, start + length)]


def camera_config(binary: Path, base_text: str, reference_png: Path, corners: np.ndarray, flat_field_from: list[Path] | None, quarter_turns: int, folder: Path) -> Path:
    """The configuration its integrator would write for one build: [bed] corners_px, the flat
    field (from `flat_field_from`, the camera's clean layer or the layers whose median lit it) and
    [frame_check] reference (the build's commissioning frame), both written by `bedsight calibrate`."""
    corners_list = [[round(float(x), 2), round(float(y), 2)] for x, y in corners]
    bed: dict[str, Any] = {"corners_px": corners_list}
    path = folder / "bedsight.toml"
    path.write_text(config_with_keys(base_text, "bed", bed))

    def calibrate(frames: list[Path], flag: str, stem: str) -> None:
        cmd = [str(binary), "calibrate", "--config", str(path), "--out", str(folder / stem), flag]
        for frame in frames:
            cmd += ["--frame", str(frame)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BadInput(f"{binary} calibrate {flag} on {frames[0]} failed: {proc.stderr.strip()}")

    calibrate([reference_png], "--frame-reference", "commissioning")
    if flat_field_from:
        frames = [_save(load_photograph(p, quarter_turns), folder / f"flat-field-frame-{n}.png") for n, p in enumerate(flat_field_from)]
        calibrate(frames, "--flat-field", "lighting")
        bed["flat_field"] = str((folder / "lighting.flat-field.tiff").resolve())
    text = config_with_keys(base_text, "bed", bed)
    text = config_with_keys(text, "frame_check", {"reference": str((folder / "commissioning.frame-reference.png").resolve())})
    path.write_text(text)
    return path


def analyze_sequence(binary: Path, config: Path, frames: list[Frame]) -> None:
    """`bedsight analyze --json` over the frames in order; each frame gets its JSON line."""
    cmd = [str(binary), "analyze", "--json", "--config", str(config)] + [str(f.path) for f in frames]
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", "2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if len(lines) != len(frames):
        raise BadInput(f"{binary} analyze gave {len(lines)} results for {len(frames)} frames (status {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    for frame, line in zip(frames, lines):
        frame.result = line


def fired(frame: Frame) -> str | None:
    check = (frame.result or {}).get("frame_check")
    return check["check"] if check else None


def evaluate(root: Path, label_map_path: Path | str, per_folder: int, out: Path, binary: Path, config_text: str, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    label_map = load_label_map(label_map_path)
    found = scan_layer_folders(root, label_map)
    references = flat_field_references(label_map, found)
    k = label_map.quarter_turns
    rng = np.random.default_rng(seed)
    frames: list[Frame] = []
    builds = []
    started = time.time()
    for folder in sorted({label for label, _ in found}):
        camera = label_map.camera(folder)
        if camera is None:
            raise BadInput(f"{folder}: the label map gives its layers no camera (bed corners)")
        paths = sorted((p for label, p in found if label == folder), key=lambda p: p.name)
        commissioning, paths = paths[0], paths[1:]
        if not paths:
            continue
        work = out / "builds" / folder
        reference = load_photograph(commissioning, k)
        h, w = reference.shape
        corners = bed_corners_px(camera, w, h)
        flat_field = references.get(camera.name)
        config = camera_config(binary, config_text, _save(reference, work / "commissioning-frame.png"), corners, flat_field, k, work)

        def frame(path: Path, kind: str) -> Frame:
            image = load_photograph(path, k)
            if image.shape != reference.shape:
                raise BadInput(f"{path}: {image.shape[1]}x{image.shape[0]} px, its build's commissioning frame {commissioning} is {w}x{h}")
            if kind != "clean":
                image = corrupt(image, kind, corners, rng)
            stem = path.name.rsplit(".", 1)[0].replace(" ", "_")
            return Frame(_save(image, work / "frames" / f"{stem}-{kind}.png"), f"{folder}/{path.name}", kind)

        chosen = pick(paths, per_folder)
        before = [commissioning] + chosen[:-1]  # a judged layer of another bed before each
        sequences = [[frame(p, "clean") for p in runs(paths, per_folder)]]
        for kind in NEW_LAYER:
            sequences.append([f for prev, p in zip(before, chosen) for f in (frame(prev, "clean"), frame(p, kind))])
        for kind in REPEATS:
            sequences.append([f for p in chosen for f in (frame(p, "clean"), frame(p, kind))])
        for sequence in sequences:
            analyze_sequence(binary, config, sequence)
        if progress:
            print(f"frame checks: {folder}: {sum(len(q) for q in sequences)} frames judged", file=sys.stderr)
        # the clean frames between corrupted ones are there to be judged; the false alarms are
        # counted on the runs of the first sequence. Each chosen layer is judged clean once before
        # its repeats: whether that passed tells a check that fired on a real problem of the
        # layer from one that missed the corruption.
        clean_passes = {f.layer: fired(f) is None for q in sequences[-len(REPEATS):] for f in q if f.kind == "clean"}
        corrupted = [f for q in sequences[1:] for f in q if f.kind != "clean"]
        for f in corrupted:
            f.clean_passes = clean_passes.get(f.layer)
        frames += sequences[0] + corrupted
        builds.append({"build": folder, "camera": camera.name, "commissioning": f"{folder}/{commissioning.name}", "flat_field": flat_field is not None, "config": str(config), "frame_px": [w, h]})
    report = summarise(frames)
    report["builds"] = builds
    report["seconds"] = round(time.time() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frame-checks.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "frame-checks.md").write_text(markdown(report))
    return report


def summarise(frames: list[Frame]) -> dict[str, Any]:
    clean = [f for f in frames if f.kind == "clean"]
    clean_fired = Counter(fired(f) for f in clean if fired(f))
    detection = {}
    for kind, (what, expected) in CORRUPTIONS.items():
        cases = [f for f in frames if f.kind == kind]
        found = [f for f in cases if fired(f) in expected]
        passing = [f for f in cases if f.clean_passes]
        found_passing = [f for f in passing if fired(f) in expected]
        detection[kind] = {
            "what": what,
            "expected": sorted(expected),
            "frames": len(cases),
            "detected": len(found),
            "rate": len(found) / len(cases) if cases else None,
            "frames_clean_passes": len(passing),
            "detected_clean_passes": len(found_passing),
            "rate_clean_passes": len(found_passing) / len(passing) if passing else None,
            "fired_instead": dict(Counter(fired(f) or "none" for f in cases if fired(f) not in expected)),
        }
    check_ms = [f.result["timing_ms"]["check_ms"] for f in clean if f.result and f.result.get("timing_ms")]
    return {
        "check_ms": {"median": float(np.median(check_ms)), "p95": float(np.percentile(check_ms, 95))} if check_ms else None,
        "clean_frames": len(clean),
        "layers": sorted({f.layer for f in clean}),
        "false_alarms": {check: {"frames": n, "rate": n / len(clean)} for check, n in sorted(clean_fired.items())},
        "clean_with_any_check": sum(clean_fired.values()),
        "false_alarm_layers": [{"layer": f.layer, "check": fired(f), "reason": f.result["frame_check"]["reason"]} for f in clean if fired(f)],
        "detection": detection,
    }


def markdown(report: dict[str, Any]) -> str:
    n = report["clean_frames"]
    lines = [
        "# Frame checks on real frames",
        "",
        f"{n} clean real layers (in runs of 5 consecutive ones) from {len(report['builds'])} builds, and corrupted copies of others, "
        "judged in order by `bedsight analyze` with each build's corners, flat field and commissioning frame as its integrator would set them. "
        "Regenerate: `python -m bedsight_train.frame_check_eval --layers ../shared/data/pblm --out out/frame-checks`.",
        "",
        "Detection: the share of corrupted frames on which the expected check fired; in the last column, of those whose "
        "layer's own clean frame passed every check (elsewhere an earlier check, most often camera_moved, fires first on "
        "the clean frame and on its corruptions alike).",
        "",
        "| frames | check expected | frames | fired | detection | detection where the clean frame passes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, d in report["detection"].items():
        rate = f"{d['rate'] * 100:.1f} %" if d["rate"] is not None else "-"
        rate_ok = f"{d['detected_clean_passes']} of {d['frames_clean_passes']} ({d['rate_clean_passes'] * 100:.1f} %)" if d["rate_clean_passes"] is not None else "-"
        instead = ", ".join(f"{k} {v}" for k, v in d["fired_instead"].items())
        lines.append(f"| {kind}: {d['what']} | {' or '.join(d['expected'])} | {d['frames']} | {d['detected']} | {rate}{' (else: ' + instead + ')' if instead else ''} | {rate_ok} |")
    lines += ["", "| check | false alarms on clean frames |", "|---|---:|"]
    checks = ["frozen", "camera_moved", "blurred", "low_contrast", "occluded", "black", "over_exposed", "format"]
    for check in checks:
        k = report["false_alarms"].get(check, {"frames": 0})["frames"]
        lines.append(f"| {check} | {k} of {n} ({k / n * 100:.1f} %) |" if n else f"| {check} | - |")
    if report.get("check_ms"):
        lines += ["", f"The checks took {report['check_ms']['median']:.1f} ms per clean frame (median; p95 {report['check_ms']['p95']:.1f} ms) in `bedsight analyze` on this machine."]
    if report["false_alarm_layers"]:
        lines += ["", "Clean frames a check kept from the model:", ""]
        lines += [f"- {a['layer']}: {a['check']}: {a['reason']}" for a in report["false_alarm_layers"]]
    lines += ["", "Builds:", ""]
    for b in report["builds"]:
        lines.append(f"- {b['build']} (camera {b['camera']}, {b['frame_px'][0]}x{b['frame_px'][1]} px): commissioning frame {b['commissioning']}, flat field {'yes' if b['flat_field'] else 'no'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bedsight_train.frame_check_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=Path, required=True, help="folder of label folders of real layers (e.g. the PBLM photographs)")
    parser.add_argument("--label-map", type=Path, default=Path("pblm"), help="the label map with the cameras (TOML, or `pblm`)")
    parser.add_argument("--per-folder", type=int, default=50, help="layers per label folder and sequence (default 50)")
    parser.add_argument("--config", type=Path, default=None, help="configuration to set each camera's keys in (default: assets/bedsight.toml)")
    parser.add_argument("--bin", type=Path, default=None, help="the bedsight binary (default: $BEDSIGHT_BIN, PATH, target/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        binary = find_binary(args.bin)
        if binary is None:
            raise BadInput("no bedsight binary: build it (cargo build --release --bin bedsight) or pass --bin")
        config = args.config or default_config_path()
        if config is None or not config.is_file():
            raise BadInput("no configuration: pass --config")
        if args.per_folder < 2:
            raise BadInput(f"--per-folder {args.per_folder}: at least 2")
        report = evaluate(args.layers, args.label_map, args.per_folder, args.out, binary, config.read_text(), args.seed)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
