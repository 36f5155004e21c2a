#!/usr/bin/env bash
# Installs emsan, builds the bundled example and runs it under emsan.
set -euo pipefail
cd "$(dirname "$0")/.."
# `pip install .` builds emsan's engine (Unicorn with our patches): it needs cmake, make, patch and gcc.
need=()
for tool in cmake make patch gcc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check .
out="${TMPDIR:-/tmp}/emsan-demo"
gcc -O1 -g -fno-omit-frame-pointer -o "$out" examples/demo.c
set +e
emsan run "$out"
status=$?
echo "emsan exit status: $status"
