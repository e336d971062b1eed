#!/usr/bin/env bash
# Installs the amd64 .deb for real in a throwaway Debian root and walks its life cycle:
#   install (user, data dir and its mode, conffiles, unit enabled), the service's own command
#   line run there as the ledge user (a function deployed and invoked, SIGTERM drains), an
#   upgrade to a rebuilt .deb that keeps an edited conffile and the data, remove (data kept),
#   purge (data and config gone, the system user kept as Debian advises); then the arm64
#   package's binary under qemu-user. Also: the unit passes `systemd-analyze verify`, and the
#   install refuses to take over a login account named ledge.
#
#   sudo scripts/package-check.sh [--reuse]
#
# Needs root (debootstrap, chroot) and the Debian mirror; takes minutes (the aarch64 release
# build, when it is not built yet, most of them). --reuse keeps target/package's artifacts if
# present instead of running scripts/package.sh first. Prints each step with its time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "package-check.sh: run as root (debootstrap and chroot)" >&2; exit 2; }
reuse=${1:-}

started=$(date +%s)
step() { printf '[%4ds] %s\n' $(($(date +%s) - started)) "$*"; }
fail() { echo "package-check: FAILED: $*" >&2; exit 1; }
# wait_healthy SECONDS LOG WHAT: until ledge on $port answers /healthz, else print LOG and fail.
wait_healthy() {
  local deadline=$(($(date +%s) + $1))
  until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$2"; fail "$3"; }
    sleep 0.2
  done
}

command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
packages=$repo/target/package
if [ "$reuse" != --reuse ] || [ ! -f "$packages/ledge_${version}_amd64.deb" ] || [ ! -f "$packages/ledge_${version}_arm64.deb" ]; then
  step "building the packages (scripts/package.sh --target all)"
  ./scripts/package.sh --target all
fi
(cd "$packages" && sha256sum --check --quiet SHA256SUMS) || fail "SHA256SUMS does not match the artifacts"
step "artifacts verified against SHA256SUMS"

work=$(mktemp -d /var/tmp/ledge-package-check.XXXXXX)
root=$work/root
mounted=()
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  # Never remove through a bind mount of the host's /proc or /dev that failed to come off.
  for mount in "${mounted[@]}"; do
    if mountpoint -q "$mount"; then
      echo "package-check: $mount is still mounted; left $work in place" >&2
      return
    fi
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

step "debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
for fs in proc dev; do mount --bind "/$fs" "$root/$fs" && mounted+=("$root/$fs"); done
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
step "root ready"

# systemd as on any Debian system (installed, not running: a chroot starts no services), for
# deb-systemd-helper and systemd-analyze.
in_root apt-get install -y -qq --no-install-recommends systemd >"$work/systemd.log" 2>&1 ||
  { cat "$work/systemd.log"; fail "installing systemd in the root"; }
cp "$packages/ledge_${version}_amd64.deb" "$root/tmp/"
in_root apt-get install -y -qq "/tmp/ledge_${version}_amd64.deb" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "apt-get install"; }
step "installed ledge_${version}_amd64.deb with apt (dependencies from the mirror)"

user=$(in_root getent passwd ledge) || fail "no ledge user"
IFS=: read -r _ _ uid _ _ home shell <<<"$user"
[ "$uid" -lt 1000 ] || fail "ledge is not a system user (uid $uid)"
[ "$home" = /var/lib/ledge ] || fail "ledge's home is $home"
in_root getent group ledge >/dev/null || fail "no ledge group"
# Owners are named by the root's own user database, so stat runs in it.
[ "$(in_root stat -c '%a %U %G' /var/lib/ledge)" = "700 ledge ledge" ] ||
  fail "/var/lib/ledge is $(in_root stat -c '%a %U %G' /var/lib/ledge)"
conffiles=$(in_root dpkg-query -W -f='${Conffiles}' ledge | awk '{ print $1 }' | sort | tr '\n' ' ')
[ "$conffiles" = "/etc/default/ledge /etc/ledge/policies/default.toml " ] || fail "conffiles: $conffiles"
[ -L "$root/etc/systemd/system/multi-user.target.wants/ledge.service" ] || fail "the unit is not enabled"
for page in ledge ledge-serve ledge-deploy ledge-token-mint; do
  [ -f "$root/usr/share/man/man1/$page.1.gz" ] || fail "no man page $page"
done
in_root ledge --version
[ "$(in_root stat -c '%a %U' /etc/default/ledge)" = "600 root" ] || fail "/etc/default/ledge is not root's alone"
in_root systemd-analyze verify --man=no /usr/lib/systemd/system/ledge.service 2>"$work/analyze.log" ||
  { cat "$work/analyze.log"; fail "systemd-analyze verify"; }
step "user $user; /var/lib/ledge 700 ledge:ledge; conffiles $conffiles; unit enabled and valid; man pages"

