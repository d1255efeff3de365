#!/usr/bin/env bash
# Cross-checks that fcgihost compiles for x86_64-pc-windows-gnu, following the recipe in
# DESIGN.md: Debian trixie's rustc-web ships its standard library source, so a trixie
# chroot can build std for the Windows target. The chroot is cached between runs
# (FCGIHOST_WINCHECK_ROOT, default /var/cache/fcgihost-wincheck).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${FCGIHOST_WINCHECK_ROOT:-/var/cache/fcgihost-wincheck}
stamp=$root/.fcgihost-ready

run_root() { "$@"; }
if [ "$(id -u)" != 0 ]; then
    run_root() { sudo "$@"; }
fi

if [ ! -f "$stamp" ]; then
    echo "check-windows: building the trixie chroot at $root (first run only)" >&2
    command -v debootstrap >/dev/null || { run_root apt-get update -qq; run_root apt-get install -y -qq debootstrap; }
    run_root rm -rf "$root"
    run_root mkdir -p "$root"
    run_root debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >/dev/null
    run_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" 2>/dev/null \
        || { run_root mkdir -p "$root/etc/ssl/certs"; run_root cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"; }
    run_root cp /etc/resolv.conf "$root/etc/resolv.conf"
    run_root chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        rustc-web cargo-web rust-web-src binutils-mingw-w64-x86-64 gcc-mingw-w64-x86-64-posix ca-certificates >/dev/null'
    run_root touch "$stamp"
fi

# Cargo inside the chroot trusts the same CA bundle as the host (some networks add a CA).
ca=${SSL_CERT_FILE:-${CURL_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
run_root cp "$ca" "$root/etc/fcgihost-ca.crt"

# Copy the sources (not target/) into the chroot and check there; the registry cache
# inside the chroot persists between runs.
run_root mkdir -p "$root/src/fcgihost"
run_root rsync -a --delete --exclude target --exclude .venv-test --exclude .git "$repo/" "$root/src/fcgihost/" 2>/dev/null \
    || { run_root rm -rf "$root/src/fcgihost"; run_root mkdir -p "$root/src/fcgihost"; tar -C "$repo" --exclude=./target --exclude=./.venv-test --exclude=./.git -cf - . | run_root tar -C "$root/src/fcgihost" -xf -; }
run_root chroot "$root" sh -c 'cd /src/fcgihost && CARGO_HTTP_CAINFO=/etc/fcgihost-ca.crt RUSTC_BOOTSTRAP=1 cargo check --quiet --locked \
    --target x86_64-pc-windows-gnu -Zbuild-std=std,panic_abort --all-targets' \
    && echo "check-windows: fcgihost compiles for x86_64-pc-windows-gnu"
