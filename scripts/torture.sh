#!/usr/bin/env bash
# Crash-consistency torture: SIGKILLs `ledge serve` KILLS times (default 100) at random moments
# while 8 clients increment `counter` and move money between `bank` accounts, restarts it on the
# same data dir each time and checks that no acknowledged increment was lost (every count handed
# out is unique and <= the counter after the restart) and that the bank's total never changes.
#
#   scripts/torture.sh [KILLS]        about 1 s per kill; exit 0 clean, 1 violation, 2 could not run
#
# Builds the release binary and the example functions first; LEDGE_BIN=/path/to/ledge skips both
# builds (the components in functions/target must exist). Extra options go to scripts/torture.py
# through TORTURE_ARGS (e.g. TORTURE_ARGS="--seed 42 --json torture.json").
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-100}"

if [ -z "${LEDGE_BIN:-}" ]; then
  cargo build --release --bin ledge
  (cd functions && cargo build --release)
  LEDGE_BIN=target/release/ledge
fi
wasm_dir=functions/target/wasm32-wasip2/release
for f in "$LEDGE_BIN" "$wasm_dir/counter.wasm" "$wasm_dir/bank.wasm"; do
  [ -f "$f" ] || { echo "torture: $f is missing (run without LEDGE_BIN to build it)" >&2; exit 2; }
done
# shellcheck disable=SC2086
exec python3 scripts/torture.py --ledge "$LEDGE_BIN" --wasm-dir "$wasm_dir" --kills "$kills" ${TORTURE_ARGS:-}
