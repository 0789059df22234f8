"""`bedsight image pack` / `verify` refuse what does not hold together."""
import tomllib

from bsimg_tools import MODEL, training_manifest
from conftest import ASSETS, run

MEMBERS = tomllib.loads((MODEL / "manifest.toml").read_text())["ensemble"]["members"]


def test_the_default_image_verifies():
    result = run("image", "verify", ASSETS / "default.bsimg")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_pack_then_verify_round_trip(tmp_path):
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(training_manifest("1.0.0"))
    out = tmp_path / "repacked.bsimg"
    result = run("image", "pack", "--onnx", MODEL / "model.onnx", "--manifest", manifest, "-o", out)
    assert result.returncode == 0, result.stderr
    assert run("image", "verify", out).returncode == 0


def test_pack_refuses_a_manifest_whose_members_disagree_with_the_graph(tmp_path):
    wrong = MEMBERS + 2
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(training_manifest("1.0.0", members=wrong))
    out = tmp_path / "wrong.bsimg"
    result = run("image", "pack", "--onnx", MODEL / "model.onnx", "--manifest", manifest, "-o", out)
    assert result.returncode != 0
    assert f"{MEMBERS}" in result.stderr and f"{wrong}" in result.stderr and "members" in result.stderr, result.stderr
    assert not out.exists()


def test_a_missing_model_image_is_said_once(tmp_path):
    result = run("image", "verify", tmp_path / "none.bsimg")
    assert result.returncode != 0
    assert result.stderr.count("No such file or directory") == 1, result.stderr
    assert f"{tmp_path / 'none.bsimg'}: cannot open the model image" in result.stderr
