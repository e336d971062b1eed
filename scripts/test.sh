#!/usr/bin/env bash
# Runs every check of the project: formatting, the layout check, clippy, the whole test suite (unit tests, the
# ledge-kv engine's tests, the end-to-end suite against a real server), and then the ARM64
# build with a substantial part of the end-to-end suite under qemu-user emulation.
set -euo pipefail
cd "$(dirname "$0")/.."

# The suite builds each crate once: incremental state would only cost time and gigabytes of disk
# (a CI run on a fresh clone failed with a full disk), so the suite builds without it.
export CARGO_INCREMENTAL=0
./scripts/setup.sh
# cargo-deb (into target/tools, about a minute): the packaging test builds a .deb with it.
./scripts/package.sh --tools-only
cargo fmt --all -- --check
# The layout ARCHITECTURE.md promises: layers used only downward, no import circles, no file
# over 400 lines before its tests.
python3 scripts/layers.py
for guests in functions tests/guests; do (cd "$guests" && cargo fmt -- --check); done
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The SDK is publishable on its own: packaged and built from the package as crates.io would.
cargo package --quiet --allow-dirty --manifest-path guest-sdk/Cargo.toml --target-dir target/sdk-package
cargo test --workspace

# ARM64: the host cross-compiled for aarch64 (.cargo/config.toml names the linker and the
# qemu runner), every server started under emulation with the small profile. Left out: the
# Python component (minutes of Cranelift under emulation; so the restart test that recompiles
# one too), TLS (curl is not emulated, the server is, so nothing arm-specific), and load tests
# that need more than the small profile's 32 instance slots or steady timing.
echo "== aarch64 (qemu-user) =="
export LEDGE_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export LEDGE_TEST_SERVE_ARGS="--profile small"
cargo test --target aarch64-unknown-linux-gnu -p ledge --test e2e -- --test-threads 2 \
  deploy:: durability:: edge:: invoke::hello invoke::echo invoke::a_trapping invoke::unknown \
  invoke::outbound invoke::a_component_built_with_the_plain preinit::a_failing preinit::a_restart \
  preinit::an_artifact kv::concurrent_random kv::write_skew kv::acknowledged kv::one_function \
  kv::shared_stores kv::a_transaction_left kv::a_guest_written tokens:: rate::a_burst \
  rate::two_callers rate::bad_policies rate::concurrent_instances production::a_memory_hog \
  production::oversized production::sigterm production::metrics \
  replay::a_recorded_counter replay::a_trap_is_recorded otel::a_counter_request_is_one_trace \
  queues::a_crash_loses_nothing_queued --skip durability::a_restarted_node_serves_while_it_still_loads_code
