#!/usr/bin/env bash
# Cross-checks that fcgihost compiles for x86_64-pc-windows-gnu, following the recipe in
# DESIGN.md: Debian trixie's rustc-web ships its standard library source, so a trixie
# chroot can build std for the Windows target. The chroot is cached between runs
# (FCGIHOST_WINCHECK_ROOT, default /var/cache/fcgihost-wincheck), and so are the crates
# and the build (std included) inside it: a run after the first takes a minute or two.
#
# The first run needs root (or sudo), apt-get (it installs debootstrap when missing) and
# network access to the Debian mirror (FCGIHOST_WINCHECK_MIRROR, default
# http://deb.debian.org/debian) and to crates.io. Cargo inside the chroot trusts the host's
# CA bundle ($SSL_CERT_FILE, else $CURL_CA_BUNDLE, else /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${FCGIHOST_WINCHECK_ROOT:-/var/cache/fcgihost-wincheck}
mirror=${FCGIHOST_WINCHECK_MIRROR:-http://deb.debian.org/debian}
stamp=$root/.fcgihost-ready
say() { printf 'check-windows: %s\n' "$*" >&2; }

run_root() { "$@"; }
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "needs root or sudo (it builds and enters a chroot)"; exit 1; }
    run_root() { sudo "$@"; }
fi

# One check at a time per chroot: they share its copy of the sources.
if command -v flock >/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/fcgihost-wincheck.lock"
    flock 9
fi

ca=${SSL_CERT_FILE:-${CURL_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] || ca=

if [ ! -f "$stamp" ]; then
    say "building the trixie chroot at $root (first run only; a few minutes)"
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || { say "install debootstrap first (no apt-get here)"; exit 1; }
        run_root apt-get update -qq
        run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    # A first run killed mid-way may have left /proc or /sys mounted inside: unmount,
    # and never let rm cross into another file system.
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        run_root umount -l "$m" || true
    done
    run_root rm -rf --one-file-system "$root"
    run_root mkdir -p "$root"
    run_root debootstrap --variant=minbase trixie "$root" "$mirror" >/dev/null
    run_root cp /etc/resolv.conf "$root/etc/resolv.conf"
    if [ -n "$ca" ]; then
        run_root mkdir -p "$root/etc/ssl/certs"
        run_root cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    run_root chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        rustc-web cargo-web rust-web-src binutils-mingw-w64-x86-64 gcc-mingw-w64-x86-64-posix ca-certificates >/dev/null'
    run_root touch "$stamp"
fi

# DNS may have changed since the chroot was made; cargo trusts the host's CA bundle (some
# networks add a CA), or the chroot's own when the host has none.
run_root cp /etc/resolv.conf "$root/etc/resolv.conf"
if [ -n "$ca" ]; then
    run_root cp "$ca" "$root/etc/fcgihost-ca.crt"
else
    run_root cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/fcgihost-ca.crt"
fi

# Copy the sources into the chroot, keeping its target/ (the cached build, std included).
run_root mkdir -p "$root/src/fcgihost"
if command -v rsync >/dev/null; then
    run_root rsync -a --delete --exclude /target --exclude /fuzz/target --exclude /.venv-test \
        --exclude /.git "$repo/" "$root/src/fcgihost/"
else
    run_root find "$root/src/fcgihost" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
    tar -C "$repo" --exclude=./target --exclude=./fuzz/target --exclude=./.venv-test \
        --exclude=./.git -cf - . | run_root tar -C "$root/src/fcgihost" -xf -
fi
run_root chroot "$root" sh -c 'cd /src/fcgihost && CARGO_HTTP_CAINFO=/etc/fcgihost-ca.crt RUSTC_BOOTSTRAP=1 cargo check --quiet --locked \
    --target x86_64-pc-windows-gnu -Zbuild-std=std,panic_abort --all-targets'
say "fcgihost compiles for x86_64-pc-windows-gnu"
