#!/usr/bin/env bash
# Server CPU seconds per round trip over TLS (user + system, from /proc): the relay with its own
# split (listen/split.rs), the relay with tokio::io::split, and the TLS echo server, at 16 KiB
# and 64 B. CPU per unit of work hardly moves when other processes share the machine, unlike
# throughput, so this is how the two splits are compared. ROUNDS (default 3) alternate the order.
#
#   benches/tls-cpu-per-round-trip.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p relay-server -p relay-testkit
rounds=${1:-3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/relay-tls-cpu.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
# Every client comes from 127.0.0.1: lift the per-IP admission limits (§8) out of the load's way.
lifted=(--max-connections-per-ip 100000 --rate-limit-per-minute 1000000 --rate-limit-burst 1000000)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
one() { # VARIANT SIZE
  local variant=$1 size=$2 direct="" log="$tmp/server.log" pem="$tmp/ca.pem" addr=
  : >"$log"
  case $variant in
    own|tokio)
      env RELAY_BENCH_TLS_SPLIT="$variant" target/release/relay-server --dev-tls \
        --https-listen 127.0.0.1:0 --dev-tls-cert-out "$pem" --phones-per-server 1000 \
        "${lifted[@]}" 2>"$log" & ;;
    direct)
      target/release/echo-server --listen 127.0.0.1:0 --tls-cert-out "$pem" 2>"$log" &
      direct=--direct ;;
  esac
  pid=$!
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening addr=\([^ ]*:[0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  local t0 out t1 rts
  t0=$(ticks "$pid")
  out=$(target/release/relay-load --addr "$addr" --tls-ca "$pem" $direct -q --json echo \
    --binaries 10 --phones 100 --size "$size" --window 8 --duration 8s --warmup 0s)
  t1=$(ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  rts=$(echo "$out" | grep -o '"round_trips":[0-9]*' | head -1 | cut -d: -f2)
  awk -v v="$variant" -v s="$size" -v rt="$rts" -v t="$((t1 - t0))" \
    'BEGIN { printf "%-6s size=%-5s round_trips=%-8s server_cpu_us_per_rt=%.1f\n", v, s, rt, t / 100 / rt * 1e6 }'
}
for ((r = 1; r <= rounds; r++)); do
  for size in 16384 64; do
    if ((r % 2)); then order="own tokio direct"; else order="direct tokio own"; fi
    for v in $order; do one "$v" "$size"; done
  done
done
