#!/usr/bin/env bash
# Runs every test of bedsight: formatting and lints (cargo fmt, clippy), the Rust workspace
# (cargo-nextest), then the Python suites
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
# Asked of the venv's python, so that a venv which sees onnxruntime through a .pth works too.
ORT_DIR="$("$VENV/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"
ORT_DYLIB_PATH="$(ls "$ORT_DIR"/capi/libonnxruntime.so.* | head -n 1)"
export ORT_DYLIB_PATH

# Debian packages the build and the tests need: libclang for the V4L2 bindings (hal, crate v4l),
# openssh-server and -client for flash.sh's test over real ssh to localhost, openssl for the
# key-file interoperability test, chromium for the dashboard's test in a real browser.
missing=""
for package in libclang-dev openssh-server openssh-client openssl chromium; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if [ -n "$missing" ]; then
    echo "== installing$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

# The features of every build and test here: the V4L2 driver, and fault injection (test builds only).
FEATURES="appliance/v4l2,appliance/fault-inject"

echo "== formatting and lints"
# rustfmt.toml sets the width; every allowed lint is allowed where it applies, with its reason.
cargo fmt --all --check
cargo clippy --workspace --all-targets --features "$FEATURES" -- -D warnings

echo "== building"
cargo build --workspace --bins --features "$FEATURES"
export BEDSIGHT_BIN="$PWD/target/debug/bedsight"

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --features "$FEATURES" --no-fail-fast
else
    cargo test --workspace --features "$FEATURES" --no-fail-fast
fi

echo "== Python tests"
"$VENV/bin/python" -m pytest -q quantize/tests tests
