#!/usr/bin/env bash
# Builds an arm64 Debian root holding the real programs tests/test_real_programs.py runs on arm64
# (python3, sqlite3, perl, lua, jq, bc, gzip, xz, bzip2, sort, grep, sed, awk, tar, iconv; dash and
# xargs for tests/test_processes.py) with
# every library they need: Debian's own arm64 packages, fetched with apt and unpacked with dpkg -x.
# emsan runs them with --sysroot DIR, qemu-aarch64 with -L DIR. libc6-dbg puts the C library's
# separate debug files under DIR/usr/lib/debug, where emsan finds them by build-id (the x86-64
# runs go without: both ways of finding the string routines are exercised).
#
#     bash scripts/arm64-root.sh DIR
set -euo pipefail
ROOT=${1:?usage: arm64-root.sh DIR}
PKGS=(python3.11-minimal libpython3.11-stdlib sqlite3 perl-base lua5.4 jq bc gzip xz-utils bzip2 coreutils
      grep sed mawk tar libc-bin libc6-dbg dash findutils)
STAMP="$ROOT/.emsan-root"
WANT="${PKGS[*]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT merged-usr" ]; then
    exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
if ! ls /var/lib/apt/lists/*binary-arm64_Packages* >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
# The arm64 packages of the dependency closure (arch-all data packages are not needed).
mapfile -t DEBS < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "${PKGS[@]/%/:arm64}" 2>/dev/null \
    | grep -E '^[a-z0-9][a-z0-9.+-]*:arm64$' | grep -vx 'dpkg:arm64' | sort -u)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -qq "${DEBS[@]}" 2>/dev/null)
rm -rf "$ROOT.tmp"
mkdir -p "$ROOT.tmp"
for deb in "$WORK"/*.deb; do
    dpkg -x "$deb" "$ROOT.tmp"
done
# Debian's merged /usr: /usr/bin/echo is /bin/echo (programs exec /usr/bin/... by PATH).
for d in bin sbin; do
    [ -d "$ROOT.tmp/$d" ] || continue
    mkdir -p "$ROOT.tmp/usr/$d"
    for f in "$ROOT.tmp/$d"/*; do
        [ -e "$ROOT.tmp/usr/$d/${f##*/}" ] || ln -s "../../$d/${f##*/}" "$ROOT.tmp/usr/$d/${f##*/}"
    done
done
echo "$WANT merged-usr" > "$ROOT.tmp/.emsan-root"
rm -rf "$ROOT"
mv "$ROOT.tmp" "$ROOT"
echo "arm64 root with ${#DEBS[@]} packages in $ROOT"
