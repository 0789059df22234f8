"""`bedsight demo`: the whole loop on the embedded defaults, as a first-time user sees it."""
import json
import re

from conftest import SAMPLE_BUILD, run


def test_demo_prints_a_line_per_layer_and_writes_its_outputs(tmp_path, ledger):
    out = tmp_path / "demo"
    result = run("demo", "--out", out)
    assert result.returncode == 0, result.stderr
    layers = sorted(ledger)
    lines = [l for l in result.stdout.splitlines() if re.match(r"\[\s*\d+/\d+\] layer", l)]
    assert len(lines) == len(layers), result.stdout
    # each line names the layer's file
    assert [l.split()[-1] for l in lines] == layers, lines
    assert str(out) in result.stdout.splitlines()[-1]

    summary = json.loads((out / "summary.json").read_text())
    verdicts = [layer["verdict"] for layer in summary["layers"]]
    assert len(verdicts) == len(layers)
    # The simulated PLC heard one VERDICT line per layer, the same verdicts the demo printed.
    heard = (out / "plc.log").read_text().splitlines()
    assert [line.split()[2] for line in heard] == verdicts
    assert all(line.startswith(f"VERDICT {i + 1} ") for i, line in enumerate(heard))
    for i, name in enumerate(layers):
        planted = ledger[name] - {"lattice"}
        assert (verdicts[i] == "PASS") == (not planted), f"{name}: planted {sorted(planted)}, verdict {verdicts[i]}"
        assert (out / f"layer-{i + 1:04d}.overlay.png").is_file()

    # the journal `bedsight run` would keep, read by the tools that read a build
    exported = run("journal", "export", out / "journal.bsj", "--format", "jsonl", check=True).stdout.splitlines()
    records = [json.loads(line) for line in exported]
    assert [(r["layer"], r["verdict"]) for r in records] == [(i + 1, v) for i, v in enumerate(verdicts)]
    assert all((r["reason_code"] == 0) == (r["verdict"] == "PASS") for r in records), records
    report = (out / "build-report.html").read_text()
    for word in ("PASS", "RECOAT", "REVIEW", "PAUSE", "FAULT"):
        assert f'<td class="verdict-count" data-verdict="{word}">{verdicts.count(word)}</td>' in report
    again = tmp_path / "again.html"
    run("report", "--journal", out / "journal.bsj", "--out", again, check=True)
    assert again.stat().st_size > 1000


def test_demo_into_a_pipe_that_closes_ends_quietly(tmp_path):
    """`bedsight demo | head -1`: the reader goes away after one line; the demo ends on SIGPIPE as
    command-line tools do, without a panic."""
    import signal
    import subprocess

    from conftest import bedsight_bin

    process = subprocess.Popen([bedsight_bin(), "demo", "--out", str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    # SIGPIPE on its next line (or done already, had it written every line before the close)
    assert process.wait(timeout=300) in (-signal.SIGPIPE, 0), stderr
    assert first.startswith("bedsight demo: model ")
    # which graph runs and why (`[model] precision = "auto"` on ONNX Runtime's CPU provider)
    assert "on ort (CPU), fp32 graph (precision auto: on ort (CPU) the INT8 graph is slower than fp32; INT8 runs on TensorRT)" in first, first
    assert "panicked" not in stderr, stderr
