#!/usr/bin/env bash
# Runs every check of the project: formatting, clippy, and the whole test suite (unit tests,
# the ledge-kv engine's tests, and the end-to-end suite against a real server).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
