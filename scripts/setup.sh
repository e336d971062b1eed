#!/usr/bin/env bash
# Installs what building and testing ledge needs on a machine that has only the Rust
# toolchain (rustup, cargo) and python3: the wasm32-wasip2 target, and componentize-py in a
# virtualenv under target/ (the tests build a Python component with it, and check token
# interop against pymacaroons).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null

if [ ! -x target/pyenv/bin/componentize-py ] || ! target/pyenv/bin/python -c "import pymacaroons, prometheus_client" 2>/dev/null; then
  mkdir -p target
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1 pymacaroons==0.13.0 prometheus-client==0.21.1
fi