# The service's command line, as systemd would run it: the unit's ExecStart with
# /etc/default/ledge's LEDGE_OPTS, as the ledge user; only --listen moves to a free loopback port.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
exec_start=$(sed -n 's/^ExecStart=//p' "$root/usr/lib/systemd/system/ledge.service")
command_line=$(. "$root/etc/default/ledge"; echo "${exec_start/\$LEDGE_OPTS/$LEDGE_OPTS}")
command_line=${command_line/--listen 127.0.0.1:8080/--listen 127.0.0.1:$port}
echo "  $command_line"
chroot --userspec=ledge:ledge "$root" /usr/bin/env -i HOME=/var/lib/ledge $command_line >"$work/serve.log" 2>&1 &
server_pid=$!
wait_healthy 20 "$work/serve.log" "the service did not start"
token=$(cat "$root/var/lib/ledge/admin.token")
[ "$(in_root stat -c '%a %U' /var/lib/ledge/admin.token)" = "600 ledge" ] || fail "admin.token is not the ledge user's, 0600"
hello=functions/target/wasm32-wasip2/release/hello.wasm
[ -f "$hello" ] || (cd functions && cargo build --release --quiet)
curl -fsS -X PUT -H "authorization: Bearer $token" --data-binary "@$hello" "http://127.0.0.1:$port/v1/functions/hello" >/dev/null ||
  fail "deploy"
answer=$(curl -fsS -H "authorization: Bearer $token" "http://127.0.0.1:$port/fn/hello/check")
[ "$answer" = "Hello from ledge! You asked for /check" ] || fail "hello answered: $answer"
kill -TERM "$server_pid"
wait "$server_pid" || fail "SIGTERM: ledge exited with $?"
server_pid=
step "the unit's command line served hello as the ledge user on port $port and drained on SIGTERM"

# Upgrade: an edited conffile is kept, the data stays.
echo '# edited by package-check' >>"$root/etc/default/ledge"
./scripts/package.sh --target x86_64 --deb-version "$version+check1" --out "$work/upgrade" >/dev/null
cp "$work/upgrade/ledge_${version}+check1_amd64.deb" "$root/tmp/"
in_root apt-get install -y -qq "/tmp/ledge_${version}+check1_amd64.deb" >"$work/upgrade.log" 2>&1 ||
  { cat "$work/upgrade.log"; fail "the upgrade"; }
[ "$(in_root dpkg-query -W -f='${Version}' ledge)" = "$version+check1" ] || fail "the upgrade did not install"
grep -q '^# edited by package-check$' "$root/etc/default/ledge" || fail "the upgrade lost the edited /etc/default/ledge"
[ "$(cat "$root/var/lib/ledge/admin.token")" = "$token" ] || fail "the upgrade changed the data dir"
step "upgraded to $version+check1: the edited /etc/default/ledge and the data dir kept"

in_root apt-get remove -y -qq ledge >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "remove"; }
[ ! -e "$root/usr/bin/ledge" ] || fail "remove left /usr/bin/ledge"
[ -f "$root/var/lib/ledge/admin.token" ] || fail "remove deleted the data"
[ -f "$root/etc/default/ledge" ] || fail "remove deleted the configuration"
step "removed: binary gone, data and configuration kept"

in_root dpkg --purge ledge >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge"; }
[ ! -e "$root/var/lib/ledge" ] || fail "purge left /var/lib/ledge"
[ ! -e "$root/etc/default/ledge" ] && [ ! -e "$root/etc/ledge" ] || fail "purge left the configuration"
in_root getent passwd ledge >/dev/null || fail "purge removed the system user"
step "purged: data and configuration gone (the system user stays)"

# A login account named ledge is never taken over: the install stops instead.
in_root deluser --quiet ledge >/dev/null
in_root useradd --create-home --shell /bin/bash ledge
if in_root apt-get install -y -qq "/tmp/ledge_${version}_amd64.deb" >"$work/takeover.log" 2>&1; then
  fail "the package took over the login account ledge"
fi
in_root dpkg --purge ledge >/dev/null 2>&1 || true
step "a login account named ledge: the install refused to configure"

# The arm64 package: its binary runs (and serves, with the packaged flags' small profile)
# under qemu-user.
arm=$work/arm64
dpkg-deb -x "$packages/ledge_${version}_arm64.deb" "$arm"
qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
"${qemu[@]}" "$arm/usr/bin/ledge" --version | grep -q ' aarch64-unknown-linux-gnu$' || fail "the arm64 binary"
"${qemu[@]}" "$arm/usr/bin/ledge" --version
grep -q -- '--profile small' "$arm/etc/default/ledge" || fail "the arm64 flags lack --profile small"
"${qemu[@]}" "$arm/usr/bin/ledge" serve --profile small --listen "127.0.0.1:$port" --data-dir "$work/arm-data" \
  --policies "$arm/etc/ledge/policies" >"$work/arm.log" 2>&1 &
server_pid=$!
wait_healthy 60 "$work/arm.log" "the arm64 binary did not serve"
kill -TERM "$server_pid"
wait "$server_pid" || fail "the arm64 ledge exited with $?"
server_pid=
step "arm64: the packaged binary serves under qemu-user with --profile small"

echo "package-check: OK"
