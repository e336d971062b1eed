#!/usr/bin/env bash
# Installs what building and testing ledge needs on a machine that has only the Rust
# toolchain (rustup, cargo) and python3: the wasm32-wasip2 and aarch64 targets, the Debian
# packages for cross-building and emulating ARM64, componentize-py in a virtualenv under
# target/ (the tests build Python components with it, and check token interop against
# pymacaroons), and componentize-js under target/node (the tests build JavaScript ones).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 aarch64-unknown-linux-gnu >/dev/null

# The ARM64 build and its emulated test run: Debian's cross gcc and sysroot, and qemu-user.
# curl for the TLS tests, strace for the test that watches directory fsyncs (scripts/bench.sh
# installs wrk and h2load itself).
missing=()
# etcd (Debian's etcd-server) for the cluster tests, protoc for the etcd client's build,
# lintian for the packaging test.
for tool in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu qemu-aarch64:qemu-user curl:curl strace:strace \
  etcd:etcd-server protoc:protobuf-compiler lintian:lintian; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
[ -d /usr/aarch64-linux-gnu/lib ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed apt-get update -qq
  $sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# componentize-js (npm) for the JavaScript template's builds in the tests (node and npm come
# from Debian where they are missing).
if [ ! -x target/node/node_modules/.bin/componentize-js ]; then
  if ! command -v npm >/dev/null; then
    sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo_if_needed apt-get update -qq
    $sudo_if_needed apt-get install -y -qq nodejs npm >/dev/null
  fi
  mkdir -p target/node
  npm install --prefix target/node --no-audit --no-fund --loglevel=error @bytecodealliance/componentize-js@0.23.0 >/dev/null
fi

if [ ! -x target/pyenv/bin/componentize-py ] || ! target/pyenv/bin/python -c "import pymacaroons, prometheus_client" 2>/dev/null; then
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1 pymacaroons==0.13.0 prometheus-client==0.21.1
fi
