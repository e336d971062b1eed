#!/usr/bin/env bash
# What OpenTelemetry export costs: hello and counter on two servers started alike, one without
# an OTLP endpoint (off) and one exporting every request's spans, ledge's log lines and its
# metrics to a receiver that reads and discards them (host/examples/otlp-sink.rs), with every
# trace sampled and the per-second cap out of the way. Rounds interleave the two servers;
# medians and ratios are reported, with each server's CPU per request and the spans dropped
# (which must stay 0 for the figure to mean anything). Run by scripts/bench.sh, or alone after
# `cargo build --release --bin ledge --example otlp-sink` and `(cd functions && cargo build --release)`.
#
#   scripts/bench-otel.sh [DURATION_SECONDS] [ROUNDS]     (default 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
duration="${1:-5}"
rounds="${2:-3}"
ledge=./target/release/ledge
work=$(mktemp -d)
pids=()
# Each server is waited for: one still writing its data dir would make the removal fail.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[limits]\nmax_concurrency = 256\n' >"$work/policies/default.toml"
./target/release/examples/otlp-sink 127.0.0.1:18096 >/dev/null &
pids+=($!)
sink=$!
declare -A port=([off]=18094 [on]=18095) pid=()
for mode in off on; do
  extra=()
  if [ "$mode" = on ]; then
    extra=(--otlp-endpoint http://127.0.0.1:18096 --otlp-max-traces-per-second 100000000)
  fi
  OTEL_TRACES_SAMPLER=always_on OTEL_METRIC_EXPORT_INTERVAL=5000 "$ledge" serve --listen "127.0.0.1:${port[$mode]}" \
    --data-dir "$work/data-$mode" --policies "$work/policies" "${extra[@]}" >"$work/serve-$mode.out" 2>"$work/serve-$mode.log" &
  pid[$mode]=$!
  pids+=($!)
done
for mode in off on; do
  for _ in $(seq 300); do
    [ -f "$work/data-$mode/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:${port[$mode]}/healthz" 2>/dev/null && break
    sleep 0.1
  done
  for fn in hello counter; do
    LEDGE_SERVER="http://127.0.0.1:${port[$mode]}" LEDGE_TOKEN=$(cat "$work/data-$mode/admin.token") \
      "$ledge" deploy "$fn" "functions/target/wasm32-wasip2/release/$fn.wasm" >/dev/null
  done
done

for round in $(seq "$rounds"); do
  for fn in hello counter; do
    for mode in off on; do
      sink_before=$(cpu_ticks "$sink")
      wrk_round "http://127.0.0.1:${port[$mode]}/fn/$fn/" "$duration" "${pid[$mode]}" "$work/$fn-$mode"
      per_request "$sink_before" "$(cpu_ticks "$sink")" "$(tail -1 "$work/$fn-$mode.rps")" "$duration" >>"$work/$fn-$mode.sink"
    done
  done
  echo "round $round of $rounds done" >&2
done

dropped=$(curl -fsS -H "authorization: Bearer $(cat "$work/data-on/admin.token")" http://127.0.0.1:18095/metrics |
  awk '$1 == "ledge_otel_dropped_total" {print $2}')
echo "OpenTelemetry export: wrk -t1 -c32 -d${duration}s, median of $rounds interleaved rounds (requests/s, server CPU µs per request; ratio to off)"
printf '  %-8s %18s %18s %8s %12s\n' "" off on ratio "sink µs/req"
for fn in hello counter; do
  off=$(median "$work/$fn-off.rps"); on=$(median "$work/$fn-on.rps")
  printf '  %-8s %12s %5sµs %12s %5sµs %8s %12s\n' "$fn" \
    "$off" "$(median "$work/$fn-off.cpu")" "$on" "$(median "$work/$fn-on.cpu")" \
    "$(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.2f", a/b}')" "$(median "$work/$fn-on.sink")"
done
echo "  spans and log records dropped during the run (ledge_otel_dropped_total): $dropped"
