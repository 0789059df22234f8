"""The flat-field reference, as an integrator commissions it and the box then uses it:
`bedsight calibrate --flat-field` writes the bed's lighting, `[bed] flat_field` divides it out of
every frame, and a frame from another camera is a FAULT with the reason, never a verdict."""

import numpy as np
from PIL import Image

from conftest import ASSETS, SAMPLE_BUILD, analyze_json, run


def lit(image: np.ndarray, left: float, right: float) -> np.ndarray:
    """The image under light that falls from `right` to `left` times its brightness across x."""
    gain = np.linspace(left, right, image.shape[1], dtype=np.float32)[None, :]
    return np.clip(np.round(image.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def empty_bed(size: int) -> np.ndarray:
    """An evenly spread bed without parts (the training tool's generator), as an integrator
    photographs it at commissioning."""
    from bedsight_train.synth import render_layer

    return render_layer(np.random.default_rng(3), size, (), parts=[]).image


def commission(tmp_path, ledger):
    """An empty, evenly spread bed under light twice as strong on the right as on the left; the
    integrator's calibrate run on it; a configuration that uses its flat field."""
    clean = [f for f, planted in sorted(ledger.items()) if not planted]
    size = Image.open(SAMPLE_BUILD / clean[0]).size[0]
    Image.fromarray(lit(empty_bed(size), 0.6, 1.2)).save(tmp_path / "empty-bed.png")
    config = tmp_path / "box.toml"
    config.write_text("[bed]\nwidth_mm = 250\nheight_mm = 250\n")
    result = run("calibrate", "--config", config, "--frame", tmp_path / "empty-bed.png", "--flat-field", "--out", tmp_path / "cal")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cal.flat-field.tiff").is_file()
    assert f'flat_field = "{tmp_path / "cal.flat-field.tiff"}"' in result.stdout, result.stdout
    # relative to the configuration's folder, as an integrator writes it
    config.write_text((ASSETS / "bedsight.toml").read_text().replace("height_mm = 250.0\n", 'height_mm = 250.0\nflat_field = "cal.flat-field.tiff"\n', 1))
    return config, clean


def test_a_layer_under_the_commissioned_lighting_is_judged_as_under_even_light(tmp_path, ledger):
    config, clean = commission(tmp_path, ledger)
    planted = next(f for f, classes in sorted(ledger.items()) if classes & {"streaking", "incompleteness"})
    frames = []
    for name in (clean[1], planted):
        image = np.asarray(Image.open(SAMPLE_BUILD / name).convert("L"))
        Image.fromarray(lit(image, 0.6, 1.2)).save(tmp_path / name)
        frames.append(tmp_path / name)
    result, corrected = analyze_json("--config", config, *frames)
    assert result.returncode == 0, result.stderr
    result, even = analyze_json(*[SAMPLE_BUILD / name for name in (clean[1], planted)])
    assert result.returncode == 0, result.stderr
    # the clean layer passes, and the layer with a defect gets the verdict and classes it gets
    # under even light
    assert corrected[0]["verdict"] == "PASS" and corrected[0]["defects"] == [], corrected[0]
    assert corrected[1]["verdict"] == even[1]["verdict"], (corrected[1], even[1])
    assert {d["class"] for d in corrected[1]["defects"]} == {d["class"] for d in even[1]["defects"]}


def test_a_frame_of_another_size_is_a_fault_with_the_reason(tmp_path, ledger):
    config, clean = commission(tmp_path, ledger)
    w, h = Image.open(SAMPLE_BUILD / clean[1]).size
    # a camera of twice the resolution (a smaller frame than the model's input is refused first)
    image = Image.open(SAMPLE_BUILD / clean[1]).convert("L").resize((2 * w, 2 * h))
    image.save(tmp_path / "other-camera.png")
    result, [report] = analyze_json("--config", config, tmp_path / "other-camera.png")
    assert report["verdict"] == "FAULT", report
    assert f"flat field: frame is {2 * w}x{2 * h} px but the flat field is {w}x{h}" in report["fault"], report["fault"]
    assert report["defects"] == []


def test_a_missing_or_foreign_flat_field_stops_the_box_before_any_layer(tmp_path, ledger):
    config = tmp_path / "box.toml"
    config.write_text((ASSETS / "bedsight.toml").read_text().replace("height_mm = 250.0\n", 'height_mm = 250.0\nflat_field = "none.tiff"\n', 1))
    layer = SAMPLE_BUILD / sorted(ledger)[0]
    result = run("analyze", "--config", config, layer)
    assert result.returncode != 0 and result.stdout == ""
    assert "bed.flat_field" in result.stderr and "none.tiff: cannot read it" in result.stderr, result.stderr
    # a picture, not a reference
    Image.open(layer).save(tmp_path / "none.tiff")
    result = run("analyze", "--config", config, layer)
    assert result.returncode != 0 and result.stdout == ""
    assert "none.tiff: Gray(8) pixels, not one 32-bit float channel" in result.stderr, result.stderr


def test_the_training_tool_divides_out_the_same_lighting_as_the_box(tmp_path, ledger):
    """bedsight-train trains on frames corrected as the box corrects them: its port of the
    reference (bedsight_train.flat_field) against the one `bedsight calibrate --flat-field` writes,
    on the same frame of a bed lit 2:1."""
    from bedsight_train import flat_field

    config, _ = commission(tmp_path, ledger)
    frame = np.asarray(Image.open(tmp_path / "empty-bed.png").convert("L"))
    with Image.open(tmp_path / "cal.flat-field.tiff") as tiff:
        box = np.asarray(tiff, dtype=np.float32)
    ours = flat_field.lighting_reference(frame)
    assert box.shape == ours.shape
    # the same low-pass up to resampling: within 2 % of the lighting, 0.5 % on average
    relative = np.abs(ours - box) / box
    assert relative.max() < 0.02 and relative.mean() < 0.005, (relative.max(), relative.mean())


def test_the_median_of_recoated_layers_stands_for_an_evenly_spread_bed(tmp_path):
    """A camera that never sees an evenly spread bed (every layer has a defect somewhere): the
    per-pixel median of several layers, each with its dark patch elsewhere, is the even bed's
    lighting, in the box and in the training tool alike."""
    from bedsight_train import flat_field

    even = lit(empty_bed(256), 0.6, 1.2)
    Image.fromarray(even).save(tmp_path / "even.png")
    layers = []
    for n in range(6):
        layer = even.copy()
        layer[40 * n : 40 * n + 30, 60:200] //= 2  # uncovered powder, a band lower on each layer
        Image.fromarray(layer).save(tmp_path / f"layer-{n}.png")
        layers.append(layer)
    config = tmp_path / "box.toml"
    config.write_text("[bed]\nwidth_mm = 250\nheight_mm = 250\n")
    frames = [a for n in range(6) for a in ("--frame", tmp_path / f"layer-{n}.png")]
    result = run("calibrate", "--config", config, *frames, "--flat-field", "--out", tmp_path / "median")
    assert result.returncode == 0, result.stderr
    assert "the lighting of the median of 6 frames" in result.stdout, result.stdout
    result = run("calibrate", "--config", config, "--frame", tmp_path / "even.png", "--flat-field", "--out", tmp_path / "even")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "median.flat-field.tiff") as median, Image.open(tmp_path / "even.flat-field.tiff") as reference:
        assert np.array_equal(np.asarray(median), np.asarray(reference))
    assert np.array_equal(flat_field.median_frame(layers, "layers"), even)

    # fewer than 5 frames, or several frames without --flat-field, are refused with the reason
    result = run("calibrate", "--config", config, *frames[:8], "--flat-field", "--out", tmp_path / "four")
    assert result.returncode != 0 and "4 frame(s): a median lighting reference needs at least 5" in result.stderr, result.stderr
    assert not (tmp_path / "four.flat-field.tiff").exists()
    result = run("calibrate", "--config", config, *frames[:4], "--out", tmp_path / "two")
    assert result.returncode != 0 and "2 frames given: several frames are the median of --flat-field" in result.stderr, result.stderr
