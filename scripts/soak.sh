#!/usr/bin/env bash
# Soak test: measures ledge's capacity (closed-loop hello with wrk), then runs mixed traffic at
# 80% of it for MINUTES (default 10): hello, a token-gated function, counter, bank transfers,
# the shortener, callers over their rate caveat (429), bad and refused tokens (401/403), guests
# that trap (500), loop into the timeout (504) and hit their memory limit (500), and a redeploy
# of hello every 30 s. Samples the server's RSS and descriptors every 10 s.
#
#   scripts/soak.sh [MINUTES]         MINUTES + about 1 minute (builds first unless LEDGE_BIN is set)
#
# Exit 1 on an unexpected 5xx, connection errors, RSS growth over 10% after the warm-up (the
# first 20% of the run) or a descriptor leak; 2 when it could not run. Prints the tables and
# writes them as JSON to target/soak-summary.json (SOAK_JSON overrides). Extra options for
# scripts/soak.py go in SOAK_ARGS (e.g. SOAK_ARGS="--fraction 0.5 --keep").
# LEDGE_BIN=/path/to/ledge skips the builds (the components must have been built).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ -z "${LEDGE_BIN:-}" ]; then
  cargo build --release --bin ledge
  (cd functions && cargo build --release)
  (cd tests/guests && cargo build --release)
  LEDGE_BIN=target/release/ledge
fi
functions=functions/target/wasm32-wasip2/release
guests=tests/guests/target/wasm32-wasip2/release
for f in "$LEDGE_BIN" $functions/{hello,counter,bank,shortener}.wasm $guests/misbehave.wasm; do
  [ -f "$f" ] || { echo "soak: $f is missing (run without LEDGE_BIN to build it)" >&2; exit 2; }
done
json="${SOAK_JSON:-target/soak-summary.json}"
mkdir -p "$(dirname "$json")"
echo "soak: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
# shellcheck disable=SC2086
exec python3 scripts/soak.py --ledge "$LEDGE_BIN" --functions "$functions" --guests "$guests" \
  --minutes "$minutes" --json "$json" ${SOAK_ARGS:-}
