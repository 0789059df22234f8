"""The shipped width chosen by measurement (issue 21): each preset's figures beside its layer time.

`quantize/scripts/compare-presets.sh` trains the `paper` preset on what two CPU cores afford,
judges it as the shipped model is judged (the second synthetic generator; the box on the held-out
real layers, `real_eval`) and times both in the box at the camera's resolution (`bedsight bench`).
This module turns those files into one table, `presets.md` beside the shipped model, and puts
the same table in the model's report.md (its own section, replaced on every run). The rows are
kept as data in `presets.json` beside it: when `default_model` rebuilds the model, the shipped
row's figures are the new model's own (its time, FLOPs and memory were measured for its width and
hold while the width is the same), so the report never shows two figures for one model.

    python -m bedsight_train.presets --shipped assets/default-model --shipped-bench small.json \\
        --candidate out/preset-paper --candidate-bench paper.json --assets assets/default-model
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SECTION = "## Width: the presets measured (issue 21)"
SHIPPED = "small (shipped)"  # the shipped model's row, rewritten from its own figures on a rebuild


def _bench_row(bench: dict[str, Any]) -> dict[str, Any]:
    """The one model of a `bedsight bench --json` file: its fp32 ort inference and layer medians
    and its resident memory."""
    if len(bench.get("models", [])) != 1:
        raise ValueError("a bench file here must time exactly one model (bench --model DIR --sizes 1024)")
    model = bench["models"][0]
    infer = next((r for r in model["inference"] if r["runner"] == "ort" and r["precision"] == "fp32"), None)
    if infer is None:
        raise ValueError(f"{model['name']}: the bench has no ort fp32 row")
    layer = (model.get("stages") or {}).get("layer_median_ms")
    return {
        "gflops": model.get("gflops_ensemble"),
        "infer_ms": infer["median_ms"],
        "layer_ms": layer,
        "resident_mib": model["resident_mib_after_warmup"],
    }


def collect(work: Path) -> dict[str, Any]:
    """The comparison run's metrics.json, in the keys of default_model's: from its run (history,
    run.json), its evaluations (eval-fp32, eval-alt-fp32) and the box's real-layer report."""
    history = json.loads((work / "run" / "history.json").read_text())
    run_info = json.loads((work / "run" / "run.json").read_text())
    first = json.loads((work / "eval-fp32" / "metrics.json").read_text())
    second = json.loads((work / "eval-alt-fp32" / "metrics.json").read_text())
    real = json.loads((work / "eval-real" / "real-eval.json").read_text())
    before = work / "run-0" / "history.json"
    seconds = history.get("train_seconds") or 0.0
    epochs = len(history["epochs"])
    if before.exists():  # the stage before, which the run started from
        earlier = json.loads(before.read_text())
        seconds += earlier.get("train_seconds") or 0.0
        epochs += len(earlier["epochs"])
    return {
        "parameters": run_info.get("parameters"),
        "epochs": epochs,
        "train_seconds": seconds,
        "test_fp32": {k: first[k] for k in ("cpa", "iou", "mpa", "miou")},
        "alt_generator_fp32": {k: second[k] for k in ("cpa", "iou", "mpa", "miou")},
        "real_eval": {k: real[k] for k in ("split", "overall", "per_folder", "clean", "classification", "hand_labelled")},
    }


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the table shows of a model's metrics.json (default_model's, or the comparison's)."""
    real = metrics["real_eval"]
    return {
        "parameters": metrics.get("parameters"),
        "trained": f"{metrics.get('epochs')} epochs, {(metrics.get('train_seconds') or 0) / 60:.0f} min",
        "miou_first": metrics["test_fp32"]["miou"],
        "miou_second": metrics["alt_generator_fp32"]["miou"],
        "clean_pass": real["clean"]["layers"] - real["clean"]["not_pass"],
        "clean_layers": real["clean"]["layers"],
        "clean_flagged": real["clean"]["mean_flagged_share"],
        "macro_f1": real["classification"]["macro_f1"],
        "inside_any": real["hand_labelled"].get("inside_any_share"),
        "regions_same": real["hand_labelled"]["regions"]["all"]["detected_same"],
        "regions": real["hand_labelled"]["regions"]["all"]["regions"],
    }


