"""Layers of a camera or machine the model never learnt from, against its own held-out layers:
does the domain check call them unfamiliar, and does the ensemble's uncertainty rise on them
(issue 19's targets)?

    python -m bedsight_train.foreign --own OWN/real-eval.json --foreign FOREIGN/real-eval.json --out DIR

Both reports come from `real_eval` with one model image: OWN on the held-out split of the
folders it learnt from (`--split test`), FOREIGN on every layer of the others (`--split all`).
A layer counts when the box judged it (a FAULT has no score). Writes DIR/foreign.json and
DIR/foreign.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .common import BadInput
from .metrics import auroc
from .real_eval import in_judged_split, wilson

# issue 19's targets
FOREIGN_UNFAMILIAR_TARGET = 0.80  # layers of machines the model never saw, flagged unfamiliar
OWN_FAMILIAR_TARGET = 0.95  # held-out layers of its own machines, familiar
AUROC_TARGET = 0.80  # per-layer uncertainty telling foreign layers from its own


def load_report(path: Path, flag: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(f"{flag} {path}: not found (a real-eval.json written by `python -m bedsight_train.real_eval`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{flag} {path}: not a readable real-eval.json ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("layers"), list) or "run" not in report:
        raise BadInput(f"{flag} {path}: not a real-eval.json (no layers and run)")
    return report


def judged(report: dict[str, Any]) -> list[dict[str, Any]]:
    split = report["run"]["split"]
    return [l for l in report["layers"] if in_judged_split(l["split"], split) and l.get("verdict") not in (None, "FAULT")]


def side(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """What one side's layers say: how many are familiar (of those the domain check scored), the
    uncertainty score's mean and median, and the verdicts."""
    scored = [l for l in layers if l.get("domain")]
    familiar = sum(bool(l["domain"]["familiar"]) for l in scored)
    scores = [l["uncertainty"] for l in layers if l.get("uncertainty") is not None]
    verdicts: dict[str, int] = {}
    for l in layers:
        verdicts[l["verdict"]] = verdicts.get(l["verdict"], 0) + 1
    return {
        "layers": len(layers),
        "folders": sorted({l["folder"] for l in layers}),
        "domain_scored": len(scored),
        "familiar": familiar,
        "familiar_share": familiar / len(scored) if scored else None,
        "familiar_interval": wilson(familiar, len(scored)),
        "mean_uncertainty": float(np.mean(scores)) if scores else None,
        "median_uncertainty": float(np.median(scores)) if scores else None,
        "verdicts": dict(sorted(verdicts.items())),
    }


def compare(own: dict[str, Any], foreign: dict[str, Any]) -> dict[str, Any]:
    """The figures of issue 19's targets from the two reports (see the module's docstring)."""
    for key in ("model_name", "model_version"):
        if own["run"].get(key) != foreign["run"].get(key):
            raise BadInput(f"--own and --foreign judged with different models ({key}: {own['run'].get(key)!r} and {foreign['run'].get(key)!r}): compare one model's layers")
    shared = sorted({l["folder"] for l in own["layers"]} & {l["folder"] for l in foreign["layers"]})
    if shared:
        raise BadInput(f"--own and --foreign both hold the folder(s) {', '.join(shared)}: foreign layers come from a camera the model never learnt from")
    mine, theirs = judged(own), judged(foreign)
    if not mine or not theirs:
        raise BadInput(f"{'--own' if not mine else '--foreign'}: no layer the box judged (all FAULT, or none in the split)")
    a, b = side(mine), side(theirs)
    unc = [(l["uncertainty"], False) for l in mine if l.get("uncertainty") is not None] + [(l["uncertainty"], True) for l in theirs if l.get("uncertainty") is not None]
    dom = [(l["domain"]["score"], False) for l in mine if l.get("domain")] + [(l["domain"]["score"], True) for l in theirs if l.get("domain")]

    def area(pairs):
        return auroc(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else None

    unfamiliar = None if b["familiar_share"] is None else 1.0 - b["familiar_share"]
    result = {
        "model": own["run"].get("model"),
        "model_name": own["run"].get("model_name"),
        "model_version": own["run"].get("model_version"),
        "own": {**a, "split": own["run"]["split"]},
        "foreign": {**b, "split": foreign["run"]["split"], "unfamiliar_share": unfamiliar},
        "auroc_uncertainty": area(unc),
        "auroc_domain_score": area(dom),
        "domain_threshold": next((l["domain"]["threshold"] for l in mine + theirs if l.get("domain")), None),
    }
    result["targets"] = {
        f"foreign layers unfamiliar >= {FOREIGN_UNFAMILIAR_TARGET:.0%}": None if unfamiliar is None else unfamiliar >= FOREIGN_UNFAMILIAR_TARGET,
        f"own held-out layers familiar >= {OWN_FAMILIAR_TARGET:.0%}": None if a["familiar_share"] is None else a["familiar_share"] >= OWN_FAMILIAR_TARGET,
        f"uncertainty AUROC, foreign against own, >= {AUROC_TARGET}": None if result["auroc_uncertainty"] is None else result["auroc_uncertainty"] >= AUROC_TARGET,
    }
    return result


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f} %"


def _interval(ci: list[float] | None) -> str:
    return "" if ci is None else f" ({ci[0] * 100:.0f}-{ci[1] * 100:.0f})"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2e}"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Foreign layers against the model's own",
        "",
        f"Model {r['model_name']} {r['model_version']} (`{r['model']}`). Own: the `{r['own']['split']}` split of "
        f"{', '.join(r['own']['folders'])}; foreign: the `{r['foreign']['split']}` layers of {', '.join(r['foreign']['folders'])}. "
        f"Domain threshold {r['domain_threshold']}. Rates in brackets: 95 % Wilson interval.",
        "",
        "| layers | judged | familiar | mean uncertainty | median uncertainty | verdicts |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("own", "foreign"):
        s = r[name]
        verdicts = ", ".join(f"{k} {v}" for k, v in s["verdicts"].items())
        lines.append(f"| {name} | {s['layers']} | {s['familiar']}/{s['domain_scored']} = {_pct(s['familiar_share'])}{_interval(s['familiar_interval'])} | "
                     f"{_num(s['mean_uncertainty'])} | {_num(s['median_uncertainty'])} | {verdicts} |")
    auc_u = "n/a" if r["auroc_uncertainty"] is None else f"{r['auroc_uncertainty']:.3f}"
    auc_d = "n/a" if r["auroc_domain_score"] is None else f"{r['auroc_domain_score']:.3f}"
    lines += [
        "",
        f"AUROC for telling foreign layers from the model's own: the uncertainty score {auc_u}, the domain score {auc_d}.",
        "",
        "| target (issue 19) | met |",
        "|---|---|",
    ]
    lines += [f"| {k} | {'n/a' if v is None else 'yes' if v else 'no'} |" for k, v in r["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bedsight_train.foreign", description=__doc__.split("\n\n")[0])
    ap.add_argument("--own", required=True, type=Path, help="real-eval.json of the model's own held-out layers (real_eval --split test)")
    ap.add_argument("--foreign", required=True, type=Path, help="real-eval.json of a camera or machine it never learnt from (real_eval --split all)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    try:
        result = compare(load_report(args.own, "--own"), load_report(args.foreign, "--foreign"))
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "foreign.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (args.out / "foreign.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
