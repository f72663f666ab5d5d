#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh [SECONDS_PER_TARGET]`.
# cargo-fuzz needs nightly-only compiler flags; stable rustc allows them with RUSTC_BOOTSTRAP=1,
# which is all this script relies on (no other toolchain can be installed here). Sanitizers
# are off (`-s none`): the targets check logic, and safe Rust needs no ASan.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=(json_validate envelope_parse push_wake headers frame_reader conn_id_sniff cluster_link cluster_head)
cargo fuzz build -s none --release
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzzing $t for ${secs}s"
    cargo fuzz run -s none --release "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|Done|==|SUMMARY|thread)' || true
    # A crash leaves an artifact; fail loudly with its path.
    if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
        echo "fuzz target $t crashed: $(ls artifacts/$t/crash-*)" >&2
        exit 1
    fi
done
