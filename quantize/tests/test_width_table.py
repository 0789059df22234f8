"""The width comparison's table (bedsight_train.presets, issue 21): the figures it shows are the
ones in the files, its section of report.md is replaced on a rerun and kept when the model is
rebuilt (with the rebuilt model's own figures in its row), and a bench file that times anything
but one model is refused."""
import json
from pathlib import Path

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


def _rows(shipped_metrics):
    return [
        {"label": presets.SHIPPED, "figures": presets.figures(shipped_metrics), "bench": presets._bench_row(_bench("s", 143.2, 187.4, 370.0))},
        {"label": "paper", "figures": presets.figures(_metrics(0.269, 0.289, 0.192, 0.73)), "bench": presets._bench_row(_bench("p", 1207.0, 1336.0, 1028.0))},
    ]


def test_the_report_section_is_replaced_on_a_rerun(tmp_path):
    (tmp_path / "report.md").write_text("# The default model\n\n## Training\n- 18 epochs\n")
    rows = _rows(_metrics(0.844, 0.505, 0.722, 0.46))
    presets.write(tmp_path, rows, "first notes")
    presets.write(tmp_path, rows, "second notes")
    text = (tmp_path / "report.md").read_text()
    table = presets.table([(r["label"], r["figures"], r["bench"]) for r in rows])
    assert text == f"# The default model\n\n## Training\n- 18 epochs\n\n{presets.SECTION}\n\n{table}\n\nsecond notes\n"


def test_a_rebuild_at_the_same_width_shows_the_new_models_own_figures(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    shipped_then = _metrics(0.844, 0.505, 0.722, 0.46)
    rows = _rows(shipped_then)
    presets.write(old, rows, "How each was trained.")
    (new / "report.md").write_text("# The default model\n\n## Training\n- 20 epochs\n")
    rebuilt = _metrics(0.653, 0.531, 0.814, 0.7654)
    rebuilt["epochs"], rebuilt["train_seconds"] = 16, 982.0
    (new / "metrics.json").write_text(json.dumps(rebuilt))
    presets.carry(old, new)
    lines = (new / "presets.md").read_text().splitlines()
    # the shipped row: the rebuilt model's figures, the time and memory measured for its width
    assert lines[4] == "| small (shipped) | 13.70 M | 16 epochs, 16 min (its last stage) | 0.653 / 0.531 | 3/4 (1.25 %) | 0.814 | 77 % | 60/87 | 312.4 | 143 ms / 187 ms | 370 MiB |"
    assert lines[5] == "| paper | 13.70 M | 15 epochs, 60 min | 0.269 / 0.289 | 3/4 (1.25 %) | 0.192 | 73 % | 60/87 | 312.4 | 1207 ms / 1336 ms | 1028 MiB |"
    assert lines[-1] == "How each was trained."
    report = (new / "report.md").read_text()
    assert report.startswith("# The default model\n\n## Training\n- 20 epochs\n\n" + presets.SECTION)
    assert report.count("| small (shipped) |") == 1 and "0.722" not in report
    # carried again on the next rebuild, from the new folder's presets.json
    assert json.loads((new / "presets.json").read_text())["rows"][0]["figures"]["macro_f1"] == 0.814


def test_a_rebuild_at_another_width_keeps_the_measured_row_under_its_own_name(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    rows = _rows(_metrics(0.844, 0.505, 0.722, 0.46))
    presets.write(old, rows, "")
    wider = _metrics(0.7, 0.6, 0.9, 0.8)
    wider["parameters"] = 2_000_000
    (new / "metrics.json").write_text(json.dumps(wider))
    presets.carry(old, new)
    row = (new / "presets.md").read_text().splitlines()[4]
    assert row.startswith("| small (shipped when measured) | 13.70 M | 15 epochs, 60 min | 0.844 / 0.505 |")


def test_without_a_comparison_nothing_is_added(tmp_path):
    (tmp_path / "report.md").write_text("# r\n")
    presets.carry(tmp_path / "none", tmp_path)
    assert (tmp_path / "report.md").read_text() == "# r\n" and not (tmp_path / "presets.md").exists()


def test_a_bench_of_several_models_is_refused():
    two = _bench("a", 1.0, 2.0, 3.0)
    two["models"].append(two["models"][0])
    with pytest.raises(ValueError, match="exactly one model"):
        presets._bench_row(two)


def test_the_shipped_report_shows_the_shipped_models_own_figures():
    assets = Path(__file__).resolve().parents[2] / "assets" / "default-model"
    metrics = json.loads((assets / "metrics.json").read_text())
    row = json.loads((assets / "presets.json").read_text())["rows"][0]
    assert row["label"] == presets.SHIPPED
    line = presets.table([(presets.SHIPPED, presets.shipped_figures(metrics), row["bench"])]).splitlines()[-1]
    assert line in (assets / "presets.md").read_text().splitlines()
    assert line in (assets / "report.md").read_text().splitlines()
