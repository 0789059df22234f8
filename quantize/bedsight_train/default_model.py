"""The default model that ships in the repository: check it on the sample build and lay it out.

`python -m bedsight_train.default_model --work WORK --assets ASSETS` is the last step of
quantize/scripts/build-default-model.sh. It

- runs the fp32 and INT8 graphs on every layer of WORK/sample-build with the appliance's fusion
  and checks that every planted class is found where it was planted and that clean layers stay
  clean: (almost) no pixel of any class, and no defect the box would report (a component of a
  defect class as large as the shipped configuration's min_defect_area_mm2); it fails otherwise;
- lays out the unpacked model (manifest.toml, model.onnx, model.int8.onnx), a self-test sample and
  the training, calibration and evaluation plots, with a report.md and metrics.json that hold the
  measured numbers, and, only when the check passes and the held-out clean real layers
  (WORK/eval-real/real-eval.json) all PASS with under 1 % of their beds flagged, copies it to
  ASSETS/default-model/ and the sample build to ASSETS/sample-build/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import build_replay
from . import data as data_mod
from .common import BadInput, ClassInfo, class_colours_rgb, limit_threads, load_grey, read_toml
from .evaluate import check_manifest, overlay, run_members
from .export import ort_session
from .metrics import fuse

# A planted class counts as found when at least this share of its planted pixels, or at least
# MIN_FOUND_PIXELS of them, come out as that class.
MIN_FOUND_SHARE = 0.25
MIN_FOUND_PIXELS = 40
# A clean layer may have at most this share of its pixels called a defect or lattice (33 px at
# 256x256, 524 at 1024x1024) and no defect as large as the box reports (judge_layer), and a layer
# with planted classes at most MAX_STRAY_SHARE of its pixels called a class that was not planted
# there.
MAX_CLEAN_SHARE = 0.0005
MAX_STRAY_SHARE = 0.001
# The real-bed gate (issue 20's targets for real beds): every clean held-out real layer PASS with
# under MAX_CLEAN_REAL_FLAGGED of those beds flagged on average, and at least MIN_DEFECTIVE_NOT_PASS
# of the defective held-out real layers not PASS, in all and in each defective folder (a folder is
# one kind of defect: a model that stopped 96 % of them in all let 12 of 32 scratched Deformation
# beds PASS, measured 2026-12-06). A model that passes the synthetic sample build
# can still stop a printer on every clean real layer (measured 2026-12-04: quantize/README.md,
# "Real beds"), and one that is quiet on clean beds can be quiet on every real defect too (the
# curriculum with the clean beds as background: 0 of 270 uneven layers found), so neither the
# sample build nor the clean beds alone replace the shipped model.
MAX_CLEAN_REAL_FLAGGED = 0.01
MIN_DEFECTIVE_NOT_PASS = 0.90


def check_real_beds(real_eval: dict[str, Any] | None) -> dict[str, Any]:
    """The real-bed gate on `real_eval.py`'s report (real-eval.json): fails when there is none
    (the build judged no real bed), when it holds no clean or no defective layer, when a clean
    layer is not PASS, when the clean layers' mean flagged share is MAX_CLEAN_REAL_FLAGGED or
    more, or when under MIN_DEFECTIVE_NOT_PASS of the defective layers, or of one defective
    folder's, are not PASS (the folder found least is named)."""
    if real_eval is None:
        return {"ok": False, "why": "no real-layer evaluation (eval-real/real-eval.json): the model was not judged on real beds"}
    clean = real_eval["clean"]
    if clean["layers"] == 0:
        return {"ok": False, "why": "the real-layer evaluation holds no clean layer"}
    share = clean["mean_flagged_share"]
    if clean["not_pass"]:
        return {"ok": False, "why": f"{clean['not_pass']} of {clean['layers']} clean real layers not PASS"}
    if share is None:
        return {"ok": False, "why": "no clean real layer has a mask to measure its flagged share"}
    if share >= MAX_CLEAN_REAL_FLAGGED:
        return {"ok": False, "why": f"clean real layers {share * 100:.2f} % flagged on average (at most {MAX_CLEAN_REAL_FLAGGED * 100:.0f} %)"}
    # a folder's layers are defective when its label names a class (FAULT layers count as not PASS:
    # the box stopped the printer and asked for a person)
    defective = {name: f for name, f in real_eval["per_folder"].items() if f["label_classes"] and f["layers"]}
    layers = sum(f["layers"] for f in defective.values())
    if layers == 0:
        return {"ok": False, "why": "the real-layer evaluation holds no defective layer"}
    stopped = {name: f["layers"] - f["verdicts"]["PASS"] for name, f in defective.items()}
    found = sum(stopped.values())
    clean_why = f"{clean['layers']} of {clean['layers']} clean real layers PASS, {share * 100:.2f} % flagged on average"
    defective_why = f"{found} of {layers} defective real layers not PASS ({found / layers * 100:.1f} %"
    least = min(defective, key=lambda name: stopped[name] / defective[name]["layers"])
    least_share = stopped[least] / defective[least]["layers"]
    if found / layers < MIN_DEFECTIVE_NOT_PASS:
        why = f"{clean_why}, but {defective_why}, at least {MIN_DEFECTIVE_NOT_PASS * 100:.0f} %); {least}: {stopped[least]} of {defective[least]['layers']}"
        return {"ok": False, "why": why}
    if least_share < MIN_DEFECTIVE_NOT_PASS:
        why = (f"{clean_why}; {defective_why}), but {least}: {stopped[least]} of {defective[least]['layers']} not PASS "
               f"({least_share * 100:.1f} %, at least {MIN_DEFECTIVE_NOT_PASS * 100:.0f} % of each defective folder)")
        return {"ok": False, "why": why}
    return {"ok": True, "why": f"{clean_why}; {defective_why})"}


