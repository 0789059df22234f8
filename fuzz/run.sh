#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (docs/fuzzing.md).
#
#   fuzz/run.sh              # 60 s per target
#   SECONDS_PER_TARGET=600 fuzz/run.sh modbus_request serial_line
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); the product and ./test.sh need neither. A crash is left in
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ once fixed, where the stable
# test suite replays it (appliance/tests/fuzz_regressions.rs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${SECONDS_PER_TARGET:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(modbus_request serial_line journal_reader model_image manifest config)
fi

# Seeds: what each parser meets in real life, so the fuzzer starts from valid input.
seed() {
    local target="$1"; shift
    mkdir -p "fuzz/corpus/$target"
    for file in "$@"; do
        cp -n "$file" "fuzz/corpus/$target/" 2>/dev/null || true
    done
}
seed config assets/bedsight.toml
seed manifest assets/default-model/manifest.toml
seed model_image assets/default.bsimg
seed journal_reader fuzz/seeds/journal_reader/*
seed modbus_request fuzz/seeds/modbus_request/*
seed serial_line fuzz/seeds/serial_line/*
# Known crashes stay in the corpus, so a regression is found at once.
for target in "${targets[@]}"; do
    if [ -d "fuzz/regressions/$target" ]; then seed "$target" fuzz/regressions/"$target"/*; fi
done

# No sanitizer: the code under test is safe Rust, so libFuzzer's coverage guidance is what
# finds panics and hangs; ASan would only slow the runs down.
# The hal and images targets alone build without the appliance crate (and so without tract).
features=()
if ! printf '%s\n' "${targets[@]}" | grep -qxE 'journal_reader|config'; then
    features=(--no-default-features)
fi
cargo +nightly fuzz build --sanitizer none --release "${features[@]}"
mkdir -p fuzz/logs
status=0
for target in "${targets[@]}"; do
    log="fuzz/logs/$target.log"
    # -timeout: one input running longer than 10 s is a hang (reported like a crash).
    if cargo +nightly fuzz run --sanitizer none --release "${features[@]}" "$target" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        cover=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
        echo "$target: ${seconds} s, $runs inputs, $cover, no crash"
    else
        echo "$target: CRASH or hang, see $log and fuzz/artifacts/$target/"
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -5 || true
        status=1
    fi
done
exit $status
