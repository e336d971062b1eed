#!/usr/bin/env bash
# Queue throughput end to end: messages sent inside transactions (the test guest queue-worker's
# `/send`: one serializable transaction that writes a key and sends the message) and delivered to
# a consumer that acknowledges at once, against the counter's requests/s on the same server, in
# interleaved rounds. A queue round sends for DURATION seconds with wrk (-t1 -c32) and ends when
# the queue is drained; its rate is the messages sent divided by the time from the first send to
# the last acknowledgement. Medians of the rounds and the ratio (goal >= 0.5) are printed, with the
# server's CPU per message (send, delivery and acknowledgement together) and per counter request.
# Run by scripts/bench.sh, or alone after `cargo build --release --bin ledge`,
# `(cd functions && cargo build --release)` and `(cd tests/guests && cargo build --release -p queue-worker)`.
#
#   scripts/bench-queues.sh [DURATION_SECONDS] [ROUNDS]     (default 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
duration="${1:-5}"
rounds="${2:-3}"
ledge=./target/release/ledge
worker=tests/guests/target/wasm32-wasip2/release/queue_worker.wasm
work=$(mktemp -d)
pids=()
# Each server is waited for: one still writing its data dir would make the removal fail.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[limits]\nmax_concurrency = 256\n' >"$work/policies/default.toml"
# The queue may hold everything one round sends before the consumer catches up.
cat >"$work/policies/queue-worker.toml" <<'POLICY'
[queues]
send = ["jobs"]
[[consumer]]
queue = "jobs"
path = "/ack/bench"
concurrency = 32
max_depth = 100000
max_bytes = "256MiB"
POLICY
port=18097
"$ledge" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --policies "$work/policies" >"$work/serve.out" 2>"$work/serve.log" &
server=$!
pids+=($!)
for _ in $(seq 300); do
  [ -f "$work/data/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
  sleep 0.1
done
token=$(cat "$work/data/admin.token")
LEDGE_SERVER="http://127.0.0.1:$port" LEDGE_TOKEN=$token "$ledge" deploy counter functions/target/wasm32-wasip2/release/counter.wasm >/dev/null
LEDGE_SERVER="http://127.0.0.1:$port" LEDGE_TOKEN=$token "$ledge" deploy queue-worker "$worker" >/dev/null

printf 'wrk.method = "POST"\nwrk.body = "job"\n' >"$work/send.lua"
curl -fsS -X POST --data job "http://127.0.0.1:$port/fn/queue-worker/send?queue=jobs" >/dev/null ||
  { echo "bench-queues: a send failed:" >&2; curl -sS -X POST --data job "http://127.0.0.1:$port/fn/queue-worker/send?queue=jobs" >&2; exit 1; }

# waiting: messages of queue `jobs` not yet acknowledged.
waiting() {
  curl -fsS -H "authorization: Bearer $token" "http://127.0.0.1:$port/v1/queues" |
    python3 -c 'import json,sys; q=[q for q in json.load(sys.stdin)["queues"] if q["name"]=="jobs"]; print(q[0]["depth"]+q[0]["in_flight"] if q else 0)'
}

for round in $(seq "$rounds"); do
  wrk_round "http://127.0.0.1:$port/fn/counter/" "$duration" "$server" "$work/counter"
  before=$(cpu_ticks "$server")
  started=$(date +%s.%N)
  out=$(wrk -t1 -c32 -d"${duration}s" -s "$work/send.lua" \
    "http://127.0.0.1:$port/fn/queue-worker/send?queue=jobs")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  refused=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  sent=$((requests - ${refused:-0}))
  for _ in $(seq 1200); do [ "$(waiting)" = 0 ] && break; sleep 0.05; done
  [ "$(waiting)" = 0 ] || { echo "bench-queues: the queue did not drain" >&2; exit 1; }
  drained=$(date +%s.%N)
  after=$(cpu_ticks "$server")
  rate=$(awk -v n="$sent" -v a="$started" -v b="$drained" 'BEGIN {printf "%.0f", n / (b - a)}')
  echo "$rate" >>"$work/queue.rps"
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$sent" 'BEGIN {printf "%.1f\n", t / hz * 1e6 / n}' >>"$work/queue.cpu"
  echo "round $round of $rounds: counter $(tail -1 "$work/counter.rps") req/s, queue $rate msg/s ($sent sent, ${refused:-0} refused)" >&2
done

counter=$(median "$work/counter.rps")
queue=$(median "$work/queue.rps")
echo "Queues: wrk -t1 -c32 -d${duration}s, median of $rounds interleaved rounds"
printf '  %-44s %10s %8s\n' "" "per s" "µs CPU"
printf '  %-44s %10s %8s\n' "counter (requests)" "$counter" "$(median "$work/counter.cpu")"
printf '  %-44s %10s %8s\n' "queue: sent in a transaction, delivered, acked" "$queue" "$(median "$work/queue.cpu")"
echo "  ratio queue / counter: $(awk -v a="$queue" -v b="$counter" 'BEGIN {printf "%.2f", a/b}') (goal >= 0.5)"
