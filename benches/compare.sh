#!/usr/bin/env bash
# Relay vs one direct hop: runs the same relay-load scenarios against the relay and against the
# echo server (same stack, no relay logic), alternately, and prints medians and their ratio.
#
#   benches/compare.sh                  full comparison (3 runs of every scenario)
#   benches/compare.sh --smoke          a few seconds per scenario; checks no loss, not speed (CI)
#   benches/compare.sh --tls            the same over TLS: relay --dev-tls vs echo-server's TLS
#
# Every server is started fresh for each measurement (so RSS and allocator state never carry
# over) on a free port parsed from its `listening addr=` line, and killed on exit.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/compare.sh [options]
  --runs N            measurements per scenario and target (default 3)
  --duration D        measurement window of echo scenarios (default 10s)
  --warmup D          warmup before it (default 2s)
  --idle-hold D       how long idle connections are held before measuring (default 5s)
  --scenarios LIST    comma-separated subset of: closed-64,closed-16k,open-2000,idle
  --smoke             small, short runs of every scenario; fails on any loss or error
  --tls               both servers speak TLS (relay --dev-tls, echo-server --tls-cert-out);
                      RELAY_BENCH_TLS_SPLIT=tokio in the environment makes the relay split
                      TLS connections with tokio::io::split instead of its own split
  --metrics           the relay serves /metrics (--metrics-listen 127.0.0.1:0) and it is
                      scraped once a second while the load runs, as Prometheus would
  --no-build          use the binaries already in target/release
  -h, --help          this text
Extra relay flags can be given in RELAY_ARGS (word-split), e.g. RELAY_ARGS="--write-timeout 20s".
EOF
}

runs=3
duration=10s
warmup=2s
idle_hold=5s
scenarios="closed-64,closed-16k,open-2000,idle"
smoke=0
build=1
tls=0
metrics=0

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --duration) duration=${2:?--duration needs a value}; shift 2 ;;
    --warmup) warmup=${2:?--warmup needs a value}; shift 2 ;;
    --idle-hold) idle_hold=${2:?--idle-hold needs a value}; shift 2 ;;
    --scenarios) scenarios=${2:?--scenarios needs a value}; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --tls) tls=1; shift ;;
    --metrics) metrics=1; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$runs" in ''|*[!0-9]*|0) echo "compare.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/relay-compare.XXXXXX")
children=()

cleanup() {
  local pid
  for pid in "${children[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${children[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "compare.sh: $*" >&2
  exit 1
}

# Every connection is a descriptor in relay-load and in the server: the idle scenario holds about
# 10,100 in each process. Aim for 65536 (root with CAP_SYS_RESOURCE may pass the hard limit),
# else take the hard limit; below 12000 the idle scenario cannot run and is skipped, saying why.
want_fds=65536
need_fds=12000
if ! ulimit -n "$want_fds" 2>/dev/null; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
fds=$(ulimit -n)
idle_ok=1
if [ "$fds" != unlimited ] && [ "$fds" -lt "$want_fds" ]; then
  echo "compare.sh: note: open-file limit is $fds (hard limit $(ulimit -Hn)); wanted $want_fds" >&2
  if [ "$fds" -lt "$need_fds" ] && [ "$smoke" = 0 ]; then
    idle_ok=0
    echo "compare.sh: skipping the idle scenario: it needs at least $need_fds open files per" \
         "process. Raise the hard limit (limits.conf, systemd LimitNOFILE, or run as root)." >&2
  fi
fi

if [ "$build" = 1 ]; then
  echo "compare.sh: building (release)..." >&2
  # The relay exactly as it ships (deploy/build.sh, which CI also runs: built once), the load
  # tools beside it in their own build so their features do not change the relay's.
  bash "$root/deploy/build.sh" >&2 || die "deploy/build.sh failed"
  (cd "$root" && cargo build --release -p relay-testkit --bins) || die "cargo build failed"
fi
for b in relay-server echo-server relay-load; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build with deploy/build.sh and cargo build --release -p relay-testkit"
done

# Relay flags that lift the admission limits (§8) out of the load's way. A flag this build refuses
# ("not implemented yet", or an invalid value) is dropped with a note, and the start retried.
relay_opt=(
  --shutdown-timeout 2s
  --max-connections 1000000
  --phones-per-server 100000
  --max-connections-per-ip 1000000
  --rate-limit-per-minute 1000000
  --rate-limit-burst 1000000
)
if [ "$metrics" = 1 ]; then
  relay_opt+=(--metrics-listen 127.0.0.1:0)
else
  relay_opt+=(--metrics-listen "")
