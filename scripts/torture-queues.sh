#!/usr/bin/env bash
# Queue crash torture: SIGKILLs `ledge serve` KILLS times (default 300) while senders send queue
# messages inside transactions (committing or rolling back) and a consumer acknowledges them;
# then checks that every message whose transaction was acknowledged was delivered at least
# once, that none whose transaction rolled back was, and prints the duplicate count.
#
#   scripts/torture-queues.sh [KILLS]   about 1 s per kill; exit 0 clean, 1 violation, 2 could not run
#
# Builds the release binary and the test guests first; LEDGE_BIN=/path/to/ledge skips both builds
# (tests/guests/target/.../queue_worker.wasm must exist). Extra options go to
# scripts/torture_queues.py through TORTURE_ARGS (e.g. TORTURE_ARGS="--seed 42 --senders 8").
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-300}"

if [ -z "${LEDGE_BIN:-}" ]; then
  cargo build --release --bin ledge
  (cd tests/guests && cargo build --release -p queue-worker)
  LEDGE_BIN=target/release/ledge
fi
wasm=tests/guests/target/wasm32-wasip2/release/queue_worker.wasm
for f in "$LEDGE_BIN" "$wasm"; do
  [ -f "$f" ] || { echo "torture-queues: $f is missing (run without LEDGE_BIN to build it)" >&2; exit 2; }
done
# shellcheck disable=SC2086
exec python3 scripts/torture_queues.py --ledge "$LEDGE_BIN" --wasm "$wasm" --kills "$kills" ${TORTURE_ARGS:-}
