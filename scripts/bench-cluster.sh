#!/usr/bin/env bash
# Cluster figures: a 3-member etcd (Debian's etcd-server) and 3 ledge nodes on loopback.
# - propagation (9 samples each, p50 and max): deploy through node a -> served by a, b and c;
#   revocation through c -> refused on a, b and c;
# - the counter with its keyspace global (`[kv] scope = "global"`, every increment a
#   serializable etcd transaction) driven through all 3 nodes at once, against the same counter
#   node-local on one node, and node-local on all 3 (each node its own count); and against what
#   the same etcd sustains for the same compare-and-put increments from a plain client
#   (host/examples/etcd-cas.rs), in the same run.
# Run after `cargo build --release --bin ledge --example etcd-cas` and
# `(cd functions && cargo build --release)`, or with LEDGE_BIN=path and CAS_BIN=path.
#
#   scripts/bench-cluster.sh [DURATION_SECONDS] [CONNECTIONS_PER_NODE]   (default 5 s, 8)
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-5}"
connections="${2:-8}"
ledge="${LEDGE_BIN:-./target/release/ledge}"
cas="${CAS_BIN:-./target/release/examples/etcd-cas}"
wasm=functions/target/wasm32-wasip2/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

base=24790
cluster="e0=http://127.0.0.1:$((base + 10)),e1=http://127.0.0.1:$((base + 11)),e2=http://127.0.0.1:$((base + 12))"
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$work/e$i" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$work/e$i.log" 2>&1 &
  pids+=($!)
done
endpoints="http://127.0.0.1:$base,http://127.0.0.1:$((base + 1)),http://127.0.0.1:$((base + 2))"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$base/health" | grep -q '"health":"true"' && break; sleep 0.1; done

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[limits]\nmax_concurrency = 256\n' >"$work/policies/default.toml"
urls=()
for node in a b c; do
  "$ledge" serve --listen 127.0.0.1:0 --data-dir "$work/$node" --policies "$work/policies" \
    --cluster "$endpoints" --node-name "$node" >"$work/$node.out" 2>"$work/$node.log" &
  pids+=($!)
done
for node in a b c; do
  for _ in $(seq 300); do grep -q "ledge listening" "$work/$node.out" 2>/dev/null && break; sleep 0.1; done
  urls+=("$(grep -o 'http://[0-9.:]*' "$work/$node.out" | tail -1)")
done
token=$(cat "$work/a/admin.token")
export LEDGE_TOKEN=$token

now_ms() { date +%s%3N; }
# p50 and max of the numbers in a file, one per line.
p50_max() { sort -n "$1" | awk '{a[NR]=$1} END {printf "p50 %d ms, max %d ms (%d samples)", a[int((NR+1)/2)], a[NR], NR}'; }
samples=9
for i in $(seq "$samples"); do
  started=$(now_ms)
  LEDGE_SERVER=${urls[0]} "$ledge" deploy "hello$i" "$wasm/hello.wasm" >/dev/null
  for url in "${urls[@]}"; do
    until curl -fsS -o /dev/null "$url/fn/hello$i/" 2>/dev/null; do sleep 0.002; done
  done
  echo $(($(now_ms) - started)) >>"$work/deploys"
done
echo "deploy through a -> served by a, b and c: $(p50_max "$work/deploys")"
printf 'public = false\n' >"$work/private.toml"
LEDGE_SERVER=${urls[0]} "$ledge" deploy hello "$wasm/hello.wasm" --policy "$work/private.toml" >/dev/null
for i in $(seq "$samples"); do
  invoker=$("$ledge" token mint --data-dir "$work/b" --caveat "op in invoke")
  id=$("$ledge" token inspect "$invoker" | awk '/token id/ {print $3}')
  for url in "${urls[@]}"; do
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $invoker" "$url/fn/hello/")" = 200 ]; do sleep 0.01; done
  done
  started=$(now_ms)
  LEDGE_SERVER=${urls[2]} "$ledge" token revoke "$id" >/dev/null
  for url in "${urls[@]}"; do
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $invoker" "$url/fn/hello/")" = 401 ]; do sleep 0.002; done
  done
  echo $(($(now_ms) - started)) >>"$work/revocations"
done
echo "revocation through c -> refused on a, b and c: $(p50_max "$work/revocations")"

printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[kv]\nscope = "global"\n' >"$work/global.toml"
LEDGE_SERVER=${urls[0]} "$ledge" deploy gcounter "$wasm/counter.wasm" --policy "$work/global.toml" >/dev/null
LEDGE_SERVER=${urls[0]} "$ledge" deploy counter "$wasm/counter.wasm" >/dev/null
sleep 1
printf 'wrk.method = "POST"\n' >"$work/post.lua"
rate() { wrk -t1 -c"$connections" -d"${duration}s" -s "$work/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
parallel_rate() {
  local fn=$1 total=0 r
  for url in "${urls[@]}"; do rate "$url/fn/$fn/" >"$work/rate.$(basename "$url")" & done
  wait
  for url in "${urls[@]}"; do r=$(cat "$work/rate.$(basename "$url")"); total=$(echo "$total + $r" | bc); done
  echo "$total"
}
global=$(parallel_rate gcounter)
count=$(curl -fsS "${urls[1]}/fn/gcounter/peek")
local_one=$(rate "${urls[0]}/fn/counter/")
local_three=$(parallel_rate counter)
# The same etcd, the same compare-and-put increments from a plain client (etcd-client, as
# ledge uses it), as many at once as the 3 nodes' connections: the ceiling.
read -r plain conflicts <<<"$("$cas" "$endpoints" bench/plain-counter $((3 * connections)) "$duration")"
echo "global counter through 3 nodes: $global tx/s (final count $count, read on b)"
echo "the same etcd, plain client:    $plain tx/s ($conflicts conflicts retried)"
echo "global through ledge / plain client: $(echo "scale=2; $global / $plain" | bc)"
echo "node-local counter, one node:   $local_one tx/s"
echo "node-local counter, 3 nodes:    $local_three tx/s (three separate counts)"
echo "global / local (one node): $(echo "scale=2; $global / $local_one" | bc)"
