#!/usr/bin/env bash
# Where a hello request's CPU goes, in the floor with wasm (hyper and a fresh wasmtime instance
# per request and nothing else: host/examples/bare-wasmtime.rs) and in ledge with its defaults,
# under the same load (wrk -t1 -c32) one after the other: perf samples each server for
# SECONDS, and scripts/perf_groups.py groups the samples into kernel networking, scheduling,
# memory, wasmtime's instantiation, host calls and slot reset, the allocator, hyper, tokio, guest
# code and the rest, each given as a share and as µs of the server's CPU per request.
#
#   scripts/profile.sh [SECONDS] [TOP]   (defaults 5 s; TOP: also list that many ungrouped symbols)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-5}"
top="${2:-0}"

./scripts/setup.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
cargo build --release --quiet --bin ledge --example bare-wasmtime
(cd functions && cargo build --release --quiet)
hello=functions/target/wasm32-wasip2/release/hello.wasm

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 1000000000\nwindow = "1s"\n' >"$work/policies/default.toml"
./target/release/examples/bare-wasmtime 127.0.0.1:18093 "$hello" >/dev/null &
pids+=($!)
floor=$!
./target/release/ledge serve --listen 127.0.0.1:18080 --data-dir "$work/ledge" --policies "$work/policies" >/dev/null 2>"$work/ledge.log" &
pids+=($!)
ledge=$!
wait_http http://127.0.0.1:18080/healthz
curl -fsS -X PUT -H "authorization: Bearer $(cat "$work/ledge/admin.token")" --data-binary @"$hello" http://127.0.0.1:18080/v1/functions/hello >/dev/null
wait_http http://127.0.0.1:18093/

ticks=$(getconf CLK_TCK)
profile() { # label pid url
  local load cpu0 cpu1 rps cpu_us
  wrk -t1 -c32 -d1s "$3" >/dev/null # warm up
  wrk -t1 -c32 -d"$((duration + 2))s" "$3" >"$work/wrk.out" &
  load=$!
  sleep 1
  cpu0=$(awk '{print $14 + $15}' "/proc/$2/stat")
  perf record -q -F 4000 -p "$2" -o "$work/$1.data" -- sleep "$duration" 2>/dev/null
  cpu1=$(awk '{print $14 + $15}' "/proc/$2/stat")
  wait "$load"
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
  cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v r="$rps" -v d="$duration" -v t="$ticks" 'BEGIN {printf "%.1f", (b - a) / t * 1e6 / (r * d)}')
  echo "$1: $rps requests/s, $cpu_us µs of server CPU per request (perf -F 4000 for ${duration}s)"
  python3 scripts/perf_groups.py "$work/$1.data" "$top" | awk -v c="$cpu_us" '
    /%  / && !/^ {11}/ {share = $1; sub(/%/, "", share); printf "  %5.1f µs %s\n", share * c / 100, $0; next} {print}'
  echo
}
profile "floor (bare wasmtime)" "$floor" http://127.0.0.1:18093/
profile "ledge hello" "$ledge" http://127.0.0.1:18080/fn/hello/
