"""`bedsight-train quantize`: static INT8 post-training quantization, checked on the test split.

onnxruntime's `quantize_static` in QDQ form (QuantizeLinear/DequantizeLinear pairs around the
quantized ops, which both onnxruntime and tract run), per-channel weights, activation ranges
calibrated on training images. Then both graphs are evaluated on the test split with the manifest's
temperatures and fusion (seed 000 Eq. 21, 12, 13); MIoU, MPA and ECE are printed side by side, and
the command fails when INT8 loses more MIoU than the allowed margin.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .common import BadInput, limit_threads
from .evaluate import evaluate_graph, read_manifest_for


class QuantizationRegression(Exception):
    """INT8 lost more accuracy than allowed."""


class _Reader:
    """Feeds calibration images to onnxruntime's calibrator."""

    def __init__(self, inputs: np.ndarray, progress: bool = False):
        from tqdm import tqdm

        self.inputs = inputs
        self.i = 0
        self.bar = tqdm(total=len(inputs), desc="calibrate ranges", unit="img", disable=not progress)

    def get_next(self):
        if self.i >= len(self.inputs):
            self.bar.close()
            return None
        x = self.inputs[self.i : self.i + 1]
        self.i += 1
        self.bar.update(1)
        return {"image": x}

    def rewind(self):
        self.i = 0
        self.bar.reset()


def logit_producers(model_path: Path) -> list[str]:
    """The nodes that produce each member's logits (the heads' last Conv), found by walking back
    from the `logits` output through the Concat/Unsqueeze that stack the members and the
    Slice/Reshape/Concat that cut the full-resolution layers into bands (models/grouped.py)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    # (and the layer head's last Gemm, when the graph has `layer_logits`: its temperature divides it too)
    names, frontier = [], ["logits", "layer_logits"]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            names.append(node.name)
        elif node.op_type in ("Concat", "Unsqueeze", "Reshape", "Identity", "Slice"):
            frontier.extend(i for i in node.input[:1] if node.op_type != "Concat")
            if node.op_type == "Concat":
                frontier.extend(node.input)
    return names


def quantize_graph(model: Path, out: Path, calibration_inputs: np.ndarray, keep_logits_fp32: bool = True, progress: bool = False) -> None:
    """QDQ INT8 with per-channel weights. The heads' last convs (a few thousand weights) stay in
    fp32 so that the logits, which the temperatures divide and the fusion compares across members,
    are not rounded to 256 levels."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference and constant folding first, as onnxruntime recommends for quantization
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        exclude = logit_producers(prepared) if keep_logits_fp32 else []
        quantize_static(
            str(prepared),
            str(out),
            _Reader(calibration_inputs, progress),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
        )


def quantize(model: Path, data: Path, out: Path, margin: float = 0.02, calibration_images: int = 32, split_seed: int = 0, progress: bool = True) -> dict[str, Any]:
    limit_threads()
    model, out = Path(model), Path(out)
    if not model.exists():
        raise BadInput(f"{model}: model not found")
    manifest = read_manifest_for(model)
    ds = data_mod.load_dataset(Path(data), progress=progress)
    expect = (manifest["input"]["height"], manifest["input"]["width"])
    if ds.size != expect:
        raise BadInput(f"{data}: images are {ds.size[1]}x{ds.size[0]} but {model} takes {expect[1]}x{expect[0]}")
    if len(ds.classes) != len(manifest["classes"]):
        raise BadInput(f"{data / 'dataset.toml'}: {len(ds.classes)} classes, the model's manifest has {len(manifest['classes'])}")
    split = data_mod.dataset_split(ds, seed=split_seed)
    mean, std = manifest["input"]["mean"][0], manifest["input"]["std"][0]
    rng = np.random.default_rng(0)
    train_idx = list(split["train"])
    pick = sorted(rng.choice(train_idx, size=min(calibration_images, len(train_idx)), replace=False).tolist())
    calib = data_mod.to_input(ds.images[pick], mean, std)
    if progress:
        print(f"quantizing {model} -> {out} (QDQ, per-channel INT8; calibration on {len(pick)} training images)", flush=True)
    quantize_graph(model, out, calib, progress=progress)

    test = ds.subset(split["test"])
    fp32 = evaluate_graph(model, manifest, test, progress=progress, desc="fp32")
    int8 = evaluate_graph(out, manifest, test, progress=progress, desc="int8")
    drop = fp32["miou"] - int8["miou"]
    report = {
        "fp32": {k: fp32[k] for k in ("miou", "mpa", "ece", "iou", "cpa", "auroc")},
        "int8": {k: int8[k] for k in ("miou", "mpa", "ece", "iou", "cpa", "auroc")},
        "miou_drop": drop,
        "margin": margin,
        "test_images": len(test.names),
        "fp32_bytes": model.stat().st_size,
        "int8_bytes": out.stat().st_size,
    }
    (out.parent / (out.stem + ".quantize.json")).write_text(json.dumps(report, indent=1))
    table = (
        f"test split ({len(test.names)} images)     fp32        int8\n"
        f"  MIoU                       {fp32['miou']:.4f}      {int8['miou']:.4f}\n"
        f"  MPA                        {fp32['mpa']:.4f}      {int8['mpa']:.4f}\n"
        f"  ECE (10 bins)              {fp32['ece']:.5f}     {int8['ece']:.5f}\n"
        f"  size                       {model.stat().st_size / 1024:.0f} KiB     {out.stat().st_size / 1024:.0f} KiB\n"
        f"  MIoU drop {drop:+.4f} (allowed {margin})"
    )
    print(table)
    if drop > margin:
        raise QuantizationRegression(f"{out}: INT8 MIoU {int8['miou']:.4f} is {drop:.4f} below fp32 {fp32['miou']:.4f}, more than the allowed {margin}")
    return report
