# Sourced by the build scripts here: `repo` (the checkout), `py` (the Python with the training tool,
# installed into it on first use; PYTHON overrides) and `bt`, which runs the training tool.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$HOME/.cache/bedsight/venv/bin/python}"
# One torch thread trains faster than two when the cores are shared with other work (a cargo
# build): OpenMP threads that wait for each other collapse under contention.
export BEDSIGHT_TRAIN_THREADS="${BEDSIGHT_TRAIN_THREADS:-1}"
if ! "$py" -c "import bedsight_train" 2>/dev/null; then
    "$(dirname "$py")/pip" install -q -e "$repo/quantize"
fi
bt() { "$py" -m bedsight_train.cli "$@"; }
# need_bedsight_bin: export BEDSIGHT_BIN, the binary that packs and judges (BEDSIGHT_BIN, PATH or
# target/), or stop
need_bedsight_bin() {
    local bin
    bin="$("$py" -c "from bedsight_train.pack import find_bedsight_bin; print(find_bedsight_bin() or '')")"
    if [[ -z "$bin" ]]; then
        echo "no bedsight binary: build it first (cargo build --release --bin bedsight) or set BEDSIGHT_BIN" >&2
        exit 2
    fi
    export BEDSIGHT_BIN="$bin"
}
