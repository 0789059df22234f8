"""`bedsight-train export`: one ONNX graph with the shared trunk and the M heads, and its manifest.

The graph follows the appliance's model contract (docs/model-image.md): input `image` float32
[1, C, H, W], output `logits` float32 [1, M, K, H, W], static shapes, opset 17, only plain ops
(Conv, Relu, pooling, Resize with fixed scales, Concat, Sigmoid, MatMul, Reshape) so that both
onnxruntime and tract run it. Feature reuse: one trunk F(H(x)), M heads S_i (seed 000 Eq. 14).

The export checks itself: onnxruntime must reproduce PyTorch's logits on the same input to within
1e-3, and it reports the FLOPs of one member and of the whole ensemble (seed 000 §4.4 reports 165.1
vs 299.4 GFLOPs for 5 members: under 2x).

A multi-task ensemble (a layer head, `train --layers`) has the contract's optional second output
`layer_logits` [1, L], checked against PyTorch the same way, and its manifest a [layer_head] table
(format 1.1) with the classes and the temperature `calibrate` fitted.

The manifest (manifest.toml next to the graph) carries every table of docs/model-image.md except
[graphs] and [files], which `bedsight image pack` adds.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .calibrate import load_ensemble, read_run, run_label_map, run_split
from .common import BadInput, limit_threads, toml_dumps

MAX_ABS_DIFF = 1e-3
# seed 000 §4.4: ISDNet-SR's count at 1024x1024 by thop (multiply-adds), one member and 5
PAPER_GMAC = {"member": 165.1, "five": 299.4}
# the members' weights beside the exported graph, packed as the image's training/ensemble.pt
WEIGHTS_NAME = "ensemble.pt"
# the grouped heads against the separate ones, both in PyTorch (issue 17: within 1e-5), relative to
# the largest logit when that is above 1: a trained model's logits reach tens, where float32's
# other summation order alone moves them by about 1e-5 (measured: 1.14e-5 on a 1024x1024 run)
GROUPED_MAX_REL_DIFF = 1e-5
OPSET = 17


class ExportMismatch(Exception):
    """onnxruntime and PyTorch disagree on the exported graph."""


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise BadInput(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None


def count_flops(ensemble: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """FLOPs (multiply and add counted separately) of the trunk, one head, one member
    (trunk + one head) and the ensemble (trunk + M heads), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            features = ensemble.trunk(x)
        trunk = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            ensemble.heads[0](features)
        head = counter.get_total_flops()
    m = len(ensemble.heads)
    return {
        "trunk": float(trunk),
        "head": float(head),
        "member": float(trunk + head),
        "ensemble": float(trunk + m * head),
        "ensemble_over_member": float((trunk + m * head) / (trunk + head)),
        "five_members_over_member": float((trunk + 5 * head) / (trunk + head)),
    }


def output_names(ensemble: torch.nn.Module) -> list[str]:
    names = ["logits"]
    if getattr(ensemble, "layer_head", None) is not None:
        names.append("layer_logits")
    if getattr(ensemble, "with_features", False):
        names.append("features")
    return names


def export_onnx(ensemble: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ensemble.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ensemble,
            (example,),
            str(path),
            input_names=["image"],
            output_names=output_names(ensemble),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    model.producer_name = "bedsight-train"
    model.doc_string = "bedsight ensemble: input image [1,C,H,W] -> logits [1,M,K,H,W] (seed 000 Eq. 14)"
    onnx.save(model, str(path))


def check_against_torch(ensemble: torch.nn.Module, path: Path, x: np.ndarray) -> float:
    names = output_names(ensemble)
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(x))
    expected = [e.numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
    got = ort_session(path).run(names, {"image": x})
    worst = 0.0
    for name, g, e in zip(names, got, expected):
        if g.shape != e.shape:
            raise ExportMismatch(f"{path}: onnxruntime returns {name} of shape {g.shape}, PyTorch {e.shape}")
        worst = max(worst, float(np.abs(g - e).max()))
    return worst


def group_heads_checked(ensemble: torch.nn.Module, x: np.ndarray) -> float:
    """Group the ensemble's heads into one branch (models/grouped.py) and check that the members'
    logits are the separate heads' to within GROUPED_MAX_REL_DIFF of the largest logit (or of 1);
    returns the largest difference so scaled."""
    with torch.no_grad():
        separate = ensemble.members(ensemble.trunk(torch.from_numpy(x)))
        ensemble.group_heads()
        grouped = ensemble.members(ensemble.trunk(torch.from_numpy(x)))
    scale = max(1.0, float(separate.abs().max()))
    diff = float((grouped - separate).abs().max()) / scale
    if not diff <= GROUPED_MAX_REL_DIFF:
        raise ExportMismatch(
            f"the grouped heads' logits differ from the separate heads' by {diff * scale:.3g}, {diff:.3g} of the largest logit "
            f"{scale:.3g} (limit {GROUPED_MAX_REL_DIFF:g}); the grouping is wrong"
        )
    return diff


def time_members(ensemble: torch.nn.Module, x: np.ndarray, out: Path, runs: int = 3) -> dict[str, float]:
    """Median onnxruntime time of the exported ensemble and of one member (the trunk and the first
    head, exported beside it and deleted), on this machine: what the grouping buys in time, next to
    what FLOPs promise."""
    import time

    from .models import Ensemble

    member_path = out.parent / (out.stem + ".member.onnx")
    member = Ensemble(ensemble.trunk, [ensemble.heads[0]]).eval()
    export_onnx(member, torch.from_numpy(x), member_path)

    def median_ms(path: Path) -> float:
        session = ort_session(path)
        session.run(None, {"image": x})  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {"image": x})
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    try:
        member_ms = median_ms(member_path)
    finally:
        member_path.unlink(missing_ok=True)
    return {"member_ms": member_ms, "ensemble_ms": median_ms(out), "runs": runs}


