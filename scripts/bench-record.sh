#!/usr/bin/env bash
# What recording costs: hello and counter with recording off (`errors = false`, `sample = 0`,
# `keep_sample = 0`), with failures kept but no verification corpus (`keep_sample = 0`), with the
# default (`errors = true`: every run's inputs captured, kept only on failure; `keep_sample = 20`:
# a few successful runs a second kept as the corpus), and with every run recorded and kept
# (`sample = 1.0`), on one server, interleaved over ROUNDS rounds, medians reported. Then the
# size of one kept trace of each. Run by scripts/bench.sh, or alone
# after `cargo build --release --bin ledge` and `(cd functions && cargo build --release)`.
#
#   scripts/bench-record.sh [DURATION_SECONDS] [ROUNDS]     (default 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
duration="${1:-5}"
rounds="${2:-3}"
ledge=./target/release/ledge
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/policies"
printf 'public = true\n[rate]\nquota = 100000000\nwindow = "1s"\n[limits]\nmax_concurrency = 256\n' >"$work/policies/default.toml"
for fn in hello counter; do
  printf '[record]\nerrors = false\nsample = 0.0\nkeep_sample = 0\n' >"$work/policies/$fn-off.toml"
  printf '[record]\nkeep_sample = 0\n' >"$work/policies/$fn-nocorpus.toml"
  printf '[record]\nsample = 1.0\n' >"$work/policies/$fn-all.toml"
done
start_ledge 18088 "$work/policies"
for fn in hello counter; do
  for mode in off nocorpus default all; do
    "$ledge" deploy "$fn-$mode" "functions/target/wasm32-wasip2/release/$fn.wasm" >/dev/null
  done
done

for round in $(seq "$rounds"); do
  for fn in hello counter; do
    for mode in off nocorpus default all; do
      wrk_round "http://127.0.0.1:18088/fn/$fn-$mode/" "$duration" "$pid" "$work/$fn-$mode"
    done
  done
  echo "round $round of $rounds done" >&2
done

echo "recording: wrk -t1 -c32 -d${duration}s, median of $rounds interleaved rounds (requests/s and server CPU µs per request; ratio to off, and for the default to no corpus)"
printf '  %-8s %18s %18s %8s %18s %8s %8s %18s %8s\n' "" off "no corpus" ratio default ratio "/nocorp" all ratio
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
for fn in hello counter; do
  off=$(median "$work/$fn-off.rps"); nocorpus=$(median "$work/$fn-nocorpus.rps")
  def=$(median "$work/$fn-default.rps"); all=$(median "$work/$fn-all.rps")
  printf '  %-8s %12s %5sµs %12s %5sµs %8s %12s %5sµs %8s %8s %12s %5sµs %8s\n' "$fn" \
    "$off" "$(median "$work/$fn-off.cpu")" \
    "$nocorpus" "$(median "$work/$fn-nocorpus.cpu")" "$(ratio "$nocorpus" "$off")" \
    "$def" "$(median "$work/$fn-default.cpu")" "$(ratio "$def" "$off")" "$(ratio "$def" "$nocorpus")" \
    "$all" "$(median "$work/$fn-all.cpu")" "$(ratio "$all" "$off")"
done
for fn in hello counter; do
  "$ledge" traces "$fn-all" | awk -v fn="$fn" 'NR == 2 {print "  one kept " fn " trace: " $(NF-2) " bytes (compressed)"}'
done
kept=$("$ledge" traces | awk 'NR > 1' | wc -l)
echo "  traces listed after the run (newest 100 shown by default): $kept"
