"""The attach API (`import emsan; emsan.attach(uc, ...)`) on harnesses written with unicorn's own
API: examples/attach_shared_lib.py (a bare function in a shared library, its malloc/free imports
pointed at emsan) and examples/attach_firmware.py (a raw firmware-like blob with its own
allocator), on both architectures, by hand and under afl-fuzz.

Oracles: the source line of the faulty access (found in the C source by its text), the sizes
the inputs declare, and the firmware's symbol table as `nm` prints it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COMPILERS, ForkServerClient, assert_no_internal_error, have, source_line

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OBJCOPY = {"x86_64": "objcopy", "arm64": "aarch64-linux-gnu-objcopy"}
NM = {"x86_64": "nm", "arm64": "aarch64-linux-gnu-nm"}


def shared_lib(arch: str, tmp_path) -> str:
    out = tmp_path / f"libattach-{arch}.so"
    subprocess.run([COMPILERS[arch], "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(out),
                    str(EXAMPLES / "attach_lib.c")], check=True, capture_output=True)
    return str(out)


def firmware(arch: str, tmp_path) -> tuple[str, str]:
    elf, blob = tmp_path / f"fw-{arch}.elf", tmp_path / f"fw-{arch}.bin"
    subprocess.run([COMPILERS[arch], "-O1", "-g", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
                    "-Wl,-Ttext=0x10000", "-Wl,-e,handle_packet", "-Wl,--build-id=none", "-o", str(elf),
                    str(EXAMPLES / "attach_fw.c")], check=True, capture_output=True)
    if not have(OBJCOPY[arch]):
        pytest.skip(f"{OBJCOPY[arch]} is not installed")
    subprocess.run([OBJCOPY[arch], "-O", "binary", str(elf), str(blob)], check=True)
    return str(blob), str(elf)


def example(name: str, *args: str, status: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run an example harness; it must not fail inside emsan and must exit with `status`."""
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, timeout=timeout)
    assert_no_internal_error(p)
    assert p.returncode == status, p.stderr.decode(errors="replace")[-3000:]
    return p


def harness_module():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import attach_shared_lib
    finally:
        sys.path.pop(0)
    return attach_shared_lib


@pytest.mark.parametrize("checks", ["inline", "mmio", "hook"])
def test_shared_library_harness(arch, checks, tmp_path):
    lib = shared_lib(arch, tmp_path)
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    ok.write_bytes(b"\x04abcd")                   # declares 4 bytes, sends 4
    bad.write_bytes(b"\x04abcdef")                # declares 4 bytes, sends 6
    example("attach_shared_lib.py", "--checks", checks, lib, str(ok), status=0)
    err = example("attach_shared_lib.py", "--checks", checks, lib, str(bad), status=99).stderr.decode()
    line = source_line("examples/attach_lib.c", "overflow")
    assert re.search(rf"BUG: KASAN: slab-out-of-bounds in parse_message\+0x[0-9a-f]+/0x[0-9a-f]+ attach_lib.c:{line}\n"
                     r"Write of size 1 at addr ", err), err
    assert "allocated 4-byte region" in err and "located 0 bytes to the right of" in err
    assert "parse_message+" in err.split("Allocated by task")[1].split("\n\n")[0]


def test_attach_api_objects(arch, tmp_path):
    """In process: ReportError with a Report object; on_report for every bad access instead."""
    import emsan
    mod = harness_module()
    lib = shared_lib(arch, tmp_path)
    h = mod.Harness(lib)
    h.parse(b"\x08" + b"x" * 8)                    # fits: no report
    buf = h.san.place(b"\x02abc")                  # 3 bytes arrive after a 2-byte declaration
    with pytest.raises(emsan.ReportError) as ei:
        h.call("parse_message", buf, 4)
    r = ei.value.report
    assert (r.bug_type, r.access, r.size, r.function) == ("slab-out-of-bounds", "write", 1, "parse_message")
    assert r.json["object"]["size"] == 2 and r.json["object"]["offset"] == 2
    assert r.frames[0]["function"] == "parse_message" and r.text.startswith("=" * 66)
    h.parse(b"\x03abc")                            # the engine goes on after a report
    assert len(h.san.reports) == 1

    seen = []
    h2 = mod.Harness.__new__(mod.Harness)
    h2.uc = mod.make_engine(lib)
    h2.arch, h2.exports, h2.code = mod.load_library(h2.uc, lib)
    h2.san = emsan.attach(h2.uc, h2.arch, allocator={"malloc": mod.STUBS, "free": mod.STUBS + 0x10},
                          modules=[(lib, mod.LIB_BASE)], on_report=seen.append)
    h2.parse(b"\x01abc")                           # two bytes too many: reported as they happen, run goes on
    assert [x.bug_type for x in seen] == ["slab-out-of-bounds"] * 2
    assert [x.json["object"]["offset"] for x in seen] == [1, 2]


