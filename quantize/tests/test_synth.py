import tomllib

import numpy as np
import pytest
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


def test_super_elevation_stands_on_a_part_edge_and_outshines_the_powder():
    # seed 000 §4.1: super-elevation "often occurs with the edge of the contour" and shines
    rng = np.random.default_rng(11)
    for _ in range(6):
        parts = synth.random_parts(rng, 256, 2)
        layer = synth.render_layer(rng, 256, {synth.SUPER_ELEVATION}, parts=parts)
        se = layer.mask == synth.SUPER_ELEVATION
        union = np.zeros_like(se)
        for part in parts:
            union |= part.mask(256)
        contour = union ^ np.roll(union, 1, 0) | union ^ np.roll(union, 1, 1)
        from scipy import ndimage

        to_contour = ndimage.distance_transform_edt(~contour)
        # every form (spot up to 8 px, curled band up to 2 px, specks) reaches the contour
        labels, n = ndimage.label(se)
        assert n >= 1
        for k in range(1, n + 1):
            assert to_contour[labels == k].min() <= 2.0
        powder = layer.image[~se & ~union & (layer.mask == synth.BACKGROUND)]
        assert np.median(layer.image[se]) >= np.median(powder) + 40


def test_chatter_dies_away_stroke_by_stroke():
    # stroke k is scaled by exp(-k / decay): with decay 2, each stroke is e^-0.5 = 0.6065 of the last
    x = np.arange(100, dtype=np.float32)
    ripples = synth.chatter_profile(x, 10.0, 20.0, 4.0, 4, 2.0, sawtooth=False)
    peaks = [ripples[10], ripples[30], ripples[50], ripples[70]]
    assert peaks[0] > 0 > peaks[1] and peaks[2] > 0 > peaks[3]  # alternately raised and lowered
    for a, b in zip(peaks, peaks[1:]):
        assert abs(b / a) == pytest.approx(np.exp(-0.5), rel=1e-3)
    # the sawtooth: -1 where the blade lands, back to -0.5 half a pitch later, 0 after the last stroke
    teeth = synth.chatter_profile(x, 10.0, 20.0, 4.0, 2, 1e9, sawtooth=True)
    assert teeth[9] == 0.0 and teeth[10] == pytest.approx(-1.0) and teeth[20] == pytest.approx(-0.5)
    assert teeth[30] == pytest.approx(-1.0) and teeth[50] == 0.0


def test_streaks_are_grooves_or_ridges():
    # a dragged particle ploughs a darker groove; a nicked blade leaves a brighter ridge
    rng = np.random.default_rng(2)
    darker = brighter = 0
    for _ in range(20):
        layer = synth.render_layer(rng, 128, {synth.STREAKING}, parts=[])
        streak = layer.mask == synth.STREAKING
        contrast = layer.image[streak].mean() - layer.image[~streak].mean()
        darker += contrast < -4
        brighter += contrast > 4
    assert darker >= 8 and brighter >= 2
