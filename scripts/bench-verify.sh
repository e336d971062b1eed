#!/usr/bin/env bash
# What deploy verification costs: `ledge verify` of 50 corpus traces of the counter (Rust) and
# of a Python component, against the same build: first with the candidate's compile included (a
# verification compiles it: the deploy that follows reuses that work), then once more with the
# same bytes (compiled already: the traces alone). Each round's candidate is the component with
# a custom section naming the round appended, so its bytes, and its compile, are new. Each
# function first gets 50 distinct routes of traffic (query keys differ, so each request is a new
# route for the corpus sampler) with `[record] keep_sample = 50`. Medians of ROUNDS runs. Run by
# scripts/bench.sh, or alone after `cargo build --release --bin ledge`, `(cd functions && cargo
# build --release)` and scripts/setup.sh (componentize-py in target/pyenv).
#
#   scripts/bench-verify.sh [ROUNDS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
rounds="${1:-3}"
ledge=./target/release/ledge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd tests/guests/py-hello && ../../../target/pyenv/bin/componentize-py -d wit -w hello componentize app \
  -o "$work/py.wasm" >/dev/null)
mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[record]\nkeep_sample = 50\n' >"$work/policies/default.toml"
start_ledge 18089 "$work/policies"
counter=functions/target/wasm32-wasip2/release/counter.wasm
"$ledge" deploy counter "$counter" >/dev/null
"$ledge" deploy py "$work/py.wasm" >/dev/null

# 60 requests on distinct routes each, at most 10 a second (the sampler's cap for new routes).
for i in $(seq 60); do
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:18089/fn/counter/?k$i=1"
  curl -fsS -o /dev/null "http://127.0.0.1:18089/fn/py/p$i"
  sleep 0.12
done
corpus() { "$ledge" traces "$1" | awk '$8 == "corpus"' | wc -l; }
for _ in $(seq 50); do
  [ "$(corpus counter)" -ge 50 ] && [ "$(corpus py)" -ge 50 ] && break
  sleep 0.2
done

# Milliseconds `ledge verify` of FILE for FUNCTION takes; its report's first line in OUT.
timed_verify() {
  local started
  started=$(date +%s%N)
  "$ledge" verify "$1" "$2" --traces 50 >"$3"
  echo $(( ($(date +%s%N) - started) / 1000000 ))
}
for round in $(seq "$rounds"); do
  for fn in counter py; do
    file=$counter
    [ "$fn" = py ] && file=$work/py.wasm
    # A custom section (id 0, size 3, name length 2, "r" and the round's digit) makes new bytes.
    cp "$file" "$work/candidate.wasm"
    printf '\000\003\002r%d' "$((round % 10))" >>"$work/candidate.wasm"
    timed_verify "$fn" "$work/candidate.wasm" "$work/$fn.out" >>"$work/$fn.ms"
    timed_verify "$fn" "$work/candidate.wasm" "$work/$fn.again.out" >>"$work/$fn.again.ms"
  done
  echo "round $round of $rounds done" >&2
done

echo "verification: ledge verify NAME FILE --traces 50 (each trace run on the live build and on the candidate), median of $rounds"
printf '  %-8s %18s %18s\n' "" "compile included" "compiled already"
for fn in counter py; do
  printf '  %-8s %15s ms %15s ms   %s\n' "$fn" "$(median "$work/$fn.ms")" "$(median "$work/$fn.again.ms")" \
    "$(head -1 "$work/$fn.out")"
done