def test_firmware_blob(arch, tmp_path):
    blob, elf = firmware(arch, tmp_path)
    syms = {ln.split()[2]: int(ln.split()[0], 16) for ln in
            subprocess.run([NM[arch], elf], capture_output=True, text=True, check=True).stdout.splitlines()
            if len(ln.split()) == 3}
    packets = tmp_path / "packets"
    packets.write_text("4f\n4b" + "11" * 16 + "\n")            # open, key: fine
    example("attach_firmware.py", blob, elf, str(packets), status=0)
    packets.write_text("4f\n43\n4b" + "11" * 16 + "\n")        # open, close, key: use after free
    err = example("attach_firmware.py", blob, elf, str(packets), status=99).stderr.decode()
    use = source_line("examples/attach_fw.c", "uaf")
    alloc = source_line("examples/attach_fw.c", "alloc")
    free = source_line("examples/attach_fw.c", "free")
    assert re.search(rf"BUG: KASAN: slab-use-after-free in handle_packet\+0x[0-9a-f]+/0x[0-9a-f]+ attach_fw.c:{use}\n"
                     r"Write of size 1 at addr [0-9a-f]+ by task firmware/", err), err
    assert f"attach_fw.c:{alloc}" in err.split("Allocated by task")[1].split("\n\n")[0]
    assert f"attach_fw.c:{free}" in err.split("Freed by task")[1].split("\n\n")[0]
    assert "located 4 bytes inside of" in err and "freed 20-byte region" in err
    pc = int(re.search(r"handle_packet\+0x([0-9a-f]+)/", err).group(1), 16) + syms["handle_packet"]
    assert syms["handle_packet"] < pc < syms["handle_packet"] + 0x200


def firmware_module():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import attach_firmware
    finally:
        sys.path.pop(0)
    return attach_firmware


# Every mode for each architecture, and the bug type of a use-after-free it reports (KFENCE's
# title names the access)
FIRMWARE_MODES = {"x86_64": [("generic", "slab-use-after-free"), ("generic-hook", "slab-use-after-free"),
                             ("kfence", "use-after-free write")],
                  "arm64": [("generic", "slab-use-after-free"), ("generic-hook", "slab-use-after-free"),
                            ("sw-tags", "slab-use-after-free"), ("hw-tags", "slab-use-after-free"),
                            ("kfence", "use-after-free write")]}


@pytest.mark.parametrize("arch,mode,bug", [(a, m, b) for a, ms in FIRMWARE_MODES.items() for m, b in ms])
def test_firmware_in_every_mode(arch, mode, bug, tmp_path):
    """The attach API reaches every mode through the mode table: the firmware's use-after-free is
    reported with its access, object and stacks at the lines the source marks, and the session
    closed and reopened is no bug."""
    import emsan
    if not have(COMPILERS[arch]):
        pytest.skip(f"{COMPILERS[arch]} is not installed")
    blob, elf = firmware(arch, tmp_path)
    fw = firmware_module().Firmware(blob, elf, mode)
    key = b"K" + bytes(range(1, 17))
    for pkt in (b"O", key, b"C", b"O", key):
        fw.packet(pkt)
    fw.packet(b"C")
    with pytest.raises(emsan.ReportError) as ei:
        fw.packet(key)
    r = ei.value.report
    assert (r.bug_type, r.access, r.function) == (bug, "write", "handle_packet")
    assert r.frames[0]["line"] == source_line("examples/attach_fw.c", "uaf")
    obj = r.json["object"]
    assert obj["size"] == 20 and obj["offset"] == 4                 # key[0], after `int state`
    assert obj["alloc_stack"][0]["line"] == source_line("examples/attach_fw.c", "alloc")
    assert obj["free_stack"][0]["line"] == source_line("examples/attach_fw.c", "free")
    assert r.text.startswith("=" * 66) and f"BUG: {'KFENCE' if mode == 'kfence' else 'KASAN'}: " in r.text
    assert len(fw.san.reports) == 1


