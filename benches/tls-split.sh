#!/usr/bin/env bash
# The relay's TLS split (listen/split.rs) vs tokio::io::split, side by side: for each run and
# scenario, benches/compare.sh --tls once with each split (order alternating), each time against
# a fresh TLS echo server too. Prints one line per measurement and the medians per split.
#
#   benches/tls-split.sh [RUNS]        (default 3; scenarios closed-64, closed-16k, open-2000)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-3}
out=$(mktemp -d "${TMPDIR:-/tmp}/relay-tls-split.XXXXXX")
trap 'rm -rf "$out"' EXIT
(cd "$root" && cargo build --release -q -p relay-server -p relay-testkit)
one() { # SPLIT SCENARIO RUN
  local env=()
  [ "$1" = tokio ] && env=(RELAY_BENCH_TLS_SPLIT=tokio)
  env "${env[@]}" bash "$root/benches/compare.sh" --tls --no-build --runs 1 --scenarios "$2" \
    2>&1 | grep '^run ' | sed "s/^run 1\/1/split=$1 run=$3/" | tee -a "$out/lines"
}
for ((run = 1; run <= runs; run++)); do
  for s in closed-64 closed-16k open-2000; do
    if ((run % 2)); then one own "$s" "$run"; one tokio "$s" "$run"
    else one tokio "$s" "$run"; one own "$s" "$run"; fi
  done
done
echo
echo "medians of $runs run(s):"
for s in closed-64 closed-16k open-2000; do
  for split in own tokio; do
    for target in relay direct; do
      for m in round_trips_per_sec p99; do
        vals=$(grep "split=$split " "$out/lines" | grep " $s  $target:" | grep -o "$m=[0-9.]*" | cut -d= -f2 || true)
        [ -z "$vals" ] && continue
        med=$(printf '%s\n' $vals | sort -g | awk '{v[NR]=$1} END {print (NR%2)? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')
        printf '%-11s split=%-6s %-7s %-20s %s\n' "$s" "$split" "$target" "$m" "$med"
      done
    done
  done
done
