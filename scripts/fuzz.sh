#!/usr/bin/env bash
# Fuzzes every parser of untrusted or on-disk bytes (the targets in fuzz/, cargo-fuzz and
# libFuzzer on the nightly toolchain), one target after another, and reports per target how
# many inputs ran and whether one crashed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   fuzz (default: 60 s each, every target)
#   scripts/fuzz.sh --merge [TARGET...]                 keep what the last runs found (see below)
#
# Each run starts from the saved corpus, fuzz/corpus/TARGET/ (which `cargo test` replays), and
# writes new inputs to fuzz/target/new-corpus/TARGET/, so fuzzing never touches tracked files.
# `--merge` minimizes the saved corpus and the new inputs together into a new saved corpus
# (as `cargo fuzz cmin` does, keeping seeds and regression inputs named crash-*), at most about
# 200 files and 2 MiB per target. A crash, a hang
# (-timeout) or a runaway allocation (-rss_limit_mb) is saved as fuzz/artifacts/TARGET/crash-*
# (timeout-*, oom-*); replay it with
# `cargo +nightly fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-...`. Exits non-zero when
# any target failed.
#
# Environment: FUZZ_TIMEOUT (seconds one input may take, default 25), FUZZ_RSS_MB (default
# 2048), FUZZ_SANITIZER (default none: the targets are safe Rust, and without ASan they run
# about twice as fast; `address` works too).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(kv_wal_segment kv_checkpoint kv_recovery token policy_toml deploy_validate meta_json)
TIMEOUT="${FUZZ_TIMEOUT:-25}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
SANITIZER="${FUZZ_SANITIZER:-none}"
# One build, shared by `build`, `run` and `cmin` (other flags would rebuild everything).
BUILD_FLAGS=(-s "$SANITIZER" --codegen-units 16)

merge=0
seconds=60
if [[ "${1:-}" == "--merge" ]]; then
  merge=1
  shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  seconds="$1"
  shift
elif [[ "${1:-}" == -* ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "unknown target: $t (${ALL_TARGETS[*]})" >&2; exit 2; }
done

# The toolchain: nightly and cargo-fuzz, installed when missing.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi

echo "== building the fuzz targets (sanitizer: $SANITIZER) =="
(cd fuzz && cargo +nightly fuzz build "${BUILD_FLAGS[@]}")
bin_dir="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

if [[ $merge == 1 ]]; then
  # What `cargo fuzz cmin` does (libFuzzer merging into a fresh directory; -set_cover_merge
  # keeps a smaller set), over the saved corpus and the new inputs together. Seeds (seed-*) and
  # regression inputs (crash-*) keep their names and stay whatever they cover; then the largest
  # other inputs go until the corpus is within FUZZ_CORPUS_FILES files and FUZZ_CORPUS_KB.
  max_files="${FUZZ_CORPUS_FILES:-200}"
  max_kb="${FUZZ_CORPUS_KB:-2048}"
  for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    new="fuzz/target/new-corpus/$t"
    fresh="fuzz/target/cmin/$t"
    mkdir -p "$corpus" "$new"
    rm -rf "$fresh" && mkdir -p "$fresh"
    echo "== $t: $(ls "$corpus" | wc -l) saved and $(ls "$new" | wc -l) new inputs =="
    "$bin_dir/$t" -set_cover_merge=1 -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" "$fresh" "$corpus" "$new" \
      >"fuzz/target/cmin/$t.log" 2>&1 || { tail -n 20 "fuzz/target/cmin/$t.log"; exit 1; }
    for kept in "$corpus"/seed-* "$corpus"/crash-*; do
      [[ -f "$kept" ]] || continue
      rm -f "$fresh/$(sha1sum "$kept" | cut -d' ' -f1)"
      cp "$kept" "$fresh/"
    done
    # Largest first, leaving seeds and regression inputs.
    while read -r size file; do
      files=$(ls "$fresh" | wc -l)
      kb=$(du -sk "$fresh" | cut -f1)
      ((files > max_files || kb > max_kb)) || break
      rm -f "$file"
    done < <(find "$fresh" -type f ! -name 'seed-*' ! -name 'crash-*' -printf '%s %p\n' | sort -rn)
    rm -rf "$corpus" "$new"
    mv "$fresh" "$corpus"
    echo "   kept $(ls "$corpus" | wc -l) files, $(du -sh "$corpus" | cut -f1)"
  done
  exit 0
fi

# kv_recovery writes and fsyncs a directory per input: on a RAM disk when there is one.
if [[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]]; then
  export TMPDIR=/dev/shm
fi

mkdir -p fuzz/target/logs
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  new="fuzz/target/new-corpus/$t"
  artifacts="fuzz/artifacts/$t"
  log="fuzz/target/logs/$t.log"
  mkdir -p "$corpus" "$new" "$artifacts"
  before=$(ls "$artifacts" | wc -l)
  echo "== $t: ${seconds}s =="
  set +e
  "$bin_dir/$t" -max_total_time="$seconds" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$new" "$corpus" >"$log" 2>&1
  status=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [[ -n "$runs" ]] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  [[ -n "$runs" ]] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  after=$(ls "$artifacts" | wc -l)
  if [[ $status -ne 0 || $after -gt $before ]]; then
    found=$(ls -t "$artifacts" | head -n 1)
    verdict="FAILED (exit $status): fuzz/artifacts/$t/$found, log $log"
    failed+=("$t")
    grep -m 1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/   /' || true
  else
    verdict="ok"
  fi
  summary+=("$(printf '%-16s %12s runs  %s' "$t" "${runs:-?}" "$verdict")")
  echo "${summary[-1]}"
done

echo
echo "== summary (${seconds}s per target) =="
printf '%s\n' "${summary[@]}"
new_inputs=$(find fuzz/target/new-corpus -type f 2>/dev/null | wc -l)
[[ $new_inputs -eq 0 ]] || echo "$new_inputs new inputs in fuzz/target/new-corpus/: keep them with scripts/fuzz.sh --merge"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
