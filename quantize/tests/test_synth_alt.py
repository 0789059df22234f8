"""The second synthetic generator (synth_alt, test sets only): its dataset format, its masks, and
that it is a different hand from synth.py."""

import subprocess
import sys
import tomllib

import numpy as np
from scipy import ndimage, stats

from bedsight_train import synth, synth_alt
from bedsight_train.common import DEFAULT_CLASSES
from bedsight_train.data import load_dataset

SIZE = 128


def _layers(plant, count, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    return [synth_alt.render_layer(rng, size, plant) for _ in range(count)]


def test_writes_the_synth_dataset_layout(tmp_path):
    planted = synth_alt.write_dataset(tmp_path / "alt", layers=6, size=64, seed=1, progress=False)
    synth.write_dataset(tmp_path / "ref", layers=6, size=64, seed=1, progress=False)
    assert len(planted) == 6
    alt_doc = tomllib.loads((tmp_path / "alt" / "dataset.toml").read_text())
    ref_doc = tomllib.loads((tmp_path / "ref" / "dataset.toml").read_text())
    assert alt_doc["name"] == "synthetic-alt" and alt_doc["test_only"] is True
    assert set(ref_doc) <= set(alt_doc)
    for key in ("seed", "layers", "size", "channels", "recoater_direction", "mm_per_px", "classes"):
        assert alt_doc[key] == ref_doc[key], key
    for sub in ("images", "masks"):
        alt_names = sorted(p.name for p in (tmp_path / "alt" / sub).iterdir())
        ref_names = sorted(p.name for p in (tmp_path / "ref" / sub).iterdir())
        assert alt_names == ref_names
    ds = load_dataset(tmp_path / "alt")
    assert ds.images.shape == (6, 64, 64) and ds.masks.shape == (6, 64, 64)
    assert [c.name for c in ds.classes] == [c.name for c in DEFAULT_CLASSES]
    assert ds.recoater_direction == "+x"
    assert [sorted(int(c) for c in np.unique(m) if c) for m in ds.masks] == planted


def test_deterministic_for_a_seed(tmp_path):
    synth_alt.write_dataset(tmp_path / "a", layers=3, size=64, seed=4, progress=False)
    synth_alt.write_dataset(tmp_path / "b", layers=3, size=64, seed=4, progress=False)
    synth_alt.write_dataset(tmp_path / "c", layers=3, size=64, seed=5, progress=False)
    for sub in ("images", "masks"):
        for p in sorted((tmp_path / "a" / sub).iterdir()):
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()
    a = load_dataset(tmp_path / "a")
    c = load_dataset(tmp_path / "c")
    assert not np.array_equal(a.images, c.images)


def test_every_class_appears_in_a_small_dataset(tmp_path):
    planted = synth_alt.write_dataset(tmp_path, layers=8, size=64, seed=2, progress=False)
    assert {c for p in planted for c in p} == set(synth_alt.DEFECT_CLASSES)
    for c in synth_alt.DEFECT_CLASSES:
        assert all(c in layer.planted for layer in _layers({c}, 2, seed=c))


def test_clean_layer_has_an_empty_mask():
    for layer in _layers(set(), 3, seed=0):
        assert layer.planted == [] and not layer.mask.any()
        assert layer.image.dtype == np.uint8 and layer.image.std() > 3


def test_streak_pixels_stand_out_from_their_column():
    for layer in _layers({synth_alt.STREAKING}, 4, seed=1):
        image = layer.image.astype(np.float32)
        line = layer.mask == synth_alt.STREAKING
        # streaks are thin horizontal lines: a tall vertical median is the powder around them
        residual = np.abs(image - ndimage.median_filter(image, size=(11, 1)))
        assert residual[line].mean() > 1.6 * residual[~line].mean()
        ys, xs = np.nonzero(line)
        assert xs.max() == SIZE - 1  # runs to the far (+x) edge
        assert line.any(1).sum() < 0.3 * SIZE  # few rows: horizontal


def test_incompleteness_is_darker_than_powder():
    for layer in _layers({synth_alt.INCOMPLETENESS}, 4, seed=2):
        region = layer.mask == synth_alt.INCOMPLETENESS
        assert region.sum() > 0.03 * SIZE * SIZE
        assert layer.image[region].mean() < 0.75 * layer.image[~region].mean()
        # it reaches in from a bed edge
        assert region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()


def test_super_elevation_is_bright():
    for layer in _layers({synth_alt.SUPER_ELEVATION}, 4, seed=3):
        patch = layer.mask == synth_alt.SUPER_ELEVATION
        assert layer.image[patch].mean() > layer.image[~patch].mean() + 35
        assert np.percentile(layer.image[patch], 10) > np.percentile(layer.image[~patch], 90)


def test_hopping_bands_are_vertical_and_periodic():
    for layer in _layers({synth_alt.HOPPING}, 4, seed=4):
        band = layer.mask == synth_alt.HOPPING
        rows = np.nonzero(band.any(1))[0]
        cols = np.nonzero(band.any(0))[0]
        assert len(rows) > 0.25 * SIZE and len(cols) < 0.6 * SIZE  # tall, and narrower than the bed
        image = layer.image.astype(np.float32)
        inside = image[np.ix_(rows, cols)].mean(0)  # column profile across the bands
        outside_cols = [c for c in range(SIZE) if not band[:, c].any()]
        outside = image[np.ix_(rows, outside_cols)].mean(0) if outside_cols else None

        def detrend(profile):
            return profile - ndimage.uniform_filter1d(profile, 15, mode="nearest")

        if outside is not None and len(outside) > 10:
            assert detrend(inside).std() > 3 * detrend(outside).std()
        else:
            assert detrend(inside).std() > 4


def test_lattice_patch_holds_dots():
    for layer in _layers({synth_alt.LATTICE}, 4, seed=5):
        patch = layer.mask == synth_alt.LATTICE
        image = layer.image.astype(np.float32)
        detail = np.abs(image - ndimage.gaussian_filter(image, 2.0))
        assert detail[patch].mean() > 1.25 * detail[~patch].mean()
        assert np.percentile(image[patch], 90) > np.median(image[~patch]) + 20  # bright strut tops


def test_not_the_same_generator_as_synth():
    # same seed, same plan: different pictures
    a = synth.render_layer(np.random.default_rng(9), SIZE, {synth.STREAKING})
    b = synth_alt.render_layer(np.random.default_rng(9), SIZE, {synth_alt.STREAKING})
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 5
    assert not np.array_equal(a.mask, b.mask)

    # and measurably different powder: synth.py's grain is blurred Gaussian noise (symmetric
    # histogram), synth_alt's is sparse lit grains (skewed bright). Compare the skewness of the
    # fine texture on clean layers.
    def fine_skew(image):
        f = image.astype(np.float64)
        fine = (f - ndimage.gaussian_filter(f, 4))[8:-8, 8:-8]
        return stats.skew(fine.ravel())

    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    ref = [fine_skew(synth.render_layer(rng_a, SIZE, ()).image) for _ in range(5)]
    alt = [fine_skew(synth_alt.render_layer(rng_b, SIZE, ()).image) for _ in range(5)]
    assert np.mean(alt) - np.mean(ref) > 0.25, (ref, alt)


def test_command_line(tmp_path):
    out = tmp_path / "alt"
    proc = subprocess.run(
        [sys.executable, "-m", "bedsight_train.synth_alt", "--out", str(out), "--layers", "2", "--size", "48", "--seed", "3", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(load_dataset(out).names) == 2
    bad = subprocess.run(
        [sys.executable, "-m", "bedsight_train.synth_alt", "--out", str(out), "--layers", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--layers" in bad.stderr


def test_training_refuses_the_second_generators_test_sets(tmp_path, capsys):
    from bedsight_train.cli import main

    assert main(["--quiet", "synth", "--generator", "alt", "--out", str(tmp_path / "alt"), "--layers", "6", "--size", "64", "--seed", "3"]) == 0
    code = main(["--quiet", "train", "--arch", "isdnet-sr", "--data", str(tmp_path / "alt"), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "test_only = true" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
