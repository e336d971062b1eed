#!/usr/bin/env bash
# What WebSockets cost: 10,000 idle connections held (the node's resident memory and open
# descriptors, before and with them), messages/s echoed through a fresh instance each (the
# ws-echo test guest, 32 connections sending one message at a time) beside the same echo with no
# wasm (`ws-load serve-echo`: tokio-tungstenite alone), in interleaved rounds (medians and their
# ratio), and the latency of a room
# broadcast to 100 clients of the chat example (p50, p99, max of the time until every other
# client has the message). Run by scripts/bench.sh, or alone after `cargo build --release
# --bin ledge --example ws-load`, `(cd functions && cargo build --release)` and
# `(cd tests/guests && cargo build --release)`.
#
#   scripts/bench-websocket.sh [IDLE_CONNECTIONS] [ECHO_SECONDS] [ROUNDS]   (default 10000, 5, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
idle="${1:-10000}"
seconds="${2:-5}"
rounds="${3:-3}"
ledge=./target/release/ledge
load=./target/release/examples/ws-load
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Each idle connection is a descriptor in the server and one in the client (two processes).
ulimit -n $((idle + 1024))

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[limits]\nmax_concurrency = 256\n' >"$work/policies/default.toml"
ceiling=$((idle + 100))
printf '[[websocket]]\npath = "/"\nmax_connections = %d\nrate = "100000/s"\n' "$ceiling" >"$work/policies/echo.toml"
printf '[[websocket]]\npath = "/"\nrate = "100000/s"\n' >"$work/policies/chat.toml"
start_ledge 18091 "$work/policies" --max-connections $((idle + 1000)) --max-connections-per-ip $((idle + 1000))
"$ledge" deploy echo tests/guests/target/wasm32-wasip2/release/ws_echo.wasm >/dev/null
"$ledge" deploy chat functions/target/wasm32-wasip2/release/chat.wasm >/dev/null

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
descriptors() { find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
# Waits (at most a minute) until FILE has a line starting with WORD.
wait_for_line() {
  for _ in $(seq 600); do
    grep -q "^$2" "$1" 2>/dev/null && return
    sleep 0.1
  done
}
rss_before=$(rss_kib); fds_before=$(descriptors)
mkfifo "$work/hold"
"$load" idle ws://127.0.0.1:18091/fn/echo/ "$idle" <"$work/hold" >"$work/idle.out" &
loader=$!
exec 3>"$work/hold"
wait_for_line "$work/idle.out" open
sleep 1
rss_with=$(rss_kib); fds_with=$(descriptors)
exec 3>&-
wait "$loader"

echo "websockets: $idle idle connections held by one node"
printf '  resident memory %s MiB before, %s MiB with them (%s KiB per connection)\n' \
  $((rss_before / 1024)) $((rss_with / 1024)) "$(awk -v a="$rss_before" -v b="$rss_with" -v n="$idle" 'BEGIN {printf "%.1f", (b - a) / n}')"
printf '  open descriptors %s before, %s with them\n' "$fds_before" "$fds_with"
# The floor: the same echo without wasm, in a process of its own as ledge is.
mkfifo "$work/floor-hold"
"$load" serve-echo <"$work/floor-hold" >"$work/floor.out" &
floor=$!
exec 4>"$work/floor-hold"
wait_for_line "$work/floor.out" listening
floor_port=$(awk '/^listening/ {print $2}' "$work/floor.out")
rate_of() { awk '{print $(NF-1)}'; }
ledge_rates=(); floor_rates=()
for _ in $(seq "$rounds"); do
  ledge_rates+=("$("$load" echo ws://127.0.0.1:18091/fn/echo/ 32 "$seconds" | rate_of)")
  floor_rates+=("$("$load" echo "ws://127.0.0.1:$floor_port/" 32 "$seconds" | rate_of)")
done
exec 4>&-
wait "$floor"
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ledge_median=$(median "${ledge_rates[@]}"); floor_median=$(median "${floor_rates[@]}")
printf '  echo, 32 connections, %s rounds of %s s each, interleaved (medians):\n' "$rounds" "$seconds"
printf '    ledge, a fresh instance per message  %s messages/s  (rounds: %s)\n' "$ledge_median" "${ledge_rates[*]}"
printf '    no wasm (tokio-tungstenite alone)    %s messages/s  (rounds: %s)\n' "$floor_median" "${floor_rates[*]}"
printf '    ledge / no wasm                      %s\n' "$(awk -v a="$ledge_median" -v b="$floor_median" 'BEGIN {printf "%.3f", a / b}')"
printf '  chat room: '
"$load" broadcast "ws://127.0.0.1:18091/fn/chat/?room=bench" 101 200