def table(rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """rows: (label, figures, bench row) per preset."""
    lines = [
        "| preset | parameters | trained | MIoU first / second generator | clean real layers PASS (flagged) | real layer classes, macro F1 | flagged px inside hand labels | hand-labelled regions found | GFLOP per layer | inference / layer at 1024x1024, ort fp32 | resident |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, f, b in rows:
        inside = "n/a" if f["inside_any"] is None else f"{f['inside_any'] * 100:.0f} %"
        layer = "n/a" if b["layer_ms"] is None else f"{b['layer_ms']:.0f} ms"
        gflops = "n/a" if b["gflops"] is None else f"{b['gflops']:.1f}"
        lines.append(
            f"| {label} | {f['parameters'] / 1e6:.2f} M | {f['trained']} | "
            f"{f['miou_first']:.3f} / {f['miou_second']:.3f} | {f['clean_pass']}/{f['clean_layers']} ({f['clean_flagged'] * 100:.2f} %) | "
            f"{f['macro_f1']:.3f} | {inside} | {f['regions_same']}/{f['regions']} | {gflops} | {b['infer_ms']:.0f} ms / {layer} | {b['resident_mib']:.0f} MiB |"
        )
    return "\n".join(lines)


def shipped_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The shipped row's figures: its metrics.json counts the epochs of its last stage alone."""
    own = figures(metrics)
    own["trained"] += " (its last stage)"
    return own


def write(assets: Path, rows: list[dict[str, Any]], notes: str) -> None:
    """The comparison in `assets`: its rows and notes as data (presets.json), the table with the
    notes under it (presets.md), and the same section in report.md (replaced, or appended)."""
    (assets / "presets.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1) + "\n")
    body = table([(r["label"], r["figures"], r["bench"]) for r in rows])
    if notes.strip():
        body += "\n\n" + notes.strip()
    section = f"{SECTION}\n\n{body.strip()}\n"
    (assets / "presets.md").write_text(f"# {SECTION[3:]}\n\n{body.strip()}\n")
    report = assets / "report.md"
    text = report.read_text() if report.exists() else ""
    pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n"), text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text.rstrip("\n") + "\n")


def carry(old: Path, new: Path) -> None:
    """Keep the comparison when the model is rebuilt: `old`'s comparison (the assets before the
    rebuild) into `new`, with its section in `new`'s report.md. The shipped row takes the new
    model's figures from `new`/metrics.json when its width is the one measured (the same
    parameter count); a model of another width keeps the old row, relabelled as the model then
    shipped, until compare-presets.sh is rerun."""
    data = old / "presets.json"
    if not data.exists():  # no comparison was ever run
        return
    kept = json.loads(data.read_text())
    rows, metrics = kept["rows"], json.loads((new / "metrics.json").read_text())
    for row in rows:
        if row["label"] != SHIPPED:
            continue
        if row["figures"]["parameters"] == metrics.get("parameters"):
            row["figures"] = shipped_figures(metrics)
        else:
            row["label"] = "small (shipped when measured)"
    write(new, rows, kept["notes"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bedsight_train.presets", description=__doc__.splitlines()[0])
    ap.add_argument("--shipped", type=Path, required=True, help="the shipped model's folder (metrics.json)")
    ap.add_argument("--shipped-bench", type=Path, required=True, help="bench --json of the shipped model")
    ap.add_argument("--candidate", type=Path, required=True, help="the other preset's work folder (run-0/, run/, eval-fp32/, eval-alt-fp32/, eval-real/)")
    ap.add_argument("--candidate-bench", type=Path, required=True, help="bench --json of the other preset")
    ap.add_argument("--notes", type=Path, default=None, help="markdown put under the table: how each was trained, the choice")
    ap.add_argument("--assets", type=Path, required=True, help="where presets.md and report.md are")
    args = ap.parse_args(argv)
    shipped = json.loads((args.shipped / "metrics.json").read_text())
    candidate = collect(args.candidate)
    (args.candidate / "metrics.json").write_text(json.dumps(candidate, indent=1))
    rows = [
        {"label": SHIPPED, "figures": shipped_figures(shipped), "bench": _bench_row(json.loads(args.shipped_bench.read_text()))},
        {"label": "paper", "figures": figures(candidate), "bench": _bench_row(json.loads(args.candidate_bench.read_text()))},
    ]
    notes = args.notes.read_text() if args.notes is not None else ""
    write(args.assets, rows, notes)
    print(f"wrote {args.assets / 'presets.md'} and its section of {args.assets / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
