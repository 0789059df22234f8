import json
import tomllib

import numpy as np
import onnx
import pytest


def test_calibration_lowers_nll(tiny_isdnet_model, tiny_isdnet_run):
    report = json.loads((tiny_isdnet_run / "calibration.json").read_text())
    assert len(report["members"]) == 3
    for member in report["members"]:
        assert member["temperature"] > 0
        assert member["nll_after"] < member["nll_before"], member
        assert 0 <= member["ece_after"] <= 1 and 0 <= member["ece_before"] <= 1
    # members ranked by Score (Eq. 28); the trunk comes from the best
    scores = [m["checkpoint_score"] for m in report["members"]]
    assert scores == sorted(scores, reverse=True)
    assert report["trunk_checkpoint"] == report["members"][0]["checkpoint"]
    assert (tiny_isdnet_run / "reliability.png").stat().st_size > 0


def test_export_matches_pytorch_and_contract(tiny_isdnet_model, tiny_isdnet_run):
    import torch

    from bedsight_train.calibrate import load_ensemble
    from bedsight_train.export import ort_session

    model = onnx.load(str(tiny_isdnet_model))
    assert [i.name for i in model.graph.input] == ["image"]
    # the domain check's features beside the logits (domain.py)
    assert [o.name for o in model.graph.output] == ["logits", "features"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 6, 64, 64]  # [1, M, K, H, W]
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Dropout", "Shape", "NonZero", "Loop", "If"}
    ensemble, _ = load_ensemble(tiny_isdnet_run / "ensemble.pt")
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(x)).numpy()
    got, features = ort_session(tiny_isdnet_model).run(["logits", "features"], {"image": x})
    assert np.abs(got - expected).max() < 1e-3
    with torch.no_grad():
        assert np.abs(features - ensemble.trunk_features(torch.from_numpy(x)).numpy()).max() < 1e-4
    report = json.loads((tiny_isdnet_model.parent / "model.export.json").read_text())
    assert report["flops"]["ensemble"] < 3 * report["flops"]["member"]


def test_manifest_follows_the_model_image_doc(tiny_isdnet_model):
    doc = tomllib.loads((tiny_isdnet_model.parent / "manifest.toml").read_text())
    assert doc["format_version"] == "1.3"  # the image may carry training/ensemble.pt
    assert doc["architecture"] == "isdnet-sr"
    assert isinstance(doc["name"], str) and isinstance(doc["version"], str)
    assert doc["input"]["width"] == 64 and doc["input"]["height"] == 64 and doc["input"]["channels"] == 1
    assert len(doc["input"]["mean"]) == 1 and doc["input"]["std"][0] > 0
    assert doc["ensemble"]["members"] == 3 and len(doc["ensemble"]["temperatures"]) == 3
    assert all(t > 0 for t in doc["ensemble"]["temperatures"])
    assert [c["name"] for c in doc["classes"]][0] == "background"
    assert all(set(c) == {"name", "colour", "defect"} for c in doc["classes"])
    assert "graphs" not in doc and "files" not in doc  # pack adds those
    assert all(isinstance(v, float) for v in doc["training"].values())
    d = doc["domain"]
    assert len(d["mean"]) == d["feature_size"] and len(d["inverse_covariance"]) == d["feature_size"] ** 2
    assert d["threshold"] > 0 and d["threshold_quantile"] == 0.99 and d["fit_layers"] >= 8 and d["validation_layers"] >= 3


def test_quantized_graph_runs_in_onnxruntime(tiny_isdnet_int8, tiny_isdnet_model):
    from bedsight_train.export import ort_session

    model = onnx.load(str(tiny_isdnet_int8))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ form
    x = np.zeros((1, 1, 64, 64), dtype=np.float32)
    out = ort_session(tiny_isdnet_int8).run(["logits"], {"image": x})[0]
    ref = ort_session(tiny_isdnet_model).run(["logits"], {"image": x})[0]
    assert out.shape == ref.shape == (1, 3, 6, 64, 64)
    report = json.loads((tiny_isdnet_int8.parent / "model.int8.quantize.json").read_text())
    assert {"miou", "mpa", "ece"} <= set(report["int8"]) and {"miou", "mpa", "ece"} <= set(report["fp32"])


def test_quantize_fails_beyond_the_margin(tiny_isdnet_model, tiny_data, tmp_path):
    from bedsight_train.quant import QuantizationRegression, quantize

    with pytest.raises(QuantizationRegression):
        quantize(tiny_isdnet_model, tiny_data, tmp_path / "q.onnx", margin=-1.0, calibration_images=2, progress=False)


def test_evaluate_writes_metrics_and_confusion(tiny_isdnet_model, tiny_data, tmp_path):
    from bedsight_train.evaluate import evaluate

    metrics = evaluate(tiny_isdnet_model, tiny_data, tmp_path / "eval", progress=False)
    assert len(metrics["iou"]) == 6 and 0 <= metrics["miou"] <= 1 and 0 <= metrics["ece"] <= 1
    assert metrics["auroc"] is None or 0 <= metrics["auroc"] <= 1
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0


def test_am_segnet_ensemble_exports(tiny_data, tmp_path):
    from bedsight_train.calibrate import calibrate
    from bedsight_train.export import export
    from bt_helpers import train_tiny

    run = tmp_path / "run"
    train_tiny("am-segnet", tiny_data, run, epochs=2)
    calibrate(run, members=2, progress=False)
    report = export(run, tmp_path / "model" / "model.onnx", progress=False)
    assert report["max_abs_diff"] < 1e-3
    model = onnx.load(str(tmp_path / "model" / "model.onnx"))
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 2, 6, 64, 64]
    assert tomllib.loads((tmp_path / "model" / "manifest.toml").read_text())["architecture"] == "am-segnet"