def manifest_dict(saved: dict[str, Any], training: dict[str, float], name: str, version: str, description: str, domain: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of docs/model-image.md, without [graphs] and [files]."""
    inp = saved["input"]
    head = saved.get("layer_head")
    manifest = {
        # 1.3: the image may carry the members' PyTorch weights (training/ensemble.pt), which
        # `export` puts beside the graph for `pack`; 1.4: the domain check's groups
        "format_version": "1.4" if domain and domain.get("groups") else "1.3",
        "name": name,
        "version": version,
        "architecture": saved["arch"],
        "description": description,
        "input": {
            "width": int(inp["width"]),
            "height": int(inp["height"]),
            "channels": int(inp["channels"]),
            "mean": [float(v) for v in inp["mean"]],
            "std": [float(v) for v in inp["std"]],
        },
        "ensemble": {"members": len(saved["temperatures"]), "temperatures": [float(t) for t in saved["temperatures"]]},
        "classes": [{"name": c["name"], "colour": c["colour"], "defect": bool(c["defect"])} for c in saved["classes"]],
    }
    if head:
        manifest["layer_head"] = {"classes": list(head["classes"]), "temperature": float(head["temperature"])}
    if domain:
        manifest["domain"] = domain
    manifest["training"] = {k: float(v) for k, v in training.items()}
    return manifest


def fit_domain(ensemble: torch.nn.Module, run: Path, info: dict[str, Any], val: data_mod.Dataset, mean: float, std: float, progress: bool) -> dict[str, Any]:
    """The [domain] table (domain.py) from the run's training layers, its threshold from its
    validation layers: the synthetic splits, and the real layers' when the run trained on them
    (each real training layer twice: as photographed and with `domain.camera_drift`)."""
    from . import domain
    from .layers import load_layer_folders

    train = run_split(run, info, "train")
    train_f = [domain.features_of(ensemble, train.images, mean, std)]
    # groups (domain.py): the synthetic layers, a site's own labelled layers (`finetune` names
    # them site-*), and each real label folder: a camera's layers are few among the generator's
    # and must not sit beyond the threshold for being few
    groups = ["site" if name.startswith("site-") else "synthetic" for name in train.names]
    val_f = [domain.features_of(ensemble, val.images, mean, std)]
    real = info.get("real_layers")
    if real:
        label_map = run_label_map(run, info, "real_layers")
        size = int(info["input"]["width"])
        for split, bucket in (("train", train_f), ("val", val_f)):
            layers = load_layer_folders(Path(real["root"]), label_map, size, splits=(split,), max_per_label=real.get("max_per_label"), progress=progress)
            bucket.append(domain.features_of(ensemble, layers.images, mean, std))
            if split == "train":
                groups += [f"real {label}" for label in layers.labels]
                # and each once more with the noise or focus of later in a build (domain.py)
                rng = np.random.default_rng(0)
                drifted = np.stack([domain.camera_drift(rng, image) for image in layers.images])
                bucket.append(domain.features_of(ensemble, drifted, mean, std))
                groups += [f"real {label}" for label in layers.labels]
    table = domain.fit(np.concatenate(train_f), np.concatenate(val_f), train_groups=groups)
    if progress:
        kept = ", ".join(f"{g['name']} ({g['layers']})" for g in table.get("groups", []))
        print(
            f"  domain check: {table['feature_size']} features, fitted on {table['fit_layers']} training layers"
            + (f" in groups {kept}" if kept else "")
            + f"; threshold {table['threshold']:.3f} (the {table['threshold_quantile']:.0%} quantile of {table['validation_layers']} validation layers' scores, or of the training layers' where higher)"
        )
    return table


def export(run: Path, out: Path, name: str = "bedsight-synthetic", version: str | None = None, description: str | None = None, progress: bool = True) -> dict[str, Any]:
    limit_threads()
    run, out = Path(run), Path(out)
    info = read_run(run)
    ensemble, saved = load_ensemble(run / "ensemble.pt")
    if saved["arch"] != info["arch"]:
        raise BadInput(f"{run / 'ensemble.pt'}: ensemble is {saved['arch']} but the run is {info['arch']}")
    val = run_split(run, info, "val")
    mean, std = saved["input"]["mean"][0], saved["input"]["std"][0]
    x = data_mod.to_input(val.images[:1], mean, std)

    domain_table = None
    if ensemble.has_encoder:
        ensemble.with_features = True
        try:
            domain_table = fit_domain(ensemble, run, info, val, mean, std, progress)
        except BadInput as e:
            ensemble.with_features = False
            print(f"  domain check: not fitted ({e}); the image carries none and the box says so at start")
    grouped_diff = group_heads_checked(ensemble, x)
    export_onnx(ensemble, torch.from_numpy(x), out)
    max_diff = check_against_torch(ensemble, out, x)
    if not max_diff < MAX_ABS_DIFF:
        raise ExportMismatch(f"{out}: onnxruntime and PyTorch logits differ by {max_diff:.3g} (limit {MAX_ABS_DIFF}); the export is wrong")
    flops = count_flops(ensemble, torch.from_numpy(x))
    timing = time_members(ensemble, x, out)

    calibration_path = run / "calibration.json"
    calibration = json.loads(calibration_path.read_text()) if calibration_path.exists() else None
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else {}
    training: dict[str, float] = {}
    if calibration:
        after, before = calibration["ensemble"]["after"], calibration["ensemble"]["before"]
        training.update(
            miou=after["miou"], mpa=after["mpa"], score=after["score"], ece_before=before["ece"], ece_after=after["ece"],
            nll_before=before["nll"], nll_after=after["nll"],
        )
        if "layer_head" in calibration:
            h = calibration["layer_head"]
            training.update(layer_val_macro_f1=h["val"]["macro_f1"], layer_ece_before=h["ece_before"], layer_ece_after=h["ece_after"])
    training.update(
        gflops_member=flops["member"] / 1e9,
        gflops_ensemble=flops["ensemble"] / 1e9,
        epochs=float(len(history.get("epochs", []))),
        onnx_max_abs_diff=max_diff,
        grouped_heads_max_abs_diff=grouped_diff,
        ms_member=timing["member_ms"],
        ms_ensemble=timing["ensemble_ms"],
    )
    if "train_seconds" in history:
        training["train_seconds"] = float(history["train_seconds"])
    version = version or dt.date.today().strftime("%Y.%m.%d")
    m = len(saved["temperatures"])
    description = description or (
        f"{saved['arch']} checkpoint ensemble of {m} heads on one trunk (seed 000 Eq. 14), trained by bedsight-train "
        f"on {info['input']['width']}x{info['input']['height']} layers from {Path(info['data']).name}"
    )
    manifest = manifest_dict(saved, training, name, version, description, domain_table)
    manifest_path = out.parent / "manifest.toml"
    # the members' weights travel in the image (training/ensemble.pt) so that `finetune --from
    # IMAGE` can start from it
    shutil.copyfile(run / "ensemble.pt", out.parent / WEIGHTS_NAME)
    manifest_path.write_text("# written by bedsight-train export; `bedsight image pack` adds [graphs] and [files]\n" + toml_dumps(manifest))
    report = {"onnx": str(out), "manifest": str(manifest_path), "max_abs_diff": max_diff, "grouped_heads_max_abs_diff": grouped_diff, "flops": flops, "timing": timing, "members": m}
    (out.parent / (out.stem + ".export.json")).write_text(json.dumps(report, indent=1))
    if progress:
        print(f"exported {out} and {manifest_path}")
        print(f"  onnxruntime vs PyTorch: max |logit difference| = {max_diff:.2e} (limit {MAX_ABS_DIFF:g})")
        print(
            f"  FLOPs at {info['input']['width']}x{info['input']['height']}: one member {flops['member'] / 1e9:.3f} G, "
            f"ensemble of {m} {flops['ensemble'] / 1e9:.3f} G ({flops['ensemble_over_member']:.2f}x; "
            f"5 members would be {flops['five_members_over_member']:.2f}x, seed 000 §4.4 claims under 2x); "
            f"in multiply-adds, seed 000's unit: {flops['member'] / 2e9:.3f} and {flops['ensemble'] / 2e9:.3f} GMAC"
            + (f" (seed 000 §4.4, at 1024x1024: {PAPER_GMAC['member']} and {PAPER_GMAC['five']} for 5)" if saved["arch"] == "isdnet-sr" else "")
        )
        print(f"  heads grouped into one branch: max |logit difference| to the separate heads = {grouped_diff:.2e} of the largest logit (limit {GROUPED_MAX_REL_DIFF:g})")
        print(
            f"  onnxruntime on this machine ({timing['runs']} runs each, median): one member {timing['member_ms']:.1f} ms, "
            f"ensemble of {m} {timing['ensemble_ms']:.1f} ms ({timing['ensemble_ms'] / timing['member_ms']:.2f}x)"
        )
    return report
