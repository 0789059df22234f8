"""The packed model image runs in the appliance (`bedsight analyze`): the graph `[model] precision`
chooses (fp32 on these CPUs).

These tests need the `bedsight` binary (the project's test command builds it and sets
BEDSIGHT_BIN); without one they fail and say how to build it."""

import json
import os
import subprocess

import pytest

from bt_helpers import bedsight_bin

BIN = bedsight_bin()
@pytest.fixture
def require_bin():
    if BIN is None:
        pytest.fail("no bedsight binary: BEDSIGHT_BIN is unset and none is on PATH or in target/ (run ./test.sh, or cargo build)")


needs_bin = pytest.mark.usefixtures("require_bin")


@pytest.fixture(scope="module")
def packed(tiny_isdnet_model, tiny_isdnet_int8, tmp_path_factory):
    from bedsight_train.pack import pack

    out = tmp_path_factory.mktemp("image") / "tiny.bsimg"
    pack(tiny_isdnet_model, out, int8=tiny_isdnet_int8, progress=False)
    return out


@needs_bin
def test_pack_builds_a_model_image(packed):
    import tarfile

    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.toml"
    assert {"model.onnx", "model.int8.onnx", "selftest/input.png", "selftest/expected_mask.png"} <= set(names)


@needs_bin
def test_quantized_model_runs_in_the_appliance(packed, tiny_data):
    image = sorted((tiny_data / "images").glob("*.png"))[0]
    env = dict(os.environ)
    result = subprocess.run([str(BIN), "analyze", "--model", str(packed), "--json", str(image)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]
    assert records, result.stdout
    record = records[0]
    assert {"verdict", "backend", "defects", "uncertainty"} <= set(record)
    assert record["verdict"] in ("PASS", "RECOAT", "PAUSE", "REVIEW", "FAULT")
    assert {"mean", "max"} <= set(record["uncertainty"])


@needs_bin
def test_evaluate_reads_a_model_image(packed, tiny_data, tmp_path):
    from bedsight_train.evaluate import evaluate

    metrics = evaluate(packed, tiny_data, tmp_path / "eval", progress=False)
    assert 0 <= metrics["miou"] <= 1
