#!/usr/bin/env bash
# Relay CPU per round trip, this build against another relay-server binary (an earlier commit's),
# side by side: for each round and size the two run back to back under the same relay-load echo
# load (10 binaries, 100 phones, W=8, 8 s), and the server's user + system time from /proc is
# divided by the round trips it carried.
#
#   git worktree add ../base <commit> && (cd ../base && cargo build --release -p relay-server)
#   bash benches/cpu-vs-baseline.sh ../base/target/release/relay-server 3
#
# This build runs with the admission limits lifted and no metrics listener, as compare.sh runs
# it; the baseline gets the flags every build has. CPU per unit of work is steadier than
# throughput on a shared box: it does not depend on who else had the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=${1:?usage: benches/cpu-vs-baseline.sh BASELINE_RELAY_SERVER [ROUNDS]}
rounds=${2:-3}
[ -x "$baseline" ] || { echo "cpu-vs-baseline.sh: $baseline is not an executable" >&2; exit 2; }
cargo build --release -q -p relay-server -p relay-testkit --bins
ours=target/release/relay-server
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
port=18301
for round in $(seq "$rounds"); do
  for size in 16384 64; do
    for who in baseline ours; do
      if [ "$who" = baseline ]; then
        "$baseline" --insecure-listen "127.0.0.1:$port" --phones-per-server 1000 2>/dev/null &
      else
        "$ours" --insecure-listen "127.0.0.1:$port" --phones-per-server 1000 \
          --max-connections-per-ip 100000 --rate-limit-per-minute 1000000 \
          --rate-limit-burst 1000000 --metrics-listen "" 2>/dev/null &
      fi
      pid=$!
      for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
      done
      t0=$(ticks "$pid")
      out=$(target/release/relay-load --addr "127.0.0.1:$port" -q --json echo --binaries 10 \
        --phones 100 --size "$size" --window 8 --duration 8s --warmup 0s)
      t1=$(ticks "$pid")
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      rts=$(echo "$out" | grep -o '"round_trips":[0-9]*' | head -1 | cut -d: -f2)
      python3 -c "print(f'round=$round size=$size $who round_trips=$rts server_cpu_us_per_rt={($t1-$t0)/$hz/$rts*1e6:.2f}')"
    done
  done
done
