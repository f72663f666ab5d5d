#!/usr/bin/env bash
# What one Redis handles for the cluster directory (protocol.md §11, docs/scaling.md): the
# directory's own Lua scripts (relay-server/src/cluster/scripts/*.lua, exactly as the relay
# loads them) driven by redis-benchmark against a fresh local redis-server, next to a plain
# GET in the same run as the baseline of what that Redis does at all.
#
#   benches/redis-directory.sh            200,000 calls per operation, 50 clients
#   benches/redis-directory.sh -n 50000   fewer
#
# Operations: claim (a binary upgrading on a node that does not hold its server-id: the
# script takes new entries, then answers "ours"), locate (a phone on a node that does not
# hold its server-id), refresh (a node's lease, every lease/3), release (a grace expiry),
# each over 1,000,000 random server-ids.
set -euo pipefail

n=200000
clients=50
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=${2:?-n needs a value}; shift 2 ;;
    -c) clients=${2:?-c needs a value}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "redis-directory.sh: unknown option: $1" >&2; exit 2 ;;
  esac
done
for p in redis-server redis-cli redis-benchmark; do
  command -v "$p" >/dev/null || { echo "redis-directory.sh: $p is not installed (Debian: redis-server, redis-tools)" >&2; exit 1; }
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scripts="$root/relay-server/src/cluster/scripts"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/relay-redis-bench.XXXXXX")
port=$((20000 + RANDOM % 40000))
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
  --maxmemory-policy noeviction >"$tmp/redis.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for i in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.05; done

P=pyrycode-relay:
load() { cli SCRIPT LOAD "$(cat "$scripts/$1.lua")"; }
join=$(load join); claim=$(load claim); locate=$(load locate)
refresh=$(load refresh); release=$(load release)
# Two live nodes: a (claims and releases) and b (locates what a holds).
epoch_a=$(cli EVALSHA "$join" 0 "$P" node-a 10.0.0.1:7000 600000 0)
cli EVALSHA "$join" 0 "$P" node-b 10.0.0.2:7000 600000 0 >/dev/null

bench() {
  local name=$1
  shift
  local rps
  rps=$(redis-benchmark -p "$port" -q -n "$n" -c "$clients" -r 1000000 "$@" 2>/dev/null |
    tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -n 1)
  printf '%-10s %12s ops/s\n' "$name" "${rps:-?}"
}

echo "redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $n calls per operation, $clients clients, $(nproc) cores shared with the benchmark"
bench GET GET "${P}sid:__rand_int__"
bench claim EVALSHA "$claim" 0 "$P" "sid-__rand_int__" node-a "$epoch_a"
bench locate EVALSHA "$locate" 0 "$P" "sid-__rand_int__" node-b
bench refresh EVALSHA "$refresh" 0 "$P" node-a "$epoch_a" 600000
bench release EVALSHA "$release" 0 "$P" "sid-__rand_int__" node-a "$epoch_a"
echo "entries left: $(cli DBSIZE) keys, used memory $(cli INFO memory | sed -n 's/^used_memory_human:\(.*\)\r*$/\1/p' | tr -d '\r')"
