#!/usr/bin/env bash
# What WebSockets cost: 10,000 idle connections held (the node's resident memory and open
# descriptors, before and with them), messages/s echoed through a fresh instance each (the
# ws-echo test guest, 32 connections sending one message at a time), and the latency of a room
# broadcast to 100 clients of the chat example (p50, p99, max of the time until every other
# client has the message). Run by scripts/bench.sh, or alone after `cargo build --release
# --bin ledge --example ws-load`, `(cd functions && cargo build --release)` and
# `(cd tests/guests && cargo build --release)`.
#
#   scripts/bench-websocket.sh [IDLE_CONNECTIONS] [ECHO_SECONDS]     (default 10000, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
idle="${1:-10000}"
seconds="${2:-5}"
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
rss_before=$(rss_kib); fds_before=$(descriptors)
mkfifo "$work/hold"
"$load" idle ws://127.0.0.1:18091/fn/echo/ "$idle" <"$work/hold" >"$work/idle.out" &
loader=$!
exec 3>"$work/hold"
for _ in $(seq 600); do
  grep -q '^open' "$work/idle.out" 2>/dev/null && break
  sleep 0.1
done
sleep 1
rss_with=$(rss_kib); fds_with=$(descriptors)
exec 3>&-
wait "$loader"

echo "websockets: $idle idle connections held by one node"
printf '  resident memory %s MiB before, %s MiB with them (%s KiB per connection)\n' \
  $((rss_before / 1024)) $((rss_with / 1024)) "$(awk -v a="$rss_before" -v b="$rss_with" -v n="$idle" 'BEGIN {printf "%.1f", (b - a) / n}')"
printf '  open descriptors %s before, %s with them\n' "$fds_before" "$fds_with"
printf '  echo (a fresh instance per message, 32 connections, %s s): ' "$seconds"
"$load" echo ws://127.0.0.1:18091/fn/echo/ 32 "$seconds"
printf '  chat room: '
"$load" broadcast "ws://127.0.0.1:18091/fn/chat/?room=bench" 101 200