fi
# shellcheck disable=SC2206 # word splitting is the point
relay_extra=(${RELAY_ARGS:-})

server_pid=
server_addr=
server_log=
server_ca=

# start_server relay|echo: starts a fresh server, sets server_pid, server_addr and server_log.
start_server() {
  local kind=$1 attempt
  for attempt in 1 2 3 4 5 6 7 8; do
    server_log="$tmp/$kind.$RANDOM.log"
    : >"$server_log" # exists before the background child gets to its redirection
    server_ca="$tmp/$kind.$RANDOM.pem"
    if [ "$kind" = relay ] && [ "$tls" = 1 ]; then
      "$bin/relay-server" --dev-tls --https-listen 127.0.0.1:0 --dev-tls-cert-out "$server_ca" \
        "${relay_opt[@]}" "${relay_extra[@]}" 2>"$server_log" &
    elif [ "$kind" = relay ]; then
      "$bin/relay-server" --insecure-listen 127.0.0.1:0 "${relay_opt[@]}" "${relay_extra[@]}" \
        2>"$server_log" &
    elif [ "$tls" = 1 ]; then
      "$bin/echo-server" --listen 127.0.0.1:0 --tls-cert-out "$server_ca" 2>"$server_log" &
    else
      "$bin/echo-server" --listen 127.0.0.1:0 2>"$server_log" &
    fi
    server_pid=$!
    children+=("$server_pid")
    local waited=0
    while [ "$waited" -lt 100 ]; do
      # Only a complete address (numeric port) counts: the log may be caught mid-write.
      server_addr=$(sed -n 's/.*listening addr=\([^ ]*:[0-9][0-9]*\).*/\1/p' "$server_log" | head -n 1)
      [ -n "$server_addr" ] && return 0
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    if [ "$kind" = relay ] && drop_refused_flag "$server_log"; then
      continue
    fi
    echo "--- $kind server log ---" >&2
    tail -n 20 "$server_log" >&2
    die "$kind server did not start (no 'listening addr=' line within 10 s)"
  done
  die "relay did not start after dropping refused flags"
}

# drop_refused_flag LOG: removes from relay_opt the flag the relay's boot error names.
drop_refused_flag() {
  local log=$1 i
  for ((i = 0; i < ${#relay_opt[@]}; i += 2)); do
    if grep -q -- "${relay_opt[i]}:" "$log"; then
      echo "compare.sh: note: relay refused ${relay_opt[i]} ($(grep -o -- "${relay_opt[i]}:.*" "$log" | head -n 1 | cut -c1-120)); running without it" >&2
      relay_opt=("${relay_opt[@]:0:i}" "${relay_opt[@]:i+2}")
      return 0
    fi
  done
  return 1
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# json_num FILE KEY: a number field of relay-load's one-line JSON report (keys are unique).
json_num() {
  sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" "$1" | head -n 1
}

median() {
  if [ $# -eq 0 ]; then
    echo n/a
    return
  fi
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%.1f\n", m }'
}

# Scenario definitions: relay-load arguments and the report fields worth comparing.
scenario_args() {
  local s=$1
  local echo_time=(--duration "$duration" --warmup "$warmup")
  if [ "$smoke" = 1 ]; then
    case "$s" in
      closed-64) echo "echo --binaries 2 --phones 10 --size 64 --window 8 ${echo_time[*]}" ;;
      closed-16k) echo "echo --binaries 2 --phones 10 --size 16384 --window 8 ${echo_time[*]}" ;;
      open-2000) echo "echo --binaries 4 --phones 40 --size 64 --rate 400 ${echo_time[*]}" ;;
      idle) echo "idle --binaries 4 --phones 200 --duration 1s" ;;
    esac
  else
    case "$s" in
      closed-64) echo "echo --binaries 10 --phones 100 --size 64 --window 8 ${echo_time[*]}" ;;
      closed-16k) echo "echo --binaries 10 --phones 100 --size 16384 --window 8 ${echo_time[*]}" ;;
      open-2000) echo "echo --binaries 100 --phones 1000 --size 64 --rate 2000 ${echo_time[*]}" ;;
      idle) echo "idle --binaries 100 --phones 10000 --duration $idle_hold" ;;
    esac
  fi
}

scenario_metrics() {
  case "$1" in
    closed-*) echo "round_trips_per_sec p50 p99 p999" ;;
    open-*) echo "p50 p99 p999 max" ;;
    idle) echo "bytes_per_connection" ;;
  esac
}

metric_label() {
  case "$1" in
    round_trips_per_sec) echo "round trips/s" ;;
    bytes_per_connection) echo "RSS B/conn" ;;
    p999) echo "p99.9 µs" ;;
    *) echo "$1 µs" ;;
  esac
}