def test_attach_refuses_what_cannot_work(tmp_path):
    import unicorn
    import emsan
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    for kw, msg in (({"mode": "sw-tags"}, "needs an arm64 engine"), ({"mode": "nope"}, "no mode 'nope'"),
                    ({"mode": "kfence"}, "name its entry points"), ({"sample_rate": 3}, "no option sample_rate")):
        with pytest.raises(emsan.EmsanError, match=msg):
            emsan.attach(uc, "x86_64", **kw)


def test_import_emsan_first_gives_the_harness_emsans_engine():
    """`import emsan; import unicorn`: the harness's Uc runs on emsan's libunicorn; the other order
    is refused at attach with emsan's one-line error, not a run on the wheel's library."""
    from emsan.machine import unicorn_lib
    first = ("import emsan, unicorn\n"
             "from unicorn.unicorn_py3.unicorn import uclib\n"
             "print(uclib._name)")
    p = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).resolve() == unicorn_lib.LIBRARY.resolve()
    late = ("import unicorn, emsan\n"
            "uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)\n"
            "try:\n    emsan.attach(uc, 'x86_64')\n"
            "except emsan.EmsanError as e:\n    print('refused:', e)\n")
    p = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.startswith("refused: unicorn was imported before emsan") and p.stdout.count("\n") == 1


FUZZ_MODES = {"x86_64": ["generic", "generic-hook", "kfence"], "arm64": ["generic", "sw-tags", "hw-tags", "kfence"]}


@pytest.mark.parametrize("arch,mode", [(a, m) for a, ms in FUZZ_MODES.items() for m in ms])
def test_firmware_fuzz_persistent(arch, mode, tmp_path):
    """A harness's fuzz(persistent=N) under a fork server: one child takes many inputs, the engine
    and emsan going back to the fork point after each. The session --setup opened before it
    is open again after an input closed it (no false use-after-free, no false double free); a
    close then a key in one input is the use-after-free, a crash; the next input runs in a new
    child. Oracle: the firmware's source."""
    if not have(COMPILERS[arch]):
        pytest.skip(f"{COMPILERS[arch]} is not installed")
    blob, elf = firmware(arch, tmp_path)
    cur = tmp_path / "cur"
    afl = ForkServerClient([sys.executable, str(EXAMPLES / "attach_firmware.py"), "--mode", mode, "--fuzz",
                            "--persistent", "50", "--setup", "4f", blob, elf, str(cur)], cur)
    key = b"K" + bytes(range(11, 27))
    try:
        runs = [afl.run(d) for d in (b"C", key, b"C", b"C", key, b"O\nC\nO", key)]
        assert [s for _, s in runs] == [0] * len(runs) and len({p for p, _ in runs}) == 1
        pid, status = afl.run(b"C\n" + key)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
        pid2, status = afl.run(key)
        assert pid2 != pid and status == 0
        assert any(afl.map())                    # the children wrote coverage
    finally:
        afl.close()
    err = afl.stderr()
    assert "slab-use-after-free" in err or "use-after-free write" in err
    assert f"attach_fw.c:{source_line('examples/attach_fw.c', 'uaf')}" in err


@pytest.mark.skipif(not have("afl-fuzz"), reason="AFL++ (afl-fuzz) is not installed")
def test_attach_harness_under_afl(tmp_path):
    """A report in a harness of one's own is a crash for AFL++, and it finds it."""
    from emsan.cli.fuzz import AFL_ENV
    lib = shared_lib("x86_64", tmp_path)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "a").write_bytes(b"\x04abcd")
    out = tmp_path / "out"
    cmd = ["afl-fuzz", "-i", str(seeds), "-o", str(out), "-m", "none", "-t", "5000", "-E", "400", "-V", "60",
           "-s", "1", "--", sys.executable, str(EXAMPLES / "attach_shared_lib.py"), lib]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, **AFL_ENV}, start_new_session=True)
    try:
        p.wait(timeout=180)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    stats = (out / "default" / "fuzzer_stats").read_text()
    crashes = [c for c in os.listdir(out / "default" / "crashes") if c.startswith("id:")]
    assert crashes, stats
    for c in crashes:                            # each reproduces by hand as a report
        data = (out / "default" / "crashes" / c).read_bytes()
        assert len(data) - 1 > data[0]           # more bytes than declared: the overflow
        r = example("attach_shared_lib.py", lib, str(out / "default" / "crashes" / c), status=99)
        assert b"slab-out-of-bounds in parse_message" in r.stderr
