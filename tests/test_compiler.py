"""Compiler-assisted mode: guests built with clang $(emsan cflags) (-fsanitize=kernel-address and
emsan's runtime header), inline and outline, on x86-64 and arm64. The stack, global and alloca
cases of the kernel's KASAN suite (tests/guest/kasan_stack_global.c) are reported with the
kernel's titles and frame or variable descriptions; the heap cases (tests/guest/kasan_cases.c)
give hook-based generic mode's reports (tests/test_kasan.py), except where the instrumentation
sees the access differently than Unicorn's memory hooks do (CC_HEAP below)."""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import BUILD, EXIT_REPORT, GUEST, build, emsan, have, native, run_report, source_line, tail
from test_bad_input import assert_bad_input
from test_kasan import EXPECTED, SUAF, VIA, R, W, check_case, status_after
from test_string_families import LENGTHS, NARROW, WIDE, expected as one_past_the_end

RUNTIME = Path(__file__).resolve().parent.parent / "src" / "emsan" / "runtime" / "kasan_runtime.h"
VARIANTS = [("x86_64", "inline"), ("x86_64", "outline"), ("arm64", "inline"), ("arm64", "outline")]
MODE = "compiler-assisted"
COMM = "kasan_stack_global"[:15]          # the kernel's TASK_COMM_LEN


def cflags(arch: str, outline: bool) -> list[str]:
    """What `emsan cflags` prints, used as a build would use it."""
    res = emsan("cflags", "--arch", arch, *(["--outline"] if outline else []))
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().split()


def build_cc(name: str, arch: str, variant: str = "inline", link: str = "static",
             flags: tuple[str, ...] = ()) -> str:
    """tests/guest/<name>.c built with clang $(emsan cflags ...), once per configuration."""
    if not have("clang"):
        pytest.skip("clang is not installed")
    if arch == "arm64" and not os.path.isdir("/usr/aarch64-linux-gnu"):
        pytest.skip("no arm64 sysroot (/usr/aarch64-linux-gnu)")
    src = GUEST / f"{name}.c"
    out = BUILD / f"cc-{arch}-{link}-{variant}{''.join(flags).replace('-', '_')}" / name
    newest = max(src.stat().st_mtime, RUNTIME.stat().st_mtime)
    if out.exists() and out.stat().st_mtime >= newest:
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["clang", *cflags(arch, variant == "outline"), "-O1", "-g", "-fno-omit-frame-pointer",
           *(["-static"] if link == "static" else []), *flags, "-o", str(out) + ".tmp", str(src)]
    subprocess.run(cmd, check=True, capture_output=True)
    os.replace(str(out) + ".tmp", out)
    return str(out)


