#!/usr/bin/env bash
# Installs emsan, builds the bundled example and runs it under emsan.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check .
out="${TMPDIR:-/tmp}/emsan-demo"
gcc -O1 -g -fno-omit-frame-pointer -o "$out" examples/demo.c
set +e
emsan run "$out"
status=$?
echo "emsan exit status: $status"
