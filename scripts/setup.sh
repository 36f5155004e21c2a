#!/usr/bin/env bash
# Installs everything emsan's tests and benchmarks need on a fresh Debian machine, then emsan itself.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# emsan's engine (engine/: Unicorn built at `pip install .` with our patches) needs cmake, make, patch, a C compiler.
command -v cmake >/dev/null || need+=(cmake)
command -v make >/dev/null || need+=(make)
command -v patch >/dev/null || need+=(patch)
command -v gcc >/dev/null || need+=(gcc)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v clang >/dev/null || need+=(clang)
command -v ld.lld >/dev/null || need+=(lld)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v valgrind >/dev/null || need+=(valgrind)
command -v g++ >/dev/null || need+=(g++)
command -v afl-fuzz >/dev/null || need+=(afl++)
# The real programs tests/test_real_programs.py runs (python3, coreutils, grep, sed, tar, gzip and
# iconv come with Debian itself), and the tools tests/test_report_frames.py compares with.
for tool in sqlite3:sqlite3 jq:jq bc:bc lua5.4:lua5.4 xz:xz-utils bzip2:bzip2 perl:perl mawk:mawk \
            addr2line:binutils aarch64-linux-gnu-addr2line:binutils-aarch64-linux-gnu; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's arm64 builds of those programs, for the same tests under emsan and qemu-aarch64.
bash scripts/arm64-root.sh tests/guest/build/arm64-root
python3 -m pip install -q --disable-pip-version-check ".[test]"
