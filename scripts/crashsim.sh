#!/usr/bin/env bash
# Simulated power failures for ledge-kv: random workloads on a simulated disk (page cache,
# torn and reordered writes, un-synced directory entries), crashed at random operations and
# recovered, checking that no acknowledged commit is lost, no transaction is partly visible
# and recovery never reports false corruption (host/kv/src/sim).
#
#   scripts/crashsim.sh [SEEDS]      default 1000 seeds = 12,000 crash points (4 workloads x 3)
#   LEDGE_KV_SIM_SEED=N scripts/crashsim.sh   re-runs one seed (single-thread workloads replay exactly)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-1000}"
export LEDGE_KV_SIM_SEEDS="$seeds"
start=$(date +%s)
cargo test --release -p ledge-kv --lib sim:: -- --nocapture 2>&1 | grep -E "crash simulation|^seed|test result|panicked|failed"
echo "crash simulation: $(( $(date +%s) - start )) s on $(nproc) cores"
