"""The width comparison's table (bedsight_train.presets, issue 21): the figures it shows are the
ones in the files, its section of report.md is replaced on a rerun and kept when the model is
rebuilt, and a bench file that times anything but one model is refused."""
import pytest

from bedsight_train import presets


def _metrics(miou_first, miou_second, macro_f1, inside):
    return {
        "parameters": 13_700_000,
        "epochs": 15,
        "train_seconds": 3600.0,
        "config": {},
        "test_fp32": {"miou": miou_first},
        "alt_generator_fp32": {"miou": miou_second},
        "real_eval": {
            "clean": {"layers": 4, "not_pass": 1, "mean_flagged_share": 0.0125},
            "classification": {"macro_f1": macro_f1},
            "hand_labelled": {"inside_any_share": inside, "regions": {"all": {"detected_same": 60, "regions": 87}}},
        },
    }


def _bench(name, infer_ms, layer_ms, resident):
    return {
        "cpu": "test cpu",
        "models": [{
            "name": name,
            "members": 3,
            "gflops_ensemble": 312.4,
            "inference": [
                {"runner": "ort", "precision": "int8", "median_ms": 1.0},
                {"runner": "ort", "precision": "fp32", "median_ms": infer_ms},
            ],
            "stages": {"stages": [{"stage": "infer", "median_ms": infer_ms}], "layer_median_ms": layer_ms},
            "resident_mib_after_warmup": resident,
        }],
    }


def test_a_row_shows_the_files_figures():
    row = presets.table([("paper", presets.figures(_metrics(0.61234, 0.4, 0.5556, 0.4567)), presets._bench_row(_bench("p", 3456.7, 3512.2, 1234.4)))])
    assert row.splitlines()[-1] == (
        "| paper | 13.70 M | 15 epochs, 60 min | 0.612 / 0.400 | 3/4 (1.25 %) | 0.556 | 46 % | 60/87 | 312.4 | 3457 ms / 3512 ms | 1234 MiB |"
    )


def test_the_report_section_is_replaced_on_a_rerun_and_kept_on_a_rebuild(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "report.md").write_text("# The default model\n\n## Training\n- 18 epochs\n")
    presets.write(old, "first table")
    presets.write(old, "second table")
    text = (old / "report.md").read_text()
    assert text.count(presets.SECTION) == 1 and "second table" in text and "first table" not in text
    assert text.startswith("# The default model\n\n## Training\n- 18 epochs\n")
    (new / "report.md").write_text("# The default model\n\n## Training\n- 20 epochs\n")
    presets.carry(old, new)
    assert (new / "presets.md").read_text() == (old / "presets.md").read_text()
    assert (new / "report.md").read_text().endswith(f"{presets.SECTION}\n\nsecond table\n")
    # no comparison ever run: nothing is added
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "report.md").write_text("# r\n")
    presets.carry(tmp_path / "none", bare)
    assert (bare / "report.md").read_text() == "# r\n" and not (bare / "presets.md").exists()


def test_a_bench_of_several_models_is_refused():
    two = _bench("a", 1.0, 2.0, 3.0)
    two["models"].append(two["models"][0])
    with pytest.raises(ValueError, match="exactly one model"):
        presets._bench_row(two)
