#!/usr/bin/env bash
# Sets everything up, builds ledge and the example functions (release), starts `ledge serve`
# on 127.0.0.1:8080 (override with LEDGE_LISTEN) and deploys every example in functions/.
# Ctrl-C stops the server gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo build --release --bin ledge
(cd functions && cargo build --release)

listen="${LEDGE_LISTEN:-127.0.0.1:8080}"
data_dir="${LEDGE_DATA_DIR:-./ledge-data}"
./target/release/ledge serve --listen "$listen" --data-dir "$data_dir" --policies ./policies &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM

export LEDGE_SERVER="http://$listen"
for _ in $(seq 100); do
  curl -fsS "$LEDGE_SERVER/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# The server wrote its admin token on first start; deploys need it.
LEDGE_TOKEN=$(cat "$data_dir/admin.token")
export LEDGE_TOKEN
for wasm in functions/target/wasm32-wasip2/release/*.wasm; do
  name=$(basename "$wasm" .wasm | tr '_' '-')
  ./target/release/ledge deploy "$name" "$wasm"
done
echo "ledge is serving the examples on $LEDGE_SERVER (try: curl $LEDGE_SERVER/fn/hello/world)"
echo "admin token: $data_dir/admin.token"
wait $server
