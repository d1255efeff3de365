#!/usr/bin/env bash
# Builds fcgihost.exe for x86_64-pc-windows-gnu and runs its Windows test suite under Wine.
#
# The recipe of DESIGN.md: Debian trixie's rustc-web ships its standard library source, so a
# trixie chroot builds std for the Windows target (-Zbuild-std) and links with mingw-w64.
# In the same chroot it builds tests/windows (winworker.exe, the stand-in for python.exe,
# and winsuite.exe, the suite) and runs `wine winsuite.exe fcgihost.exe winworker.exe`,
# whose last line is `N passed, M failed`. trixie's Wine 10 has ProcessPrng (which Rust's
# std >= 1.78 imports), so nothing else is needed.
#
# Cached between runs (FCGIHOST_WINCHECK_ROOT, default /var/cache/fcgihost-wincheck): the
# chroot, its Wine prefix, and the build (std included) in its target/. The first run takes
# a few minutes more for debootstrap and the packages.
#
# The first run needs root (or sudo), apt-get (it installs debootstrap when missing), the
# Debian mirror this machine's apt uses (the first `URIs:` of its deb822 sources, else the
# first `deb` line of sources.list; FCGIHOST_WINCHECK_MIRROR overrides) and the crates
# registry. Cargo inside the chroot trusts the host's CA bundle ($SSL_CERT_FILE, else
# $CURL_CA_BUNDLE, else /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${FCGIHOST_WINCHECK_ROOT:-/var/cache/fcgihost-wincheck}
# The packages the chroot holds; a chroot made with another list gets these installed.
packages="rustc-web cargo-web rust-web-src binutils-mingw-w64-x86-64 gcc-mingw-w64-x86-64-posix ca-certificates wine wine64"
stamp=$root/.fcgihost-ready
target=x86_64-pc-windows-gnu
say() { printf 'check-windows: %s\n' "$*" >&2; }
started=$(date +%s)

run_root() { "$@"; }
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { say "needs root or sudo (it builds and enters a chroot)"; exit 1; }
    run_root() { sudo "$@"; }
fi

# The Debian mirror this machine's apt is configured with.
apt_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # The first URIs of a stanza whose suites are not the security archive.
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s !~ /-security/) { print u; exit } u = ""; s = ""; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { s = $0 }
            END { if (u != "" && s !~ /-security/) print u }' "$f" | head -n1)
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" && $3 !~ /-security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
}

# One check at a time per chroot: they share its copy of the sources. (Nothing started in
# the chroot keeps the lock: those commands run with descriptor 9 closed.)
if command -v flock >/dev/null; then
    exec 9>"${TMPDIR:-/tmp}/fcgihost-wincheck.lock"
    flock 9
fi
in_chroot() { run_root chroot "$root" "$@" 9>&-; }

ca=${SSL_CERT_FILE:-${CURL_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] || ca=

# A run killed mid-way may have left /proc mounted inside: unmount it (and never let rm
# cross into another file system).
unmount_all() {
    awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        run_root umount -l "$m" || true
    done
}

if [ ! -f "$stamp" ]; then
    mirror=${FCGIHOST_WINCHECK_MIRROR:-$(apt_mirror)}
    [ -n "$mirror" ] || { say "no Debian mirror in /etc/apt (set FCGIHOST_WINCHECK_MIRROR)"; exit 1; }
    say "building the trixie chroot at $root from $mirror (first run only; a few minutes)"
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || { say "install debootstrap first (no apt-get here)"; exit 1; }
        run_root apt-get update -qq
        run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    unmount_all
    run_root rm -rf --one-file-system "$root"
    run_root mkdir -p "$root"
    run_root nice debootstrap --variant=minbase trixie "$root" "$mirror" >/dev/null
    run_root touch "$stamp"
fi

run_root cp /etc/resolv.conf "$root/etc/resolv.conf"
if [ "$(cat "$stamp")" != "$packages" ]; then
    say "installing the build and Wine packages into the chroot"
    if [ -n "$ca" ]; then
        run_root mkdir -p "$root/etc/ssl/certs"
        run_root cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    in_chroot sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive nice apt-get install -y -qq --no-install-recommends $packages >/dev/null"
    printf '%s' "$packages" | run_root tee "$stamp" >/dev/null
fi

# Cargo trusts the host's CA bundle (some networks add a CA), or the chroot's own.
if [ -n "$ca" ]; then
    run_root cp "$ca" "$root/etc/fcgihost-ca.crt"
else
    run_root cp "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/fcgihost-ca.crt"
fi

# Copy the sources into the chroot, keeping its target/ (the cached build, std included).
run_root mkdir -p "$root/src/fcgihost"
run_root find "$root/src/fcgihost" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
tar -C "$repo" --exclude=./target --exclude=./fuzz/target --exclude=./.venv-test \
    --exclude=./tests/windows/target --exclude=./.git -cf - . | run_root tar -C "$root/src/fcgihost" -xf -

cargo_env="CARGO_HTTP_CAINFO=/etc/fcgihost-ca.crt RUSTC_BOOTSTRAP=1"
build="cargo build --quiet --locked --release --target $target -Zbuild-std=std,panic_abort --target-dir /src/fcgihost/target"
say "building fcgihost.exe and the test programs"
in_chroot sh -c "cd /src/fcgihost && $cargo_env nice $build --bin fcgihost \
    && $cargo_env nice $build --manifest-path tests/windows/Cargo.toml"
say "built in $(( $(date +%s) - started )) s"

# Wine needs /proc, and a terminal: only a process started on one gets a console (Wine's
# "unix console"), and console control events (the suite's Ctrl-C) need a console. A
# private devpts instance gives `script` its pseudo-terminal. Wine's prefix lives in the
# chroot and is made once.
# On exit, end whatever still runs inside the chroot (Wine's server and services, a worker
# a failed test left): processes whose root directory is the chroot, by pid.
end_chroot_processes() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(run_root readlink "$p/root" 2>/dev/null)" = "$root" ] && run_root kill -9 "${p#/proc/}" 2>/dev/null
    done
    return 0
}
trap 'in_chroot env WINEPREFIX=/var/lib/fcgihost-wine wineserver -k >/dev/null 2>&1 || true; end_chroot_processes; unmount_all' EXIT
unmount_all
run_root mount -t proc proc "$root/proc"
run_root mkdir -p "$root/dev/pts"
run_root mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
wine_env="WINEPREFIX=/var/lib/fcgihost-wine WINEDEBUG=-all WINEDLLOVERRIDES=mscoree,mshtml="
if [ ! -d "$root/var/lib/fcgihost-wine/drive_c" ]; then
    say "making the Wine prefix (first run only)"
    in_chroot sh -c "env $wine_env wineboot -i >/dev/null 2>&1"
fi
say "running the Windows suite under $(in_chroot wine --version 2>/dev/null)"
# The suite's report goes to a file (the terminal would add its escape sequences) and
# is printed after; its last line is `N passed, M failed`.
status=0
in_chroot sh -c "cd /src/fcgihost/target/$target/release && rm -f winsuite.out && env $wine_env TERM=dumb \
    timeout 900 script -qec 'wine winsuite.exe fcgihost.exe winworker.exe >winsuite.out 2>&1' /dev/null \
    </dev/null >/dev/null 2>&1" || status=$?
run_root cat "$root/src/fcgihost/target/$target/release/winsuite.out" || status=1
say "done in $(( $(date +%s) - started )) s"
exit "$status"
