"""Running real programs: static, static-PIE and dynamic, on both architectures."""
from __future__ import annotations

import pytest

from conftest import build, emsan, native

LINKS = {"x86_64": ["static", "static-pie", "dynamic"], "arm64": ["static", "dynamic"]}


@pytest.mark.parametrize("link", ["static", "static-pie", "dynamic"])
def test_hello_matches_native(arch, link):
    if link not in LINKS[arch]:
        pytest.skip(f"{link} not built for {arch}")
    exe = build("hello", arch, link)
    env = {"EMSAN_TEST_VAR": "from-env", "PATH": "/usr/bin:/bin"}
    ref = native(exe, "a b", "7", arch=arch, env=env)
    got = emsan("run", "--mode", "none", exe, "a b", "7", env=env)
    assert got.stdout == ref.stdout
    assert got.returncode == ref.returncode == 7
    assert b"Traceback" not in got.stderr


def test_env_options(arch):
    exe = build("hello", arch, "static")
    got = emsan("run", "--mode", "none", "--env", "EMSAN_TEST_VAR=set-by-flag", exe)
    assert b"EMSAN_TEST_VAR=set-by-flag" in got.stdout
    got = emsan("run", "--mode", "none", "--unset-env", "EMSAN_TEST_VAR", exe,
                env={"EMSAN_TEST_VAR": "x", "PATH": "/usr/bin:/bin"})
    assert b"EMSAN_TEST_VAR=(unset)" in got.stdout
