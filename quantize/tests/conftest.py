"""Shared fixtures: a tiny synthetic dataset (64x64) and tiny trained, calibrated and exported
models, built once per test session so that the whole suite stays within a few minutes on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bt_helpers import SIZE, train_tiny

# one thread: the tiny models gain nothing from two, and two threads that spin-wait on
# each other collapse when the cores are shared (the test command may run beside a build)
os.environ.setdefault("BEDSIGHT_TRAIN_THREADS", "1")


@pytest.fixture(scope="session")
def require_bin() -> Path:
    """The `bedsight` binary; a test that needs it fails, saying how to build it, without one."""
    from bt_helpers import bedsight_bin

    path = bedsight_bin()
    if path is None:
        pytest.fail("no bedsight binary: BEDSIGHT_BIN is unset and none is on PATH or in target/ (run ./test.sh, or cargo build)")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from bedsight_train import synth

    out = tmp_path_factory.mktemp("data")
    synth.write_dataset(out, layers=40, size=SIZE, seed=5, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_isdnet_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run-isdnet")
    train_tiny("isdnet-sr", tiny_data, run, epochs=4)
    return run


@pytest.fixture(scope="session")
def tiny_isdnet_model(tiny_isdnet_run, tmp_path_factory) -> Path:
    """calibrate (M=3) + export: the path of model.onnx (manifest.toml beside it)."""
    from bedsight_train.calibrate import calibrate
    from bedsight_train.export import export

    calibrate(tiny_isdnet_run, members=3, progress=False)
    out = tmp_path_factory.mktemp("model") / "model.onnx"
    export(tiny_isdnet_run, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_isdnet_int8(tiny_isdnet_model, tiny_data) -> Path:
    from bedsight_train.quant import quantize

    out = tiny_isdnet_model.parent / "model.int8.onnx"
    # the tiny model is barely trained; the margin check itself is tested separately
    quantize(tiny_isdnet_model, tiny_data, out, margin=1.0, calibration_images=4, progress=False)
    return out

