import tomllib

import numpy as np
from PIL import Image

from bedsight_train import synth


def test_synth_writes_dataset(tmp_path):
    planted = synth.write_dataset(tmp_path, layers=6, size=64, seed=1, progress=False)
    assert len(planted) == 6
    doc = tomllib.loads((tmp_path / "dataset.toml").read_text())
    assert doc["recoater_direction"] == "+x"
    assert doc["mm_per_px"] > 0
    assert [c["name"] for c in doc["classes"]] == ["background", "super-elevation", "incompleteness", "hopping", "streaking", "lattice"]
    images = sorted((tmp_path / "images").glob("*.png"))
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks] and len(images) == 6
    im = Image.open(images[0])
    assert im.mode == "L" and im.size == (64, 64)


def _extent(mask):
    ys, xs = np.nonzero(mask)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_stripes_follow_the_recoater_direction():
    rng = np.random.default_rng(3)
    for _ in range(5):
        streak = synth.render_layer(rng, 128, {synth.STREAKING})
        rows = np.nonzero((streak.mask == synth.STREAKING).any(1))[0]
        # streaking: thin horizontal stripes (parallel to +x): long in x, few rows per stripe
        w, _ = _extent(streak.mask == synth.STREAKING)
        assert w > 30 and len(rows) < 0.3 * 128
        hop = synth.render_layer(rng, 128, {synth.HOPPING})
        cols = np.nonzero((hop.mask == synth.HOPPING).any(0))[0]
        _, h = _extent(hop.mask == synth.HOPPING)
        assert h > 30 and len(cols) < 0.5 * 128  # vertical stripes (perpendicular to +x)


def test_every_class_can_be_planted():
    rng = np.random.default_rng(0)
    for c in synth.DEFECT_CLASSES:
        layer = synth.render_layer(rng, 128, {c})
        assert c in layer.planted
    clean = synth.render_layer(rng, 128, set())
    assert clean.planted == [] and clean.image.dtype == np.uint8


def test_sample_build(tmp_path):
    planted = synth.write_sample_build(tmp_path, size=64, seed=1)
    doc = tomllib.loads((tmp_path / "layers.toml").read_text())
    assert len(doc["layers"]) == len(synth.SAMPLE_BUILD_PLAN) == len(planted)
    assert doc["layers"][0]["clean"]
    assert {c for p in planted for c in p} == set(synth.DEFECT_CLASSES)
    assert (tmp_path / "layer-0001.png").exists() and (tmp_path / "masks" / "layer-0001.png").exists()
