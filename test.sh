#!/usr/bin/env bash
# Runs every test of bedsight: the Rust workspace (cargo-nextest), then the Python suites
# (the training tool in quantize/tests, the end-to-end tests of the appliance in tests/).
# On a fresh machine it first sets up the Python environment (PyTorch, ONNX Runtime) in
# ~/.cache/bedsight/venv and reuses it on later runs.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${BEDSIGHT_VENV:-$HOME/.cache/bedsight/venv}"
if ! "$VENV/bin/python" -c "import torch, onnxruntime, onnx" 2>/dev/null; then
    echo "== setting up the Python environment in $VENV (PyTorch is large: this takes minutes, once)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e "quantize[test]"

# The ONNX Runtime shared library that the `ort` backend loads comes from the Python package.
ORT_DYLIB_PATH="$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH

# The V4L2 camera's bindings (hal, crate v4l) are generated at build time with libclang.
if command -v dpkg >/dev/null && ! dpkg -s libclang-dev >/dev/null 2>&1; then
    echo "== installing libclang-dev (needed to build the V4L2 bindings)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends libclang-dev
fi

echo "== building"
cargo build --workspace --bins --features appliance/v4l2
export BEDSIGHT_BIN="$PWD/target/debug/bedsight"

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --features appliance/v4l2 --no-fail-fast
else
    cargo test --workspace --features appliance/v4l2 --no-fail-fast
fi

echo "== Python tests"
"$VENV/bin/python" -m pytest -q quantize/tests tests
