#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short while (CI smoke; default 30 s each).
#
#   scripts/fuzz-smoke.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); the stable toolchain
# is allowed the nightly flags cargo-fuzz uses through RUSTC_BOOTSTRAP=1.
# Exits non-zero if any target finds a crash; the reproducer is left in
# fuzz/artifacts/<target>/ and the command to replay it is printed.
set -euo pipefail

secs="${1:-30}"
shift || true
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

export RUSTC_BOOTSTRAP=1
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets (sanitizer + coverage flags, release profile).
cargo fuzz build

status=0
for t in "${targets[@]}"; do
    echo "fuzz-smoke: ${t} for ${secs}s"
    # Corpus under fuzz/corpus/<t> (git-ignored) grows across runs on one machine.
    mkdir -p "fuzz/corpus/${t}"
    if ! cargo fuzz run "$t" "fuzz/corpus/${t}" -- \
        -max_total_time="$secs" -max_len=4096 -rss_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 2>"fuzz/${t}.log"; then
        echo "fuzz-smoke: ${t} FAILED; last lines of fuzz/${t}.log:" >&2
        tail -n 40 "fuzz/${t}.log" >&2
        echo "fuzz-smoke: replay with: RUSTC_BOOTSTRAP=1 cargo fuzz run ${t} fuzz/artifacts/${t}/<crash-file>" >&2
        status=1
    else
        grep -E "stat::number_of_executed_units|Done" "fuzz/${t}.log" | tail -n 2 || true
    fi
done
exit "$status"
