"""`bedsight image pack` / `verify` refuse what does not hold together."""
import tarfile

from conftest import ASSETS, run


def unpack_default(tmp_path):
    with tarfile.open(ASSETS / "default.bsimg") as archive:
        archive.extractall(tmp_path / "default", filter="data")
    return tmp_path / "default"


def strip_pack_tables(manifest: str) -> str:
    """The manifest as the training tool writes it: without [graphs] and [files]."""
    out, skipping = [], False
    for line in manifest.splitlines():
        if line.startswith("["):
            skipping = line.strip() in ("[graphs]", "[files]")
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def test_the_default_image_verifies():
    result = run("image", "verify", ASSETS / "default.bsimg")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_pack_then_verify_round_trip(tmp_path):
    src = unpack_default(tmp_path)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(strip_pack_tables((src / "manifest.toml").read_text()))
    out = tmp_path / "repacked.bsimg"
    result = run("image", "pack", "--onnx", src / "model.onnx", "--manifest", manifest, "-o", out)
    assert result.returncode == 0, result.stderr
    assert run("image", "verify", out).returncode == 0


def test_pack_refuses_a_manifest_whose_members_disagree_with_the_graph(tmp_path):
    src = unpack_default(tmp_path)
    text = strip_pack_tables((src / "manifest.toml").read_text())
    import tomllib
    members = tomllib.loads(text)["ensemble"]["members"]
    wrong = members + 2
    text = text.replace(f"members = {members}", f"members = {wrong}")
    temps = ", ".join(["1.0"] * wrong)
    import re
    text = re.sub(r"temperatures = \[[^\]]*\]", f"temperatures = [{temps}]", text)
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(text)
    out = tmp_path / "wrong.bsimg"
    result = run("image", "pack", "--onnx", src / "model.onnx", "--manifest", manifest, "-o", out)
    assert result.returncode != 0
    assert f"{members}" in result.stderr and f"{wrong}" in result.stderr and "members" in result.stderr, result.stderr
    assert not out.exists()
