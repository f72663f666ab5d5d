#!/usr/bin/env bash
# CPU seconds per round trip of server and load generator, relay vs direct, 16 KiB and 64 B.
cd "$(dirname "$0")/.." && cargo build --release -q -p relay-server -p relay-testkit
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for size in 16384 64; do
for mode in relay direct; do
  if [ $mode = relay ]; then target/release/relay-server --insecure-listen 127.0.0.1:18300 --phones-per-server 1000 --max-connections-per-ip 100000 --rate-limit-per-minute 1000000 --rate-limit-burst 1000000 2>/tmp/srv.log & D=""; else target/release/echo-server --listen 127.0.0.1:18300 2>/tmp/srv.log & D="--direct"; fi
  SP=$!; sleep 0.5
  t0=$(ticks $SP)
  out=$( { /usr/bin/time -f "LG %U %S" target/release/relay-load --addr 127.0.0.1:18300 $D -q --json echo --binaries 10 --phones 100 --size $size --window 8 --duration 8s --warmup 0s; } 2>&1 )
  t1=$(ticks $SP); kill $SP; wait $SP 2>/dev/null
  rts=$(echo "$out" | grep -o '"round_trips":[0-9]*' | head -1 | cut -d: -f2)
  lg=$(echo "$out" | awk '/^LG/ {print $2+$3}')
  python3 -c "
rt=$rts; srv=($t1-$t0)/100; lg=$lg
print(f'$mode size=$size round_trips={rt} server_cpu_us_per_rt={srv/rt*1e6:.1f} loadgen_cpu_us_per_rt={lg/rt*1e6:.1f} total_us_per_rt={(srv+lg)/rt*1e6:.1f}')"
done; done
