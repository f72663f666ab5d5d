#!/usr/bin/env bash
# The cost of the forwarded path (protocol.md §11), side by side with the direct path in one
# run: two relay nodes in cluster mode on one local redis-server; fake binaries connect to
# node A (which then holds their server-ids); phones connect either to node A too ("direct")
# or all to node B ("forwarded": every phone is spliced B -> A behind the link header).
# Alternates the two per run and prints medians and their ratio.
#
#   benches/cluster.sh                    3 runs of closed-64 and closed-16k
#   benches/cluster.sh --runs 5 --duration 20s
#   benches/cluster.sh --smoke            a few seconds each; checks no loss, not speed
#
# A fresh redis-server and fresh nodes for every measurement, on free ports parsed from their
# `listening addr=` lines; everything is killed on exit.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/cluster.sh [options]
  --runs N            measurements per scenario and path (default 3)
  --duration D        measurement window (default 10s)
  --warmup D          warmup before it (default 2s)
  --scenarios LIST    comma-separated subset of: closed-64,closed-16k
  --smoke             one short run of each; fails on any loss or error
  --no-build          use the binaries already in target/release
  -h, --help          this text
EOF
}

runs=3
duration=10s
warmup=2s
scenarios="closed-64,closed-16k"
smoke=0
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --duration) duration=${2:?--duration needs a value}; shift 2 ;;
    --warmup) warmup=${2:?--warmup needs a value}; shift 2 ;;
    --scenarios) scenarios=${2:?--scenarios needs a value}; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cluster.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$runs" in ''|*[!0-9]*|0) echo "cluster.sh: --runs must be a positive integer" >&2; exit 2 ;; esac
if [ "$smoke" = 1 ]; then
  runs=1
  duration=2s
  warmup=500ms
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/relay-cluster-bench.XXXXXX")
children=()