def largest_defect(mask: np.ndarray, defect_ids: list[int]) -> tuple[int, int | None]:
    """The largest connected component of any defect class in `mask` (8-connected, as the box's
    measurement labels them): its pixels and its class index, (0, None) when there is none."""
    best: tuple[int, int | None] = (0, None)
    for k in defect_ids:
        labelled, n = ndimage.label(mask == k, structure=np.ones((3, 3), dtype=bool))
        if n:
            size = int(np.bincount(labelled.ravel())[1:].max())
            if size > best[0]:
                best = (size, k)
    return best


def judge_layer(mask: np.ndarray, truth: np.ndarray, layer: dict[str, Any], names: list[str], defect_ids: list[int], min_area_px: int) -> dict[str, Any]:
    """One sample-build layer's row: each planted class found where it was planted (at least
    MIN_FOUND_SHARE of its pixels or MIN_FOUND_PIXELS of them); a clean layer with at most
    MAX_CLEAN_SHARE of its pixels called a class, a planted layer with at most MAX_STRAY_SHARE of
    its pixels called a class that was not planted there; and a layer that should PASS (clean, or
    planted with classes that are no defects, such as lattice) with no defect of `min_area_px`
    pixels or more (the box would report it and might stop the printer for it). `ok` is all of it."""
    found = {}
    ok = True
    for k in layer["planted_index"]:
        planted = truth == k
        hit = int((planted & (mask == k)).sum())
        share = hit / max(1, int(planted.sum()))
        good = share >= MIN_FOUND_SHARE or hit >= MIN_FOUND_PIXELS
        found[names[k]] = {"planted_px": int(planted.sum()), "found_px": hit, "share": share, "ok": good}
        ok &= good
    non_background = float((mask > 0).mean())
    stray = float(((mask > 0) & ~np.isin(mask, layer["planted_index"])).mean())
    should_pass = not any(k in defect_ids for k in layer["planted_index"])
    largest_px, largest_class = largest_defect(mask, defect_ids) if should_pass else (0, None)
    clean_ok = (non_background <= MAX_CLEAN_SHARE if layer["clean"] else stray <= MAX_STRAY_SHARE) and largest_px < min_area_px
    return {
        "file": layer["file"],
        "planted": layer["planted"],
        "found": found,
        "clean": layer["clean"],
        "clean_ok": clean_ok,
        "ok": bool(ok and clean_ok),
        "non_background_share": non_background,
        "stray_share": stray,
        "largest_defect_px": largest_px,
        "largest_defect_class": names[largest_class] if largest_class is not None else None,
        "predicted_px": {names[k]: int((mask == k).sum()) for k in range(1, len(names)) if (mask == k).any()},
    }