if [ "$smoke" = 1 ]; then
  runs=1
  duration=2s
  warmup=500ms
fi

failures=0
declare -A values

# measure SCENARIO TARGET RUN: one fresh server, one relay-load run, values recorded.
measure() {
  local s=$1 target=$2 run=$3 out err rc args direct=()
  start_server "$([ "$target" = relay ] && echo relay || echo echo)"
  out="$tmp/$s.$target.$run.json"
  err="$tmp/$s.$target.$run.err"
  # shellcheck disable=SC2207 # scenario args are plain words
  args=($(scenario_args "$s"))
  [ "$target" = direct ] && direct=(--direct)
  [ "$tls" = 1 ] && direct+=(--tls-ca "$server_ca")
  [ "$s" = idle ] && args+=(--relay-pid "$server_pid")
  local scraper=
  if [ "$target" = relay ] && [ "$metrics" = 1 ]; then
    local maddr
    maddr=$(sed -n 's/.*metrics_addr=\([^ ]*:[0-9][0-9]*\).*/\1/p' "$server_log" | head -n 1)
    [ -n "$maddr" ] || die "--metrics: the relay logged no metrics_addr= (is --metrics-listen built?)"
    # A Prometheus-like scraper: one GET /metrics a second, body discarded.
    (while curl -fsS -o /dev/null "http://$maddr/metrics" 2>/dev/null; do sleep 1; done) &
    scraper=$!
  fi
  rc=0
  "$bin/relay-load" --addr "$server_addr" "${direct[@]}" --quiet --json "${args[@]}" >"$out" 2>"$err" || rc=$?
  if [ -n "$scraper" ]; then
    kill "$scraper" 2>/dev/null || true
    wait "$scraper" 2>/dev/null || true
  fi
  stop_server
  local m line="run $run/$runs  $s  $target:"
  for m in $(scenario_metrics "$s"); do
    local v
    v=$(json_num "$out" "$m")
    [ -n "$v" ] && values["$s|$target|$m"]+="$v "
    line+="  $m=${v:-?}"
  done
  if [ "$rc" = 0 ]; then
    echo "$line  ok" >&2
  else
    failures=$((failures + 1))
    echo "$line  FAILED (relay-load exit $rc)" >&2
    sed 's/^/    /' "$err" >&2
    grep -o '"errors":\[[^]]*\]' "$out" 2>/dev/null | sed 's/^/    /' >&2 || true
    echo "    --- server log tail ---" >&2
    tail -n 5 "$server_log" | sed 's/^/    /' >&2
  fi
}

IFS=, read -r -a chosen <<<"$scenarios"
for s in "${chosen[@]}"; do
  [ -n "$(scenario_args "$s")" ] || die "unknown scenario: $s"
done

for ((run = 1; run <= runs; run++)); do
  for s in "${chosen[@]}"; do
    if [ "$s" = idle ] && [ "$idle_ok" = 0 ]; then
      continue
    fi
    # Alternate which target goes first so slow drift on the machine hits both alike.
    if ((run % 2)); then
      measure "$s" relay "$run"
      measure "$s" direct "$run"
    else
      measure "$s" direct "$run"
      measure "$s" relay "$run"
    fi
  done
done

if [ "$smoke" = 1 ]; then
  if [ "$failures" = 0 ]; then
    echo "compare.sh --smoke: every scenario ran against relay and echo server with no loss or error"
    exit 0
  fi
  die "--smoke: $failures run(s) failed"
fi

echo
echo "Medians of $runs run(s); ratio = relay / direct (throughput: < 1 means the relay is slower;"
echo "latency and memory: > 1 means the relay costs more)."
printf '%-12s %-16s %14s %14s %8s\n' scenario metric relay direct ratio
for s in "${chosen[@]}"; do
  for m in $(scenario_metrics "$s"); do
    # shellcheck disable=SC2086 # the values are a space-separated list
    r=$(median ${values["$s|relay|$m"]:-})
    # shellcheck disable=SC2086
    d=$(median ${values["$s|direct|$m"]:-})
    ratio=$(awk -v r="$r" -v d="$d" 'BEGIN { if (r == "n/a" || d == "n/a" || d == 0) print "n/a"; else printf "%.2f", r / d }')
    printf '%-12s %-16s %14s %14s %8s\n' "$s" "$(metric_label "$m")" "$r" "$d" "$ratio"
  done
done
[ "$failures" = 0 ] || die "$failures run(s) failed (loss, reordering or errors); see above"