cleanup() {
  local pid
  for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
die() { echo "cluster.sh: $*" >&2; exit 1; }

command -v redis-server >/dev/null || die "redis-server is not installed (Debian: apt-get install redis-server)"
if [ "$build" = 1 ]; then
  echo "cluster.sh: building (release)..." >&2
  bash "$root/deploy/build.sh" >&2 || die "deploy/build.sh failed"
  (cd "$root" && cargo build --release -p relay-testkit --bins) || die "cargo build failed"
fi
for b in relay-server relay-load; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build with deploy/build.sh and cargo build --release -p relay-testkit"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

secret="$tmp/secret"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
chmod 600 "$secret"

# A port nothing listens on now (redis-server has no port 0 to report back).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# healthz HOST:PORT: the body of GET /healthz (plain bash, no curl needed).
healthz() {
  local host=${1%:*} port=${1##*:}
  (exec 3<>"/dev/tcp/$host/$port" &&
    printf 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 &&
    timeout 2 cat <&3) 2>/dev/null
}

redis_pid=
redis_port=
start_redis() {
  local attempt i
  for attempt in 1 2 3 4 5; do
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$tmp" --maxmemory-policy noeviction >"$tmp/redis.log" 2>&1 &
    redis_pid=$!
    children+=("$redis_pid")
    for i in $(seq 200); do
      kill -0 "$redis_pid" 2>/dev/null || break # lost the port to someone else: retry
      (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && return 0
      sleep 0.05
    done
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  done
  tail -n 5 "$tmp/redis.log" >&2
  die "redis-server did not start"
}

# start_node NAME: sets node_pid and node_addr (the client listener).
node_pid=
node_addr=
start_node() {
  local name=$1 log="$tmp/$1.$RANDOM.log" i
  : >"$log"
  "$bin/relay-server" --insecure-listen 127.0.0.1:0 \
    --cluster-redis "redis://127.0.0.1:$redis_port/" --cluster-listen 127.0.0.1:0 \
    --cluster-secret-file "$secret" --node-id "$name" \
    --metrics-listen "" --shutdown-timeout 2s --max-connections 1000000 \
    --phones-per-server 100000 --max-connections-per-ip 1000000 \
    --rate-limit-per-minute 1000000 --rate-limit-burst 1000000 2>"$log" &
  node_pid=$!
  children+=("$node_pid")
  for i in $(seq 100); do
    node_addr=$(sed -n 's/.*listening addr=\([^, ]*:[0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
    # Joined: /healthz says so (claims before the first join are refused 503).
    if [ -n "$node_addr" ] && healthz "$node_addr" | grep -q '"cluster":"ok"'; then
      return 0
    fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  die "node $name did not start and join"
}

json_num() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" "$1" | head -n 1; }
median() {
  if [ $# -eq 0 ]; then echo n/a; return; fi
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f\n", m }'
}

scenario_args() {
  local t=(--duration "$duration" --warmup "$warmup") n=100 b=10
  [ "$smoke" = 1 ] && n=10 && b=2
  case "$1" in
    closed-64) echo "echo --binaries $b --phones $n --size 64 --window 8 ${t[*]}" ;;
    closed-16k) echo "echo --binaries $b --phones $n --size 16384 --window 8 ${t[*]}" ;;
  esac
}

failures=0
declare -A values
metrics="round_trips_per_sec p50 p99 p999"

measure() {
  local s=$1 path=$2 run=$3 out="$tmp/$1.$2.$3.json" err="$tmp/$1.$2.$3.err" rc=0 a_addr b_addr a_pid b_pid r_pid
  start_redis; r_pid=$redis_pid
  start_node node-a; a_addr=$node_addr; a_pid=$node_pid
  start_node node-b; b_addr=$node_addr; b_pid=$node_pid
  local phones=()
  [ "$path" = forwarded ] && phones=(--phone-addr "$b_addr")
  # shellcheck disable=SC2207
  local args=($(scenario_args "$s"))
  "$bin/relay-load" --addr "$a_addr" "${phones[@]}" --quiet --json "${args[@]}" >"$out" 2>"$err" || rc=$?
  kill -TERM "$a_pid" "$b_pid" "$r_pid" 2>/dev/null || true
  wait "$a_pid" "$b_pid" "$r_pid" 2>/dev/null || true
  local m v line="run $run/$runs  $s  $path:"
  for m in $metrics; do
    v=$(json_num "$out" "$m")
    [ -n "$v" ] && values["$s|$path|$m"]+="$v "
    line+="  $m=${v:-?}"
  done
  if [ "$rc" = 0 ]; then
    echo "$line  ok" >&2
  else
    failures=$((failures + 1))
    echo "$line  FAILED (relay-load exit $rc)" >&2
    sed 's/^/    /' "$err" >&2
    grep -o '"errors":\[[^]]*\]' "$out" 2>/dev/null | sed 's/^/    /' >&2 || true
  fi
}

IFS=, read -r -a chosen <<<"$scenarios"
for s in "${chosen[@]}"; do [ -n "$(scenario_args "$s")" ] || die "unknown scenario: $s"; done
for ((run = 1; run <= runs; run++)); do
  for s in "${chosen[@]}"; do
    if ((run % 2)); then
      measure "$s" direct "$run"; measure "$s" forwarded "$run"
    else
      measure "$s" forwarded "$run"; measure "$s" direct "$run"
    fi
  done
done

if [ "$smoke" = 1 ]; then
  [ "$failures" = 0 ] || die "--smoke: $failures run(s) failed"
  echo "cluster.sh --smoke: direct and forwarded paths ran with no loss or error"
  exit 0
fi
echo
echo "Medians of $runs run(s); ratio = forwarded / direct (throughput: < 1 means forwarding"
echo "costs; latency: > 1 means it adds)."
printf '%-12s %-16s %14s %14s %8s\n' scenario metric forwarded direct ratio
for s in "${chosen[@]}"; do
  for m in $metrics; do
    # shellcheck disable=SC2086
    f=$(median ${values["$s|forwarded|$m"]:-})
    # shellcheck disable=SC2086
    d=$(median ${values["$s|direct|$m"]:-})
    ratio=$(awk -v f="$f" -v d="$d" 'BEGIN { if (f == "n/a" || d == "n/a" || d == 0) print "n/a"; else printf "%.2f", f / d }')
    label=$m
    case "$m" in round_trips_per_sec) label="round trips/s" ;; p999) label="p99.9 µs" ;; *) label="$m µs" ;; esac
    printf '%-12s %-16s %14s %14s %8s\n' "$s" "$label" "$f" "$d" "$ratio"
  done
done
[ "$failures" = 0 ] || die "$failures run(s) failed (loss, reordering or errors); see above"