def config_min_area_px(config: Path, manifest: dict[str, Any]) -> int:
    """The box's smallest reported defect in pixels of the model's mask, under `config` (the
    shipped bedsight.toml): [model] min_defect_area_mm2 over the [bed]'s size."""
    from .real_eval import DEFAULT_MIN_AREA_MM2, min_area_px

    doc = read_toml(config)
    bed = doc.get("bed", {})
    area = float(doc.get("model", {}).get("min_defect_area_mm2", DEFAULT_MIN_AREA_MM2))
    size = (int(manifest["input"]["width"]), int(manifest["input"]["height"]))
    return min_area_px(area, (float(bed["width_mm"]), float(bed["height_mm"])), size)


def check_sample_build(graph: Path, manifest: dict[str, Any], sample: Path, min_area_px: int) -> dict[str, Any]:
    ledger = read_toml(sample / "layers.toml")
    session = ort_session(graph)
    names = [c["name"] for c in manifest["classes"]]
    defect_ids = [k for k, c in enumerate(manifest["classes"]) if c["defect"]]
    mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]
    temps = manifest["ensemble"]["temperatures"]
    rows, ok = [], True
    masks_out, seconds = [], []
    for layer in ledger["layers"]:
        image = load_grey(sample / layer["file"])
        truth = load_grey(sample / "masks" / layer["file"])
        x = data_mod.to_input(image[None], mean, std)
        t0 = time.perf_counter()
        logits = run_members(session, x)
        seconds.append(time.perf_counter() - t0)
        _, mask, uncertainty = fuse(logits, temps)
        masks_out.append(mask)
        row = judge_layer(mask, truth, layer, names, defect_ids, min_area_px)
        row["mean_uncertainty"] = float(uncertainty.mean())
        ok &= row["ok"]
        rows.append(row)
    return {"ok": bool(ok), "layers": rows, "min_area_px": min_area_px, "seconds_per_layer": float(np.median(seconds)), "masks": masks_out}


def format_check(result: dict[str, Any], label: str) -> str:
    lines = [f"sample build, {label} graph ({result['seconds_per_layer'] * 1000:.0f} ms per layer in onnxruntime; the box reports a defect from {result['min_area_px']} px):"]
    for row in result["layers"]:
        if row["clean"]:
            status = "ok" if row["clean_ok"] else "FALSE ALARM"
            largest = f", largest defect {row['largest_defect_class']} {row['largest_defect_px']} px" if row["largest_defect_px"] else ""
            lines.append(f"  {row['file']}  clean: {row['non_background_share'] * 100:.3f}% non-background{largest}  {status}  {row['predicted_px'] or ''}")
        else:
            parts = [
                f"{name} {f['found_px']}/{f['planted_px']} px ({f['share'] * 100:.0f}%) {'ok' if f['ok'] else 'MISSED'}"
                for name, f in row["found"].items()
            ]
            stray = "" if row["clean_ok"] else f"; STRAY classes on {row['stray_share'] * 100:.3f}% of the layer"
            if row["largest_defect_px"]:
                stray += f", largest defect {row['largest_defect_class']} {row['largest_defect_px']} px on a layer that should PASS"
            lines.append(f"  {row['file']}  " + "; ".join(parts) + stray + f"  {row['predicted_px']}")
    lines.append("  => " + ("every planted class found, nothing else called" if result["ok"] else "CHECK FAILED"))
    return "\n".join(lines)


