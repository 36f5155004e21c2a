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
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check ".[test]"
