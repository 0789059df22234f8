"""End-to-end tests of the `bedsight` binary, run the way a user runs it.

The project's test command (./test.sh) builds the binary and sets BEDSIGHT_BIN; run alone,
these tests fall back to target/debug/bedsight and fail clearly when it is missing.
"""
import atexit
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
SAMPLE_BUILD = ASSETS / "sample-build"
# The default model's input (width, height): the size of the bed it judges and of its masks.
_MANIFEST = tomllib.loads((ASSETS / "default-model" / "manifest.toml").read_text())
MODEL_SIZE = (_MANIFEST["input"]["width"], _MANIFEST["input"]["height"])
# Its name, as the box reports it (kit images re-version it, keeping the name).
MODEL_NAME = _MANIFEST["name"]


# tests/test_soak.py: layers in the normal suite, and with --soak-long (or BEDSIGHT_SOAK_LAYERS).
SOAK_SHORT_LAYERS = 300
SOAK_LONG_LAYERS = 5000


def pytest_addoption(parser):
    parser.addoption("--soak-long", action="store_true", help=f"tests/test_soak.py replays {SOAK_LONG_LAYERS} layers instead of {SOAK_SHORT_LAYERS}")


@pytest.fixture
def soak_layers(request) -> int:
    if "BEDSIGHT_SOAK_LAYERS" in os.environ:
        return int(os.environ["BEDSIGHT_SOAK_LAYERS"])
    return SOAK_LONG_LAYERS if request.config.getoption("--soak-long") else SOAK_SHORT_LAYERS


def bedsight_bin() -> str:
    path = os.environ.get("BEDSIGHT_BIN") or str(REPO / "target" / "debug" / "bedsight")
    if not Path(path).is_file():
        pytest.fail(f"no bedsight binary at {path}: run ./test.sh (it builds it), or cargo build")
    return path


# Every scratch state folder of this test session lives under one folder, removed when the
# session ends: a `bedsight run`'s journal and layer images reach gigabytes, and the folders that
# every run used to leave in /tmp filled the disk (4,635 of them, 38 GB, on 2026-12-06).
_STATE_ROOT = Path(tempfile.mkdtemp(prefix="bedsight-states-"))
atexit.register(shutil.rmtree, _STATE_ROOT, True)


def scratch_state_dir() -> str:
    """A fresh state folder for one `bedsight` process: never the box's /var/lib/bedsight."""
    return tempfile.mkdtemp(prefix="state-", dir=_STATE_ROOT)


def run(*args, cwd=None, check=False, env=None):
    """Runs bedsight with args; returns the CompletedProcess (text)."""
    if env is None:
        # a scratch state folder unless --state-dir is given, gone when the command is
        with tempfile.TemporaryDirectory(prefix="state-", dir=_STATE_ROOT) as state:
            return run(*args, cwd=cwd, check=check, env=dict(os.environ, BEDSIGHT_STATE_DIR=state))
    result = subprocess.run([bedsight_bin(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"bedsight {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def analyze_json(*args, **kwargs):
    """`bedsight analyze --json ...`: (process, list of objects by line)."""
    result = run("analyze", "--json", *args, **kwargs)
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, objects


def report_row(page: str, index: int) -> str:
    """The row of the journal's record `index` (from 0) in the layer table of a build report's HTML."""
    return page.split(f'<tr class="layer-row"><td>{index}</td>')[1].split("</tr>")[0]


def sample_ledger():
    """The sample build's ledger: layer file -> set of planted class names."""
    ledger = tomllib.loads((SAMPLE_BUILD / "layers.toml").read_text())
    return {entry["file"]: set(entry["planted"]) for entry in ledger["layers"]}


@pytest.fixture
def line_port():
    """The PLC's end of a pseudo-terminal for the serial line protocol (run_harness.LinePort)."""
    from run_harness import LinePort  # run_harness imports this module

    port = LinePort()
    yield port
    port.close()


@pytest.fixture(scope="session")
def ledger():
    return sample_ledger()


# Fault injection (tests/test_slots.py): each case records whether the broken image was refused
# with the active model untouched; the count is the last line of the run.
FAULT_CASES = {"run": 0, "refused": 0}


@pytest.fixture
def fault_case():
    """Call the returned function once the case's checks have all passed."""
    FAULT_CASES["run"] += 1
    return lambda: FAULT_CASES.__setitem__("refused", FAULT_CASES["refused"] + 1)


def pytest_terminal_summary(terminalreporter):
    if FAULT_CASES["run"]:
        terminalreporter.write_line(
            f"fault injection: {FAULT_CASES['refused']} of {FAULT_CASES['run']} refused, active model untouched"
        )