def run_case(exe: str, case: str, tmp: Path, *extra: str, status: int = 0
             ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    return run_report(tmp / f"{Path(exe).parent.name}-{case}.json", "--continue", *extra, exe, case, status=status)


def run_all(exe: str, cases, tmp: Path, expected: dict) -> dict:
    """Each case run once (--continue), with the exit status its expected reports give."""
    with ThreadPoolExecutor(2) as pool:
        futs = {c: pool.submit(run_case, exe, c, tmp, status=status_after(expected[c])) for c in cases}
        return {c: f.result() for c, f in futs.items()}


# --- stack, global and alloca (anchors.md §4.1 cases 56-60) ----------------------------------------
STACK_GLOBAL = {
    # case: (bug type, access, size, what the address belongs to)
    "kasan_global_oob_right": ("global-out-of-bounds", "read", 1, ("variable", "global_array", 13, 10)),
    # 3 bytes before global_array: the right redzone of the variable laid out before it
    "kasan_global_oob_left": ("global-out-of-bounds", "read", 1, ("variable", "global_before", 0x1d, 10)),
    "kasan_stack_oob": ("stack-out-of-bounds", "read", 1, ("frame", "kasan_stack_oob", 42, (32, 42, "stack_array"))),
    "kasan_alloca_oob_left": ("alloca-out-of-bounds", "read", 1, ("stack",)),
    "kasan_alloca_oob_right": ("alloca-out-of-bounds", "read", 1, ("stack",)),
    "kasan_stack_oob_write": ("stack-out-of-bounds", "write", 4,
                              ("frame", "kasan_stack_oob_write", 80, (64, 80, "counts"))),
    # a heap overflow in a function built without instrumentation: no memory hook sees it
    "uninstrumented_heap_oob": None,
    # stack reused after a longjmp out of instrumented frames: no stale redzones
    "longjmp_out_of_frames": None,
    "clean_run": None,
}


@pytest.fixture(scope="module")
def stack_global(tmp_path_factory):
    """All the cases in one run per configuration (--continue), reports split by function."""
    cache = {}

    def get(arch: str, variant: str):
        if (arch, variant) not in cache:
            exe = build_cc("kasan_stack_global", arch, variant)
            out = tmp_path_factory.mktemp(f"sg-{arch}-{variant}") / "r.json"
            res, reports = run_report(out, "--continue", exe, *STACK_GLOBAL, status=EXIT_REPORT)
            text = res.stderr.decode(errors="replace")
            assert res.stdout.startswith(b"clean ")
            # one report per bug case, in order, and the text has exactly those
            assert [r["function"] for r in reports] == [c for c, w in STACK_GLOBAL.items() if w], text[-3000:]
            blocks = text.split("=" * 66 + "\n")[1::2]
            assert len(blocks) == len(reports)
            cache[arch, variant] = {r["function"]: (r, b) for r, b in zip(reports, blocks)}
        return cache[arch, variant]
    return get


@pytest.mark.parametrize("arch,variant", VARIANTS)
@pytest.mark.parametrize("case", list(STACK_GLOBAL))
def test_stack_global_alloca(arch, variant, case, stack_global):
    got = stack_global(arch, variant)
    want = STACK_GLOBAL[case]
    if want is None:
        assert case not in got
        return
    bug, access, size, where = want
    r, text = got[case]
    assert (r["mode"], r["bug_type"], r["access"], r["size"], r["function"]) == (MODE, bug, access, size, case)
    assert r["stack"][0]["function"] == case and r["stack"][1]["function"] == "main"
    assert r["stack"][0]["line"] == source_line("kasan_stack_global.c", case)
    assert f"BUG: KASAN: {bug} in {case}+0x" in text
    assert f"{access.capitalize()} of size {size} at addr {int(r['address'], 16):016x} by task {COMM}/" in text
    assert f"({MODE} mode)" in text
    if where[0] == "variable":
        _, name, offset, var_size = where
        assert (r["variable"]["name"], r["variable"]["offset"], r["variable"]["size"]) == (name, offset, var_size)
        assert r["variable"]["file"].endswith("kasan_stack_global.c")
        assert f"The buggy address belongs to the variable:\n {name}+{offset:#x}/{var_size:#x}\n" in text
        assert "f9" in r_shadow(r)
    else:
        assert f"The buggy address belongs to stack of task {COMM}/" in text
        so = r["stack_object"]
        if where[0] == "frame":
            _, fn, offset, obj = where
            objs = [(o["start"], o["end"], o["name"]) for o in so["objects"]]
            assert so["offset"] == offset and so["frame"]["function"] == fn and obj in objs, so
            n = len(objs)
            assert (f" and is located at offset {offset} in frame:\n {fn}+0x0/" in text
                    and f"\n\nThis frame has {n} object{'s' if n > 1 else ''}:\n" in text
                    and f"\n [{obj[0]}, {obj[1]}) '{obj[2]}'" in text), text[-2000:]
            assert "f1" in r_shadow(r)
        else:
            # Allocas sit below the frame's fixed part: no frame above them to describe (as the kernel).
            assert so is None and " in frame:" not in text
            assert {"ca", "cb"} & set(r_shadow(r).split())


def r_shadow(rep: dict) -> str:
    return " ".join(f"{b:02x}" for row in rep["shadow"] for b in row["bytes"] if b is not None)


# --- heap cases: the same reports as hook-based generic mode -----------------------------------------
# The instrumentation checks accesses as the source writes them, where Unicorn's hooks see what the
# CPU does: a 16-byte struct copy is one 16-byte access (as in the kernel), and the compiler checks
# an address once per basic block (LLVM's asan-opt-same-temp): the atomics' word is checked once
# for reading (READ_ONCE) and once for writing, at the compare-and-swap that starts a new block,
# and the bitops' once, at set_bit (objdump -d shows the checks).
CC_HEAP = dict(EXPECTED)
CC_HEAP.update({
    "kmalloc_oob_16": [W(0, "oob_16", 16)],
    "kmalloc_uaf_16": [R(0, "uaf_16", 16, SUAF)],
    "kasan_bitops_generic": [W(8, "bitops.set", 8)],
    "kasan_atomics": [R(48, "atomics.read_once", 4), W(48, "atomics.cmpxchg", 4)],
})
# The access stacks of this mode come from the frame-pointer walk (README): x86-64 libc's
# explicit_bzero keeps no frame record and hides its caller, so the trace of its memset has no
# guest frame (arm64's keeps the caller through the link register).
CC_LOST = {"x86_64": frozenset({"kzfree.1"}), "arm64": frozenset()}


def cc_frames_before(arch: str, marker: str) -> int:
    """clang copies the 16-byte structs with memcpy (an interceptor) and inlines its atomics."""
    return 1 if marker in ("oob_16", "uaf_16") else VIA.get(marker, 0)
HEAP_SUBSET = ["kmalloc_oob_right", "kmalloc_oob_left", "kmalloc_large_uaf", "kmalloc_large_invalid_free",
               "krealloc_uaf", "kmalloc_oob_16", "kmalloc_oob_memset_8", "kmalloc_memmove_negative_size",
               "kmalloc_uaf2", "kmalloc_double_kzfree", "kasan_strings", "copy_user_test_oob", "clean_run"]
HEAP_VARIANTS = [("x86_64", "inline", list(CC_HEAP)), ("arm64", "inline", list(CC_HEAP)),
                 ("x86_64", "outline", list(CC_HEAP)), ("arm64", "outline", HEAP_SUBSET)]


@pytest.fixture(scope="module")
def heap_results(tmp_path_factory):
    cache = {}

    def get(arch: str, variant: str, cases: list[str]):
        if (arch, variant) not in cache:
            exe = build_cc("kasan_cases", arch, variant, flags=("-fno-builtin",))
            cache[arch, variant] = run_all(exe, cases, tmp_path_factory.mktemp(f"heap-{arch}-{variant}"), CC_HEAP)
        return cache[arch, variant]
    return get


@pytest.mark.parametrize("arch,variant,case", [(a, v, c) for a, v, cases in HEAP_VARIANTS for c in cases])
def test_heap_cases_match_generic(arch, variant, case, heap_results):
    cases = next(cs for a, v, cs in HEAP_VARIANTS if (a, v) == (arch, variant))
    res, reports = heap_results(arch, variant, cases)[case]
    check_case(arch, case, res, reports, CC_HEAP[case], lost=CC_LOST[arch], frames_before=cc_frames_before)
    assert all(r["mode"] == MODE for r in reports)


# --- the mode itself ----------------------------------------------------------------------------------
def test_report_text_and_default_exit(tmp_path):
    """Chosen automatically (no --mode), stops at the first report with the usual exit status."""
    exe = build_cc("kasan_stack_global", "x86_64")
    res = emsan("run", exe, "kasan_stack_oob", status=99)
    text = res.stderr.decode()
    assert text.count("BUG: KASAN:") == 1
    lines = text.splitlines()
    i = lines.index("=" * 66)
    assert lines[i + 1].startswith("BUG: KASAN: stack-out-of-bounds in kasan_stack_oob+0x")
    assert lines[i + 1].endswith(f" kasan_stack_global.c:{source_line('kasan_stack_global.c', 'kasan_stack_oob')}")
    assert lines[i + 2].startswith("Read of size 1 at addr ")
    assert "emsan " in lines[i + 4] and f"({MODE} mode)" in lines[i + 4]
    marker = [ln for ln in lines if ln.startswith(">")][0]
    caret = lines[lines.index(marker) + 1]
    assert caret.strip() == "^" and marker[caret.index("^"):caret.index("^") + 2] == "02"   # 10 bytes: 00 02


def test_dynamic_x86_64(tmp_path):
    exe = build_cc("kasan_stack_global", "x86_64", link="dynamic")
    got = {}
    for case in ("kasan_stack_oob", "kasan_global_oob_right", "clean_run"):
        res, reports = run_case(exe, case, tmp_path, status=status_after(STACK_GLOBAL[case]))
        got[case] = [(r["bug_type"], r["access"], r["function"], r["stack"][0]["line"]) for r in reports]
    line = lambda case: source_line("kasan_stack_global.c", case)     # noqa: E731
    assert got == {"kasan_stack_oob": [("stack-out-of-bounds", "read", "kasan_stack_oob", line("kasan_stack_oob"))],
                   "kasan_global_oob_right": [("global-out-of-bounds", "read", "kasan_global_oob_right",
                                               line("kasan_global_oob_right"))],
                   "clean_run": []}
    exe = build_cc("kasan_cases", "x86_64", link="dynamic", flags=("-fno-builtin",))
    res, reports = run_case(exe, "kmalloc_uaf", tmp_path, status=EXIT_REPORT)
    check_case("x86_64", "kmalloc_uaf", res, reports, EXPECTED["kmalloc_uaf"])


def test_none_runs_the_instrumented_binary_on_a_bare_shadow():
    """--mode none: the shadow is mapped (the program cannot run without it) and nothing else."""
    exe = build_cc("kasan_stack_global", "x86_64")
    res = emsan("run", "--mode", "none", exe, "kasan_stack_oob", status=0)
    assert res.stderr == b""
    res = emsan("run", "--mode", "none", exe, "clean_run", status=0)
    assert res.stdout.startswith(b"clean ")


def test_cflags():
    for arch in ("x86_64", "arm64"):
        flags = cflags(arch, False)
        assert "-fsanitize=kernel-address" in flags
        # The installed copy of the runtime header (site-packages, or this tree when editable).
        header = Path(flags[flags.index("-include") + 1])
        assert header.is_absolute() and header.read_bytes() == RUNTIME.read_bytes()
        assert "-asan-mapping-offset=0x100000000000" in flags and "-asan-stack=1" in flags
        assert "-asan-globals=1" in flags
        assert "-asan-instrumentation-with-call-threshold=0" not in flags
        assert "-asan-instrumentation-with-call-threshold=0" in cflags(arch, True)
    import platform
    if platform.machine() == "x86_64":
        assert "--target=aarch64-linux-gnu" in cflags("arm64", False)
        assert not any(f.startswith("--target") for f in cflags("x86_64", False))


def test_bad_input(tmp_path):
    res = emsan("cflags", "--arch", "mips", status=2)
    assert b"invalid choice" in res.stderr
    plain = shutil.which("true")
    assert_bad_input(emsan("run", "--mode", MODE, plain), "not built for compiler-assisted mode", "emsan cflags")
    exe = build_cc("kasan_stack_global", "x86_64")
    assert_bad_input(emsan("run", "--mode", "kfence", exe, "clean_run"), "built for compiler-assisted mode", "kfence")


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_stale_shadow_mapping_is_rechecked(arch):
    """seeds/002's stale mapping: objects arrive in a heap chunk whose shared "no object" shadow
    page the guest's TLB still maps; the failed check is re-checked against the current shadow,
    not reported."""
    exe = build_cc("stale_shadow", arch)
    # (the objects the loop drops are true leaks, not this test's subject)
    res = emsan("run", "--continue", "--stats", "--no-leaks", exe, status=EXIT_REPORT)
    text = res.stderr.decode(errors="replace")
    assert res.stdout == b"new object 0\n"
    assert text.count("BUG: KASAN: ") == 1, text
    assert "BUG: KASAN: slab-out-of-bounds in read_far" in text, text
    stats = dict(kv.split("=") for kv in text.split("emsan: stats: ")[1].splitlines()[0].split(", "))
    assert int(stats["stale_rechecks"]) >= 1, stats


MEMINTRINSICS = ("wmemcpy", "wmemmove", "wmempcpy", "wmemset")


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_memintrinsics_run_by_the_guest(arch, tmp_path):
    """The kernel's memintrinsics: in this mode a memcpy, memmove, mempcpy or memset (and the wide
    twins) whose ranges are good is checked once and then run by the guest's own routine
    (cc_guest_routines counts them), with the native results; one past the end is still
    reported once per call, with the range the function was entitled to touch, as in generic
    mode (tests/test_string_families.py)."""
    exe = build_cc("string_families", arch, flags=("-fno-builtin",))
    ref = native(build("string_families", arch, "static", ("-fno-builtin",)), "ok", arch=arch)
    assert ref.returncode == 0 and len(ref.stdout.splitlines()) == 27
    res = emsan("run", "--stats", exe, "ok", status=0)
    assert res.stdout == ref.stdout
    text = res.stderr.decode(errors="replace")
    assert "BUG:" not in text, tail(res)
    stats = dict(kv.split("=") for kv in text.split("emsan: stats: ")[1].splitlines()[0].split(", "))
    # ok() calls each of the four 300 times (glibc's may call memcpy or memmove on: counted too)
    assert int(stats["cc_guest_routines"]) >= 4 * 300, stats
    res, reports = run_report(tmp_path / "r.json", "--continue", "--no-leaks", exe, "over", status=EXIT_REPORT)
    assert res.stdout == b"over done\n", tail(res)
    got = {}
    for r in reports:
        key = (r["function"] or "").split("_")
        got.setdefault((key[1], int(key[2])), []).append(r)
    assert set(got) == {(fn, n) for fn in WIDE + NARROW for n in LENGTHS}
    for fn in MEMINTRINSICS:
        for n in LENGTHS:
            [r] = got[fn, n]
            access, size, offset, obj_size = one_past_the_end(fn, n)
            assert (r["mode"], r["bug_type"], r["access"], r["size"], r["object"]["offset"], r["object"]["size"]) == \
                (MODE, "slab-out-of-bounds", access, size, offset, obj_size), (fn, n)