def _mosaic(sample: Path, result: dict[str, Any], classes: list[ClassInfo], path: Path) -> None:
    """Each sample layer with the fused mask drawn over it (top: truth, bottom: prediction)."""
    from PIL import Image

    colours = class_colours_rgb(classes)
    tiles_truth, tiles_pred = [], []
    for row, mask in zip(result["layers"], result["masks"]):
        image = load_grey(sample / row["file"])
        truth = load_grey(sample / "masks" / row["file"])
        tiles_truth.append(overlay(image, truth, colours))
        tiles_pred.append(overlay(image, mask, colours))
    grid = np.concatenate([np.concatenate(tiles_truth, 1), np.concatenate(tiles_pred, 1)], 0)
    scale = 0.5 if grid.shape[1] > 2048 else 1.0
    im = Image.fromarray(grid)
    if scale != 1.0:
        im = im.resize((int(grid.shape[1] * scale), int(grid.shape[0] * scale)), Image.BILINEAR)
    im.save(path)


# Hand-labelled layers shown in report/real-overlays.png: one of each folder, then a second.
OVERLAYS_PER_FOLDER = 2


def _overlay_mosaic(folder: Path, path: Path) -> None:
    """The real-eval overlays of the first OVERLAYS_PER_FOLDER hand-labelled layers of each
    folder, in rows of four at half size: what an operator would look at."""
    from PIL import Image

    picked: dict[str, list[Path]] = {}
    for overlay_path in sorted(folder.glob("*.png")):
        picked.setdefault(overlay_path.name.split("__", 1)[0], []).append(overlay_path)
    tiles = [Image.open(p).convert("RGB") for paths in picked.values() for p in paths[:OVERLAYS_PER_FOLDER]]
    if not tiles:
        return
    w, h = tiles[0].width // 2, tiles[0].height // 2
    columns = 4
    rows = (len(tiles) + columns - 1) // columns
    mosaic = Image.new("RGB", (columns * w, rows * h))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile.resize((w, h)), ((i % columns) * w, (i // columns) * h))
    mosaic.save(path)


def finalize(work: Path, assets: Path, command: str) -> bool:
    from .pack import make_selftest

    limit_threads()
    model_dir = work / "model"
    # everything is laid out under WORK first and replaces ASSETS/default-model and
    # ASSETS/sample-build only when the sample-build check and the real-bed gate pass
    out = work / "default-model"
    sample = work / "sample-build"
    manifest = check_manifest(model_dir / "manifest.toml", read_toml(model_dir / "manifest.toml"))
    classes = [ClassInfo(c["name"], c["colour"], c["defect"]) for c in manifest["classes"]]

    checks = {}
    min_area = config_min_area_px(assets / "bedsight.toml", manifest)
    for label, graph in (("fp32", model_dir / "model.onnx"), ("int8", model_dir / "model.int8.onnx")):
        checks[label] = check_sample_build(graph, manifest, sample, min_area)
        print(format_check(checks[label], label))

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("manifest.toml", "model.onnx", "model.int8.onnx"):
        shutil.copyfile(model_dir / name, out / name)
    make_selftest(out / "model.onnx", manifest, out / "selftest")
    plots = out / "report"
    plots.mkdir()
    copies = {
        work / "run" / "curves.png": "training-curves.png",
        work / "run" / "reliability.png": "reliability-members.png",
        work / "eval-fp32" / "confusion.png": "confusion-fp32-test.png",
        work / "eval-int8" / "confusion.png": "confusion-int8-test.png",
        work / "eval-int8" / "reliability.png": "reliability-int8-test.png",
    }
    for src, dst in copies.items():
        if src.exists():
            shutil.copyfile(src, plots / dst)
    _mosaic(sample, checks["int8"], classes, plots / "sample-build-int8.png")

    history = json.loads((work / "run" / "history.json").read_text())
    calibration = json.loads((work / "run" / "calibration.json").read_text())
    export_report = json.loads((model_dir / "model.export.json").read_text())
    quant_report = json.loads((model_dir / "model.int8.quantize.json").read_text())
    eval_fp32 = json.loads((work / "eval-fp32" / "metrics.json").read_text())
    eval_int8 = json.loads((work / "eval-int8" / "metrics.json").read_text())
    run_info = json.loads((work / "run" / "run.json").read_text())
    metrics = {
        "train_seconds": history.get("train_seconds"),
        "epochs": len(history["epochs"]),
        "parameters": run_info.get("parameters"),
        "config": run_info["config"],
        "calibration": calibration,
        "flops": export_report["flops"],
        "onnx_max_abs_diff": export_report["max_abs_diff"],
        "quantize": quant_report,
        "test_fp32": {k: eval_fp32[k] for k in ("cpa", "iou", "mpa", "miou", "ece", "auroc")},
        "test_int8": {k: eval_int8[k] for k in ("cpa", "iou", "mpa", "miou", "ece", "auroc")},
        "sample_build": {label: {k: v for k, v in c.items() if k != "masks"} for label, c in checks.items()},
        "init": run_info.get("init"),
        "min_scale": run_info.get("min_scale", 1.0),
        "layers": run_info.get("layers"),
    }
    layer_eval = work / "eval-layers" / "layer-metrics.json"
    if layer_eval.exists():
        metrics["test_layers_int8"] = json.loads(layer_eval.read_text())
    metrics["real_layers"] = run_info.get("real_layers")
    alt = work / "eval-alt-fp32" / "metrics.json"
    if alt.exists():
        metrics["alt_generator_fp32"] = {k: json.loads(alt.read_text())[k] for k in ("cpa", "iou", "mpa", "miou")}
    real = work / "eval-real" / "real-eval.json"
    report = json.loads(real.read_text()) if real.exists() else None
    real_gate = check_real_beds(report)
    print(f"real beds: {real_gate['why']}  {'ok' if real_gate['ok'] else 'CHECK FAILED'}")
    metrics["real_gate"] = real_gate
    if report is not None:
        metrics["real_eval"] = {k: report[k] for k in ("split", "overall", "per_folder", "clean", "classification", "hand_labelled", "builds") if k in report}
        shutil.copyfile(work / "eval-real" / "real-eval.md", out / "real-eval.md")
        _overlay_mosaic(work / "eval-real" / "overlays", plots / "real-overlays.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "report.md").write_text(_report(metrics, manifest, command, checks))
    from .presets import carry

    carry(assets / "default-model", out)  # the width comparison, its shipped row from this model's figures
    if not all(c["ok"] for c in checks.values()) or not real_gate["ok"]:
        print(f"left {assets} as it was; the rejected model is in {out}")
        return False
    for name, src in (("default-model", out), ("sample-build", sample)):
        dst = assets / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
    print(f"wrote {assets / 'default-model'} and {assets / 'sample-build'}")
    return True


def _report(m: dict[str, Any], manifest: dict[str, Any], command: str, checks: dict[str, Any]) -> str:
    names = [c["name"] for c in manifest["classes"]]

    def f(v, d=4):
        return "-" if v is None else f"{v:.{d}f}"

    lines = [
        "# The default model",
        "",
        f"`{manifest['name']}` {manifest['version']}: {manifest['description']}.",
        "",
        f"Rebuild it with `{command}` (its opening comment says how long that takes on two CPU cores).",
    ]
    if m.get("real_layers"):
        real = m["real_layers"]
        camera = (
            "Each real layer reaches the network as the box's camera path delivers it: the bed cut out by its camera's corners and the "
            "camera's lighting divided out (flat field), then lit anew (exposure, gradients, vignetting, blur, noise, JPEG)."
        )
        if real.get("weak_weight", 1.0) == 0:
            lines += [
                "",
                f"Real beds (`train --real-layers ... --weak-weight 0`, realbed.py): beside the pixel losses on synthetic layers, synthetic defects "
                f"planted on crops of the {real['clean_train_layers']} clean real training layers of `{Path(real['root']).name}` (label map "
                f"`{Path(real['label_map']).name}`), with their masks, {real['plant_batch']} crops per step, a third of them flush with a side of the bed "
                f"so that its dim rim is seen as powder. {camera} The weak losses from the image-level labels are off: measured on the held-out "
                "real layers, they drove incompleteness and streaking to zero on every layer, synthetic ones included (quantize/README.md, "
                f"\"Real beds\"). {real['val_layers']} validation real layers rank the checkpoints (with the synthetic validation Score) and fit "
                "nothing else. It judges the bed at 1024x1024 (about 0.24 mm per pixel).",
            ]
        else:
            own_k = "".join(f", {name} over {share * 100:.2f} %" for name, share in real.get("presence_top_k", {}).items())
            lines += [
                "",
                f"Real beds (`train --real-layers`, realbed.py): beside the pixel losses on synthetic layers, {real['train_layers']} real layers of "
                f"`{Path(real['root']).name}` ({'at most ' + str(real['max_per_label']) + ' per label folder of ' if real.get('max_per_label') else ''}their training split; label map "
                f"`{Path(real['label_map']).name}`) under weak pixel losses: a class the label does not name is absent from every pixel (Pathak et al. 2015), "
                f"a class it names is somewhere (top-k pooling over {real['top_k_share'] * 100:.1f} % of a whole layer{own_k}, WILDCAT); and synthetic defects planted "
                f"on crops of the {real['clean_train_layers']} clean real training layers, with their masks. {camera} Per step: {real['plant_batch']} planted crops, "
                f"{real['real_batch']} real crops under the absence loss, one whole defective real layer every {real['mil_every']} steps. {real['val_layers']} "
                "validation real layers rank the checkpoints (with the synthetic validation Score) and fit nothing else. It judges the bed at 1024x1024 "
                "(about 0.24 mm per pixel).",
            ]
    elif m.get("layers"):
        lay = m["layers"]
        lines += [
            "Multi-task (seed 004): the segmentation heads learn from synthetic layers (`bedsight-train synth`), a layer-level "
            f"classification head on the same encoder from {lay['train_layers']} real layers of `{Path(lay['root']).name}` "
            f"(at most {lay['max_per_label']} per label; label map `{Path(lay['label_map']).name}`: classes {', '.join(lay['classes'])}); "
            f"{lay['val_layers']} more real layers are its validation split (temperature, checkpoint ranking). It is still a demo model, not one for a real printer.",
        ]
    else:
        lines.append("Trained on synthetic layers only (`bedsight-train synth`): it is a demo model for `bedsight demo`, not one for a real printer.")
    if m.get("init"):
        lines.append(
            f"The last stage of training started from the checkpoint `{Path(m['init']).parent.parent.name}/{Path(m['init']).name}` "
            f"of the stage before it (`{command}` says what each stage does)."
        )
    if m.get("min_scale", 1.0) < 1.0:
        lines.append(
            f"Multi-scale crops: half the synthetic crops and half the planted real ones are windows of up to {1 / m['min_scale']:g} times the crop's side shrunk to the crop "
            "(`train --min-scale`), so the network also sees each pattern at the scale of its first stage, whole layers at 256x256 "
            "(quantize/README.md, \"Real beds\")."
        )
    lines += [
        "",
        "## Training",
        f"- {m['epochs']} epochs in {m['train_seconds'] / 60:.1f} min on the CPU; {m['parameters']:,} parameters; widths {json.dumps(m['config'])}",
        f"- input {manifest['input']['width']}x{manifest['input']['height']} grey, mean {manifest['input']['mean'][0]:.4f}, std {manifest['input']['std'][0]:.4f}"
        " (trained on crops; the fully convolutional graph is exported at the bed's full size, and the appliance rectifies the bed to it)",
        f"- FLOPs at that size: one member {m['flops']['member'] / 1e9:.3f} G, ensemble of {manifest['ensemble']['members']} {m['flops']['ensemble'] / 1e9:.3f} G"
        f" ({m['flops']['ensemble_over_member']:.2f}x; 5 members would be {m['flops']['five_members_over_member']:.2f}x, seed 000 §4.4 claims under 2x)",
        f"- onnxruntime vs PyTorch on the exported graph: max |logit difference| {m['onnx_max_abs_diff']:.2e}",
        "",
        "## Calibration (validation split; seed 000 Table 3)",
        "",
        "| member | checkpoint | MPA | MIoU | Score | T | ECE before | ECE after | NLL before | NLL after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["calibration"]["members"]:
        lines.append(f"| #{r['member']} | {r['checkpoint']} | {f(r['mpa'])} | {f(r['miou'])} | {f(r['score'])} | {f(r['temperature'])} | {f(r['ece_before'], 5)} | {f(r['ece_after'], 5)} | {f(r['nll_before'], 5)} | {f(r['nll_after'], 5)} |")
    e = m["calibration"]["ensemble"]
    lines += [
        "",
        f"Fused ensemble: ECE {f(e['before']['ece'], 5)} before, {f(e['after']['ece'], 5)} after calibration; NLL {f(e['before']['nll'], 5)} -> {f(e['after']['nll'], 5)}.",
        "",
        "## Test split (fp32 vs INT8, fused ensemble)",
        "",
        "| class | CPA fp32 | CPA int8 | IoU fp32 | IoU int8 |",
        "|---|---|---|---|---|",
    ]
    for k, name in enumerate(names):
        lines.append(f"| {name} | {f(m['test_fp32']['cpa'][k])} | {f(m['test_int8']['cpa'][k])} | {f(m['test_fp32']['iou'][k])} | {f(m['test_int8']['iou'][k])} |")
    lines += [
        f"| **MPA** | {f(m['test_fp32']['mpa'])} | {f(m['test_int8']['mpa'])} | | |",
        f"| **MIoU** | | | {f(m['test_fp32']['miou'])} | {f(m['test_int8']['miou'])} |",
        "",
        f"ECE (10 bins) {f(m['test_fp32']['ece'], 5)} fp32, {f(m['test_int8']['ece'], 5)} INT8; AUROC of the uncertainty map for misclassified pixels {f(m['test_fp32']['auroc'])} fp32, {f(m['test_int8']['auroc'])} INT8.",
        f"Graph sizes: {m['quantize']['fp32_bytes'] / 1024:.0f} KiB fp32, {m['quantize']['int8_bytes'] / 1024:.0f} KiB INT8.",
        "CPA follows seed 000 Eq. 24: TP / (TP + FP).",
        "",
    ]
    if m.get("test_layers_int8"):
        from .layer_report import layer_report_md

        lines += [
            "## Layer classification on real layers (INT8 graph)",
            "",
            layer_report_md(m["test_layers_int8"]),
            "Read these figures with care. The split keeps blocks of 10 consecutive layers together, but layers of one build "
            "look alike across blocks, and the test split holds no clean layer (all 18 clean PBLM layers fall in training "
            "groups), so the figures say little about false alarms on clean real powder and likely overstate what the head "
            "does on another printer. The segmentation heads have seen no real layer: on real powder they call large "
            "areas incompleteness and hopping (see `bedsight demo --build real`), so on real layers the box's verdict "
            "comes from segmentation that does not transfer, and the layer head adds a calibrated second opinion.",
            "",
        ]
    if m.get("alt_generator_fp32"):
        main, alt = m["test_fp32"]["miou"], m["alt_generator_fp32"]["miou"]
        lines += [
            "## The second generator (synth_alt.py, never trained on; fp32)",
            "",
            f"MIoU {f(alt)} on 40 layers of the second generator against {f(main)} on the first generator's test split: "
            f"a difference of {f(main - alt)} (the target is at most 0.10). The difference is what the model learned of the first generator rather than of defects.",
            "",
            "| class | IoU first generator | IoU second generator |",
            "|---|---|---|",
        ]
        for k, name in enumerate(names):
            lines.append(f"| {name} | {f(m['test_fp32']['iou'][k])} | {f(m['alt_generator_fp32']['iou'][k])} |")
        lines.append("")
    if m.get("real_eval"):
        r = m["real_eval"]
        clean, cls, hand = r["clean"], r["classification"], r["hand_labelled"]
        lines += [
            "## Real layers, as the box judges them (held-out split, the shipped configuration: fp32 on these CPUs, precision \"auto\")",
            "",
            "The whole report, with intervals, per-class tables and what the figures cannot show, is `real-eval.md` beside this file; "
            "report/real-overlays.png shows hand-labelled layers as an operator would see them (tint: the box's flagged pixels; outline: the hand labels).",
            "",
            "| folder | layers | not PASS | mean flagged share of the bed |",
            "|---|---|---|---|",
        ]
        for label, folder in r["per_folder"].items():
            lines.append(f"| {label} | {folder['layers']} | {folder['not_pass_share'] * 100:.0f} % | {folder['mean_flagged_share'] * 100:.2f} % |")
        inside = hand.get("inside_any_share")
        lines += [
            "",
            f"- Clean layers ({', '.join(clean['folders'])}): {clean['layers']} layers, false-alarm rate {clean['false_alarm_rate'] * 100:.0f} %, mean flagged share {clean['mean_flagged_share'] * 100:.2f} % (targets: PASS, under 1 %).",
            f"- Layer classes (a class found when the box reports a defect of it and does not PASS): macro F1 {cls['macro_f1']:.3f} over {cls['layers']} layers (target 0.90).",
            f"- Hand-labelled layers: {'n/a' if inside is None else f'{inside * 100:.0f} %'} of the flagged pixels inside the labelled regions (target 60 %); "
            f"regions detected with their own class {hand['regions']['all']['detected_same']} of {hand['regions']['all']['regions']}.",
            "",
        ]
        if r.get("builds"):
            lines += build_replay.markdown(r["builds"], {label: f["label_classes"] for label, f in r["per_folder"].items()})
    if m.get("real_gate"):
        gate = m["real_gate"]
        lines += [f"Real-bed gate (the model replaces the shipped one only if it passes): {gate['why']}, {'passed' if gate['ok'] else 'FAILED'}.", ""]
    lines += [
        "## Sample build (assets/sample-build)",
        "",
        "```",
        format_check(checks["fp32"], "fp32"),
        format_check(checks["int8"], "int8"),
        "```",
        "",
        "Plots: report/training-curves.png, report/reliability-members.png (Fig. 7), report/confusion-*-test.png, report/reliability-int8-test.png, "
        "report/sample-build-int8.png (top: planted truth, bottom: INT8 prediction).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bedsight_train.default_model")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--assets", type=Path, required=True)
    p.add_argument("--command", default="quantize/scripts/build-default-model.sh")
    args = p.parse_args(argv)
    try:
        ok = finalize(args.work, args.assets, args.command)
    except BadInput as e:
        print(f"default model: error: {e}", file=sys.stderr)
        return 2
    if not ok:
        print("default model: the sample-build check or the real-bed gate failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
