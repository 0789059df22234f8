"""Rules cannot vanish: a configuration file without `[rules]` judges with the shipped rules, a
defect class without a rule stops the box before any layer unless it says `verdict = "ignore"`,
and `bedsight run` says at start where each table came from."""

from conftest import ASSETS, SAMPLE_BUILD, analyze_json, run
from run_harness import Appliance, replay_camera

BED_ONLY = "[bed]\nwidth_mm = 250.0\nheight_mm = 250.0\n"


def test_a_file_without_rules_judges_as_the_shipped_configuration(tmp_path, ledger):
    config = tmp_path / "box.toml"
    config.write_text(BED_ONLY)
    layers = [SAMPLE_BUILD / name for name in sorted(ledger)]
    result, bare = analyze_json("--config", config, *layers)
    assert result.returncode == 0, result.stderr
    result, shipped = analyze_json("--config", ASSETS / "bedsight.toml", *layers)
    assert result.returncode == 0, result.stderr
    assert [(o["verdict"], o["reasons"]) for o in bare] == [(o["verdict"], o["reasons"]) for o in shipped]
    # and that is not PASS everywhere: the sample build has defects the shipped rules act on
    assert any(o["verdict"] != "PASS" for o in bare), [o["verdict"] for o in bare]


def test_a_defect_class_without_a_rule_stops_the_box_unless_ignored_on_purpose(tmp_path, ledger):
    config = tmp_path / "box.toml"
    config.write_text(BED_ONLY + '[rules.incompleteness]\nmax_total_area_mm2 = 20.0\nverdict = "RECOAT"\n')
    layer = SAMPLE_BUILD / sorted(ledger)[0]
    result = run("analyze", "--config", config, layer)
    assert result.returncode != 0 and result.stdout == ""
    assert (
        "rules.super-elevation, rules.hopping, rules.streaking are missing: the model finds these classes and no "
        'rule judges them; add [rules.<class>] with a limit and a verdict for each, or verdict = "ignore" to let one through'
    ) in result.stderr, result.stderr
    ignored = "".join(f'[rules.{c}]\nverdict = "ignore"\n' for c in ("super-elevation", "hopping", "streaking"))
    config.write_text(config.read_text() + ignored)
    result = run("analyze", "--config", config, layer)
    assert result.returncode == 0, result.stderr


def test_run_says_where_each_table_came_from(tmp_path, ledger):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "layer-0001.png").write_bytes((SAMPLE_BUILD / sorted(ledger)[0]).read_bytes())
    config = tmp_path / "box.toml"
    config.write_text(
        BED_ONLY + replay_camera(frames) + '\n[trigger]\nkind = "timer"\ninterval_ms = 60000\n'
        + '\n[dashboard]\naddress = "127.0.0.1:0"\n'
    )
    box = Appliance(config)
    try:
        line = box.wait_for(r"^configuration .*box\.toml: ")
        assert line.string.endswith(
            "box.toml: [bed] [camera] [trigger] [dashboard] from the file; [model] [refine] [frame_check] "
            "[uncertainty_gate] [layer_classifier] [recoat] [rules] [tracks] [images] [plc] [journal] [record] "
            "embedded defaults"
        ), line.string
        box.wait_for("^ready$", timeout=60)
    finally:
        box.stop()


def test_the_graph_follows_precision_and_auto_runs_fp32_on_the_cpu(tmp_path, ledger):
    """`[model] precision`: absent means auto, which runs the fp32 graph on ONNX Runtime's CPU
    provider and on tract (INT8 is slower there, docs/performance.md); int8 and fp32 force one;
    --precision overrides the file; a word it does not know is refused by key."""
    layer = SAMPLE_BUILD / sorted(ledger)[0]
    config = tmp_path / "box.toml"
    config.write_text(BED_ONLY)
    for backend in ("ort", "tract"):
        result, objects = analyze_json("--config", config, "--backend", backend, layer)
        assert result.returncode == 0, result.stderr
        assert objects[0]["model"]["graph"] == "fp32", (backend, objects[0]["model"])
    config.write_text(BED_ONLY + '\n[model]\nprecision = "int8"\n')
    result, objects = analyze_json("--config", config, layer)
    assert result.returncode == 0, result.stderr
    assert objects[0]["model"]["graph"] == "int8"
    result, objects = analyze_json("--config", config, "--precision", "fp32", layer)
    assert result.returncode == 0, result.stderr
    assert objects[0]["model"]["graph"] == "fp32"
    config.write_text(BED_ONLY + '\n[model]\nprecision = "fp16"\n')
    result = run("analyze", "--config", config, layer)
    assert result.returncode != 0 and result.stdout == ""
    assert 'model.precision: unknown precision "fp16": use auto, int8 or fp32' in result.stderr, result.stderr

