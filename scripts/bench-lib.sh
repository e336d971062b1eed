# Helpers the bench scripts share (sourced, not run).

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# per_request BEFORE AFTER RPS SECONDS: CPU µs per request between two cpu_ticks readings.
per_request() {
  awk -v t=$(($2 - $1)) -v hz="$(getconf CLK_TCK)" -v r="$3" -v d="$4" 'BEGIN {printf "%.1f\n", t / hz * 1e6 / (r * d)}'
}

# wrk_round URL SECONDS PID OUT: one `wrk -t1 -c32` run against URL; appends its requests/s to
# OUT.rps and PID's CPU µs per request to OUT.cpu. Throughput on a 2-core machine is noisy; the
# server's CPU per request is the steadier figure.
wrk_round() {
  local before after rps
  before=$(cpu_ticks "$3")
  rps=$(wrk -t1 -c32 -d"$2s" "$1" | awk '/^Requests\/sec/ {print $2}')
  after=$(cpu_ticks "$3")
  echo "$rps" >>"$4.rps"
  per_request "$before" "$after" "$rps" "$2" >>"$4.cpu"
}

# median FILE: the median of the numbers in FILE, one per line.
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# start_ledge PORT POLICIES_DIR [SERVE_FLAGS...]: a release `ledge serve` on 127.0.0.1:PORT with
# its data in $work/data (the caller's temp folder, removed with the server by the EXIT trap
# this sets), waited for; sets `pid`, and exports LEDGE_SERVER and LEDGE_TOKEN for the CLI.
start_ledge() {
  trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
  ./target/release/ledge serve --listen "127.0.0.1:$1" --data-dir "$work/data" --policies "$2" "${@:3}" \
    >"$work/serve.out" 2>"$work/serve.log" &
  pid=$!
  for _ in $(seq 300); do
    [ -f "$work/data/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null && break
    sleep 0.1
  done
  export LEDGE_SERVER="http://127.0.0.1:$1" LEDGE_TOKEN
  LEDGE_TOKEN=$(cat "$work/data/admin.token")
}
