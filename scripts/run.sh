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
# What a new user runs next, in another terminal (ledge dev's default port is this server's, so
# the dev server gets another).
bin_dir="$PWD/target/release"
token_file="$(cd "$data_dir" && pwd)/admin.token"
cat <<EOF

ledge is serving the examples on $LEDGE_SERVER (admin token: $token_file).
Next, in another terminal:

  export PATH="$bin_dir:\$PATH" LEDGE_SERVER=$LEDGE_SERVER LEDGE_TOKEN="\$(cat '$token_file')"

  # 1. invoke a function
  curl $LEDGE_SERVER/fn/hello/world
  # 2. deploy your own (or, with live reload: ledge dev --listen 127.0.0.1:8081)
  ledge new my-fn --lang rust && cd my-fn && ledge deploy && curl $LEDGE_SERVER/fn/my-fn/
  # 3. follow a function's logs (its requests, and what it prints)
  ledge logs hello --follow

EOF
wait $server
