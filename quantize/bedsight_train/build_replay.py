"""Layers replayed as a build through `bedsight run`: what the box does over a run of consecutive
layers, with its recoat budget and its tracks, where `real_eval` judges each layer alone.

A folder's layers, in name order, go to the box as a build does: the replay camera hands it one
photograph per trigger, a timer triggers (a PLC that recoats whenever it is told to), and the
verdicts are read back from the journal the loop writes. After a RECOAT the loop judges the same
layer again, so the next photograph stands in for the re-spread bed: a defect that is still there
on it is a defect the re-spread did not fix (`[rules.<class>.track] after_recoat`), and a layer
spread more than `[recoat] max_retries` times is PAUSE. On a real printer the re-spread bed is the
same layer's; in a folder of photographs it is the next layer's, which shows what a re-spread
would show only for defects that persist from layer to layer (a part standing proud, a damaged
blade, a starved feed), not for powder that a second pass would spread well.

What a build's summary holds (`summarise`): the verdicts of every photograph, the layers the build
reached, the first photograph on which the box stopped for a person (REVIEW, PAUSE or FAULT) with
the rule and the reason it gave, and which rules gave the verdicts that were not PASS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from .common import BadInput, config_with_keys

VERDICTS = ("PASS", "RECOAT", "REVIEW", "PAUSE", "FAULT")
# Verdicts that stop the printer for a person.
STOPS = ("REVIEW", "PAUSE", "FAULT")
# Tables the replay sets itself; a configuration that has them already is refused.
OWN_TABLES = ("camera", "trigger", "plc", "dashboard", "record", "journal")
# The timer's period: shorter than a layer's analysis, so that the box is never idle (a trigger
# while it is busy is answered BUSY and dropped).
INTERVAL_MS = 50
# What the loop says when the replay camera has no photograph left (hal::camera::ReplayCamera).
END_OF_REPLAY = "no more frames to replay"


def run_config(config_text: str, model: Path, frames: Path) -> str:
    """The configuration of a replayed build: `config_text` (the analysis configuration: bed,
    model, rules) with `[model] image` set to `model`, the replay camera on `frames`, the timer
    trigger, and no dashboard or per-layer images (the journal alone is read back)."""
    doc = tomllib.loads(config_text)
    taken = [t for t in OWN_TABLES if t in doc]
    if taken:
        raise BadInput(f"configuration: it has [{'] ['.join(taken)}]; a replayed build sets those itself (pass the analysis configuration)")
    if "image" in doc.get("model", {}):
        raise BadInput("configuration: [model] image is set; a replayed build runs the model it is given")
    if "model" not in doc:
        config_text += "\n[model]\n"
    text = config_with_keys(config_text, "model", {"image": str(Path(model).resolve())})
    if not text.endswith("\n"):
        text += "\n"
    text += (
        f'\n[camera]\nkind = "replay"\nfolder = {json.dumps(str(Path(frames).resolve()))}\n'
        f'\n[trigger]\nkind = "timer"\ninterval_ms = {INTERVAL_MS}\n'
        "\n[dashboard]\nenabled = false\n"
        "\n[record]\nenabled = false\n"
    )
    tomllib.loads(text)
    return text


def replay(binary: Path, model: Path, config_text: str, photographs: Sequence[Path], work: Path, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Replay `photographs` (in this order) as one build through `bedsight run` and return one
    journal record per photograph, in order (the loop's own JSON lines, `bedsight journal export
    --format jsonl`). `work` is emptied of a previous replay's frames and state first."""
    if not photographs:
        raise BadInput("a replayed build needs at least one photograph")
    work = Path(work)
    frames, state = work / "frames", work / "state"
    for folder in (frames, state):
        shutil.rmtree(folder, ignore_errors=True)
    frames.mkdir(parents=True)
    # the replay camera plays a folder in name order: the names keep the order given
    for n, photo in enumerate(photographs):
        (frames / f"{n:06d}{Path(photo).suffix}").symlink_to(Path(photo).resolve())
    config = work / "build.toml"
    config.write_text(run_config(config_text, model, frames))
    env = dict(os.environ)
    env.setdefault("RAYON_NUM_THREADS", "2")
    proc = subprocess.Popen([str(binary), "run", "--config", str(config), "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log: list[str] = []
    ended = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            if END_OF_REPLAY in line:
                ended.set()
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    limit = timeout_s if timeout_s is not None else 60.0 + 10.0 * len(photographs)
    finished = ended.wait(limit)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait()
    reader.join(5)
    tail = " | ".join(log[-5:])
    if not finished:
        raise BadInput(f"{binary} run: the build of {len(photographs)} photograph(s) was not done after {limit:.0f} s: {tail}")
    if not any(END_OF_REPLAY in line for line in log):
        raise BadInput(f"{binary} run exited with status {status} before the last photograph: {tail}")
    journal = state / "journal" / "layers.bsj"
    exported = subprocess.run([str(binary), "journal", "export", str(journal), "--format", "jsonl"], capture_output=True, text=True)
    if exported.returncode != 0:
        raise BadInput(f"{binary} journal export {journal}: {exported.stderr.strip()}")
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    # each photograph is one judged layer; the triggers after the last one are FAULT (no frame)
    judged, after = records[: len(photographs)], records[len(photographs) :]
    if len(judged) < len(photographs) or any(END_OF_REPLAY in r.get("reason", "") for r in judged):
        raise BadInput(f"{journal}: {len(records)} record(s) for {len(photographs)} photograph(s), the replay ended early: {tail}")
    if any(END_OF_REPLAY not in r.get("reason", "") for r in after):
        raise BadInput(f"{journal}: a record after the last photograph that is not the end of the replay")
    return judged


def rule_class(rule: str) -> str | None:
    """The defect class a rule belongs to (`rules.<class>` and `rules.<class>.track...`), or None
    for the rules of no class (the recoat budget, frame checks, the uncertainty gate)."""
    parts = rule.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "rules" else None


def summarise(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """One replayed build, from its journal records (one per photograph, `names` in the same
    order): verdict counts, the layers reached, the first stop for a person and the rules behind
    every verdict that was not PASS."""
    if len(records) != len(names):
        raise ValueError(f"{len(records)} records for {len(names)} photographs")
    verdicts = Counter(r["verdict"] for r in records)
    first = next((i for i, r in enumerate(records) if r["verdict"] in STOPS), None)
    not_pass = [r for r in records if r["verdict"] != "PASS"]
    rules = Counter(r.get("rule") or "(none)" for r in not_pass)
    classes = Counter(c for c in (rule_class(r.get("rule") or "") for r in not_pass) if c)
    return {
        "photographs": len(records),
        "layers": len({r["layer"] for r in records}),
        "verdicts": {v: verdicts.get(v, 0) for v in VERDICTS},
        "stops": sum(verdicts.get(v, 0) for v in STOPS),
        "first_stop": None
        if first is None
        else {
            "photograph": first + 1,
            "name": names[first],
            "layer": records[first]["layer"],
            "verdict": records[first]["verdict"],
            "rule": records[first].get("rule"),
            "reason": records[first].get("reason"),
        },
        "rules": dict(rules.most_common()),
        "rule_classes": dict(classes.most_common()),
        "recoats_not_fixed": sum(1 for r in records if r.get("recoat_outcome") == "not fixed"),
        "recoats_fixed": sum(1 for r in records if r.get("recoat_outcome") == "fixed"),
    }


def markdown(builds: dict[str, dict[str, Any]], label_classes: dict[str, list[str]]) -> list[str]:
    """The report's section on the replayed builds, one row per build (named by its folder, or
    `folder @ group`; its `folder` gives its label classes)."""
    lines = [
        "## As a build (bedsight run)",
        "",
        "Each folder's layers replayed in name order through `bedsight run` (replay camera, timer trigger, the same "
        "configuration): the recoat budget and the tracks act. After a RECOAT the next photograph stands in for the "
        "re-spread bed.",
        "",
        "| folder | label classes | photographs | layers | PASS | RECOAT | REVIEW | PAUSE | FAULT | first stop for a person | classes of the rules behind the verdicts not PASS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in builds.items():
        stop = b["first_stop"]
        stop_text = "none" if stop is None else f"photograph {stop['photograph']} (layer {stop['layer']}): {stop['verdict']}, {stop['rule'] or 'no rule'}"
        classes = ", ".join(f"{c} {n}" for c, n in b["rule_classes"].items()) or "none"
        v = b["verdicts"]
        lines.append(
            f"| {name} | {', '.join(label_classes[b.get('folder', name)]) or 'clean'} | {b['photographs']} | {b['layers']} | "
            f"{v['PASS']} | {v['RECOAT']} | {v['REVIEW']} | {v['PAUSE']} | {v['FAULT']} | {stop_text} | {classes} |"
        )
    lines.append("")
    return lines
