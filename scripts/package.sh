#!/usr/bin/env bash
# Builds ledge's release artifacts into target/package/ (or --out DIR):
#   ledge_VERSION_amd64.deb, ledge_VERSION_arm64.deb           (cargo-deb, [package.metadata.deb])
#   ledge-VERSION-x86_64-linux.tar.gz, ledge-VERSION-aarch64-linux.tar.gz
#   SHA256SUMS                                                  (sha256sum -c format, bare names)
#
#   scripts/package.sh [--target x86_64|aarch64|all] [--binary FILE] [--out DIR]
#                      [--deb-version V] [--fast]
#   scripts/package.sh --tools-only                             (install cargo-deb and stop)
#
# x86_64 reuses target/release/ledge (cargo rebuilds it only if the sources changed); aarch64 is
# cross-built with the toolchain scripts/setup.sh installs. --binary packages an already-built
# x86_64 binary instead (the test suite packages its debug build: no release build in CI).
# --deb-version overrides the package version (scripts/package-check.sh builds an "upgrade");
# --fast compresses with gzip instead of xz. Installs cargo-deb (into target/tools) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

targets=all binary="" out=target/package deb_version="" fast=() tools_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --deb-version) deb_version=$2; shift 2 ;;
    --fast) fast=(--fast); shift ;;
    --tools-only) tools_only=1; shift ;;
    *) echo "usage: scripts/package.sh [--target x86_64|aarch64|all] [--binary FILE] [--out DIR] [--deb-version V] [--fast] | --tools-only" >&2
       exit 2 ;;
  esac
done
case "$targets" in
  all) targets="x86_64 aarch64" ;;
  x86_64|aarch64) ;;
  *) echo "package.sh: --target is x86_64, aarch64 or all, not '$targets'" >&2; exit 2 ;;
esac
if [ -n "$binary" ] && [ "$targets" != x86_64 ]; then
  echo "package.sh: --binary packages an x86_64 binary: use it with --target x86_64" >&2
  exit 2
fi
[ "$(uname -m)" = x86_64 ] || { echo "package.sh: builds on an x86_64 machine" >&2; exit 2; }

export CARGO_INCREMENTAL=0
cargo_deb=$root/target/tools/bin/cargo-deb
if [ ! -x "$cargo_deb" ]; then
  echo "== installing cargo-deb into target/tools"
  cargo install --quiet --locked cargo-deb@3.8.0 --root "$root/target/tools"
fi
[ -z "$tools_only" ] || exit 0
for tool in dpkg-deb:dpkg gzip:gzip sha256sum:coreutils; do
  command -v "${tool%%:*}" >/dev/null || { echo "package.sh: needs ${tool%%:*} (apt install ${tool##*:})" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
deb_version=${deb_version:-$version}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$root/target/package/stage
# One packaging at a time: the stage is where [package.metadata.deb] reads from.
mkdir -p "$root/target/package"
exec 9>"$root/target/package/.lock"
flock 9
built=()

# The host's binary: man pages and completions come from it (the CLI is the same on every
# target), and it is the x86_64 package's binary.
host_binary=${binary:-$root/target/release/ledge}
if [ -z "$binary" ]; then
  echo "== cargo build --release (x86_64)"
  cargo build --quiet --release --bin ledge
fi
[ -x "$host_binary" ] || { echo "package.sh: no binary at $host_binary" >&2; exit 1; }
host_binary=$(cd "$(dirname "$host_binary")" && pwd)/$(basename "$host_binary")

rm -rf "$stage"
mkdir -p "$stage/man" "$stage/completions"
"$host_binary" man-pages "$stage/man" >/dev/null
gzip -9n "$stage"/man/*.1
"$host_binary" completions bash > "$stage/completions/ledge.bash"
"$host_binary" completions zsh > "$stage/completions/_ledge"
"$host_binary" completions fish > "$stage/completions/ledge.fish"
# Debian wants a changelog: one entry for this build, dated by its commit (reproducible).
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' host/Cargo.toml)
printf 'ledge (%s) unstable; urgency=medium\n\n  * ledge %s, built from commit %s.\n\n -- %s  %s\n' \
  "$deb_version" "$deb_version" "$commit" "$maintainer" "$when" > "$stage/changelog"

for target in $targets; do
  case "$target" in
    x86_64) triple=x86_64-unknown-linux-gnu arch=amd64 default=ledge.default ;;
    aarch64) triple=aarch64-unknown-linux-gnu arch=arm64 default=ledge.default.arm64 ;;
  esac
  if [ "$target" = aarch64 ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null || ./scripts/setup.sh
    echo "== cargo build --release --target $triple"
    cargo build --quiet --release --target "$triple" --bin ledge
    target_binary=$root/target/$triple/release/ledge
  else
    target_binary=$host_binary
  fi
  # cargo-deb reads binaries from CARGO_TARGET_DIR/TRIPLE/release/: a staged copy, so that the
  # package holds exactly the binary chosen above (and never triggers a build).
  mkdir -p "$stage/cargo-target/$triple/release"
  cp "$target_binary" "$stage/cargo-target/$triple/release/ledge"
  cp "host/debian/$default" "$stage/ledge.default"
  deb=$out/ledge_${deb_version}_$arch.deb
  echo "== $(basename "$deb")"
  CARGO_TARGET_DIR=$stage/cargo-target "$cargo_deb" --quiet -p ledge --no-build --target "$triple" \
    --deb-version "$deb_version" --strip "${fast[@]}" --output "$deb" >/dev/null
  built+=("$(basename "$deb")")

  # The archive: the packaged (stripped) binary, the unit, the flags file and the docs.
  name=ledge-$deb_version-$target-linux
  tree=$stage/$name
  rm -rf "$tree" "$stage/unpacked"
  dpkg-deb -x "$deb" "$stage/unpacked"
  mkdir -p "$tree/man" "$tree/completions"
  cp "$stage/unpacked/usr/bin/ledge" "$tree/ledge"
  cp host/debian/ledge.service README.md "$tree/"
  cp "host/debian/$default" "$tree/ledge.default"
  cp "$stage"/man/*.1.gz "$tree/man/"
  cp "$stage"/completions/* "$tree/completions/"
  tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/$name.tar.gz" "$name"
  built+=("$name.tar.gz")
done

(cd "$out" && sha256sum "${built[@]}" > SHA256SUMS)
echo "== $out"
(cd "$out" && ls -l "${built[@]}" SHA256SUMS | awk '{ printf "%12d  %s\n", $5, $9 }')
