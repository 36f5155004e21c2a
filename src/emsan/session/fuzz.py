"""One `emsan run` turned into an AFL++ target: the program is loaded, linked and run up to a fork
point (`main`, or --entry FUNCTION), then the process becomes a fork server (machine/afl.py)
and every child places one input (stdin, a file, an argument) and runs the guest on to its end.
A sanitizer report or a fatal guest signal is a crash for AFL++; the child saves the report's
text and JSON under OUT/.emsan/reports/, named by the input's SHA-1, and `emsan fuzz` puts them
next to the crashing input AFL++ keeps.

In persistent mode (--persistent FUNCTION, input "buffer") each child calls FUNCTION(buf, len)
for many inputs in turn: the input sits in a buffer from the guest's malloc (emsan's heap, with
exact redzones, in generic mode), and registers and guest memory go back to the fork point's
after every input.

The fork is the host's: the guest sees one process that runs once per input."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from dataclasses import field

from emsan.errors import EmsanError
from emsan.lazyclass import dataclass
from emsan.os.linux.process import FileDesc
from emsan.sanitizer.mode import input_seed
from emsan.session.crash import oops, oops_json
from emsan.session.options import RunOptions
from emsan.session.run import CORE_SIGNALS, Session

PLACEHOLDER = "@@"
# Where an argument input is placed: a guest region of its own, the string's end at the end of
# the region, so reading past its NUL faults at once.
ARG_INPUT_BASE = 0x0500_0000_0000
ARG_INPUT_MAX = 128 << 10              # the kernel's MAX_ARG_STRLEN
# Persistent mode: calls return to a page of their own, where a hook pauses the run.
RETURN_PAGE = 0x0500_1000_0000


@dataclass
class FuzzConfig:
    """What `emsan fuzz` writes to OUT/emsan-fuzz.json, for its targets and for triage."""
    program: str
    args: list[str]
    input: str                          # stdin / file / arg / buffer (persistent)
    run_options: list[str] = field(default_factory=list)
    entry: str = "main"
    out: str = ""
    cover: str = "program"              # program / all: whose code gives AFL++ coverage
    compcov: bool = True                # byte-wise coverage of multi-byte comparisons
    persistent: str | None = None       # FUNCTION(buf, len) called once per input (input "buffer")
    iterations: int = 1000              # inputs per forked child in persistent mode

    @classmethod
    def load(cls, path: str) -> "FuzzConfig":
        with open(path) as f:
            d = json.load(f)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def input_id(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def arg_value(data: bytes) -> str:
    """An input as one argument: up to its first NUL, as the kernel copies argv strings."""
    return data.split(b"\0", 1)[0].decode(errors="surrogateescape")


class FuzzTarget:
    def __init__(self, cfg: FuzzConfig, opts: RunOptions):
        self.cfg = cfg
        self.reports_dir = os.path.join(cfg.out, ".emsan", "reports")
        os.makedirs(self.reports_dir, exist_ok=True)
        # file input: one path per fork server, fixed in argv before the fork point
        self.input_path = os.path.join(cfg.out, ".emsan", f"input.{os.getpid()}")
        self.arg_index = next((i for i, a in enumerate(opts.args) if PLACEHOLDER in a), None)
        if cfg.input == "file":
            opts.args = [a.replace(PLACEHOLDER, self.input_path) for a in opts.args]
            open(self.input_path, "wb").close()
        self.opts = opts
        self.s = Session(opts)
        self.mode = getattr(self.s.sanitizer, "mode", None)      # the sanitizer mode (None: --mode none)
        self.data = b""

    # --- before the fork ------------------------------------------------------------------------
    def run_to_fork_point(self) -> None:
        s = self.s
        image, bias = s.loaded.image, s.loaded.bias
        from emsan.report.symbolize import module_symbols
        rel = module_symbols(image.path).address_of(self.cfg.entry)
        if rel is None:
            raise EmsanError(f"{image.path}: no function {self.cfg.entry!r} to place the fork server at "
                             "(the program needs its symbols; choose another with --entry)")
        self.fork_pc = rel + bias
        s.machine.hook_code_once(self.fork_pc, lambda: s.machine.stop("pause"))
        info = s.process.run(s.loaded.entry, None, None)
        if info.kind != "paused":
            raise EmsanError(f"{image.path}: the guest ended (status {info.status}) before reaching "
                             f"{self.cfg.entry}, where the fork server would start")
        s.symbolizer.frames(self.fork_pc)        # parse the line table once, in the parent
        if self.cfg.input == "arg":
            s.mem.map(ARG_INPUT_BASE, ARG_INPUT_BASE + ARG_INPUT_MAX + 0x1000, 3, "[emsan-input]")
        if self.cfg.persistent:
            self.prepare_persistent()

    def function(self, name: str, anywhere: bool = False) -> int | None:
        """A function's address: in the program, or (anywhere) in any module loaded so far."""
        from emsan.report.symbolize import module_symbols
        s = self.s
        mods = [m for m in s.mem.modules if anywhere or m.path == s.loaded.image.path]
        for mod in mods:
            rel = module_symbols(mod.path).address_of(name)
            if rel is not None:
                return rel + mod.base
        return None

    def prepare_persistent(self) -> None:
        s = self.s
        self.fn = self.function(self.cfg.persistent)
        if self.fn is None:
            raise EmsanError(f"{s.loaded.image.path}: no function {self.cfg.persistent!r} for --persistent")
        self.malloc, self.free = self.function("malloc", True), self.function("free", True)
        if self.malloc is None or self.free is None:
            raise EmsanError(f"{s.loaded.image.path}: no malloc/free for the input buffer of --persistent")
        s.mem.map(RETURN_PAGE, RETURN_PAGE + 0x1000, 5, "[emsan-return]")
        s.machine.hook_code(RETURN_PAGE, lambda: s.machine.stop("pause"))
        self.sp0 = s.machine.sp
        # The guest's state and the mode's go back here after every input: objects allocated
        # before this point and freed by one input are live again for the next.
        self.snap = s.machine.snapshot()
        self.mem_state = s.mem.save()
        if self.mode is not None:
            self.mode.checkpoint()

    def cover_ranges(self) -> list[tuple[int, int]]:
        """The code AFL++ sees: the program's executable mappings (qemu mode's default), or
        every module's with cover="all" (AFL_INST_LIBS)."""
        mem = self.s.mem
        paths = {m.path for m in mem.modules} if self.cfg.cover == "all" else {self.s.loaded.image.path}
        return [(mp.start, mp.end) for mp in mem.mappings if mp.prot & 4 and mp.name in paths]

    # --- in each child --------------------------------------------------------------------------
    def start_input(self, data: bytes) -> None:
        """A new input: the mode's random choices (KFENCE's sampling, tags) become its own."""
        self.data = data
        if self.mode is not None:
            self.mode.reseed(input_seed(self.opts.seed, data))

    def place_input(self, data: bytes) -> None:
        self.start_input(data)
        mode = self.cfg.input
        if mode == "file":
            with open(self.input_path, "wb") as f:
                f.write(data)
        elif mode == "stdin":
            fd = os.memfd_create("emsan-input")
            os.write(fd, data)
            os.lseek(fd, 0, 0)
            fds = self.s.process.fds
            if 0 in fds:
                os.dup2(fd, fds[0].host)
                os.close(fd)
            else:
                fds[0] = FileDesc(fd, "<stdin>")
        elif mode == "arg":
            self.place_arg(data)

    def place_arg(self, data: bytes) -> None:
        """argv[i] of the guest's main points at the input (up to its first NUL) with the rest of
        the argument around it, the NUL on the region's last byte."""
        if self.arg_index is None:
            return
        s = self.s
        tmpl = self.opts.args[self.arg_index]
        text = tmpl.replace(PLACEHOLDER, arg_value(data)).encode(errors="surrogateescape")[:ARG_INPUT_MAX - 1]
        end = ARG_INPUT_BASE + ARG_INPUT_MAX
        addr = end - len(text) - 1
        s.machine.write(addr, text + b"\0")
        argv = s.machine.reg(s.arch.args[1])          # main(argc, argv): argv[0] is the program
        s.machine.write(argv + 8 * (self.arg_index + 1), addr.to_bytes(8, "little"))

    def run_one(self) -> bool:
        """Run the guest on from the fork point; True when it crashed (a report or a fatal signal)."""
        s = self.s
        return self.verdict(s.process.run(s.machine.pc, None, self.opts.max_instructions), 0)

    def verdict(self, info, reports_before: int) -> bool:
        """Did the run crash? If so, save its report (text and JSON) by input hash."""
        s = self.s
        reports = s.reports[reports_before:]
        crash_json = crash_text = None
        if info is not None and info.kind == "signal" and info.signal in CORE_SIGNALS:
            crash_json = oops_json(s.process, info, s.symbolizer)
            crash_text = oops(s.process, info, s.symbolizer)
        if not reports and crash_json is None:
            return False
        self.last = (reports, crash_json)
        self.save(reports, crash_json, "\n".join(s.texts[reports_before:] + ([crash_text] if crash_text else [])))
        return True

    def log_error(self) -> None:
        """An emsan bug in a child of the fork server: logged (emsan fuzz says so at the end),
        never a crash of the target."""
        with open(os.path.join(self.cfg.out, ".emsan", "errors.log"), "a") as f:
            f.write(f"input {input_id(self.data)}:\n{traceback.format_exc()}\n")

    # --- persistent mode ------------------------------------------------------------------------
    def call(self, addr: int, args: list[int]):
        """Call a guest function from the fork point's stack; its return value, or the ExitInfo
        of a run that ended otherwise (a report, a signal, an exit)."""
        s = self.s
        s.machine.sp = self.sp0
        s.arch.setup_call(s.machine, args, RETURN_PAGE)
        info = s.process.run(addr, None, self.opts.max_instructions)
        return s.machine.reg(s.arch.ret) if info.kind == "paused" else info

    def run_persistent(self, data: bytes) -> str:
        """One input through FUNCTION(buf, len): "crash", "ok", or "ended" (the guest exited,
        this child can take no more inputs)."""
        s = self.s
        self.start_input(data)
        before = len(s.reports)
        buf = self.call(self.malloc, [len(data)])
        if not isinstance(buf, int) or buf == 0:
            raise RuntimeError(f"malloc({len(data)}) for the input failed: {buf}")
        s.machine.write(buf, data)
        ret = self.call(self.fn, [buf, len(data)])
        if isinstance(ret, int):
            ret = self.call(self.free, [buf])
        if not isinstance(ret, int):
            return "crash" if self.verdict(ret, before) else "ended"
        if self.verdict(None, before):
            return "crash"
        if self.mode is not None:
            self.mode.rollback()
        s.machine.restore_snapshot(self.snap)
        s.mem.restore(self.mem_state)
        return "ok"

    def run_inputs(self, server, input_path: str | None, many: bool) -> bool:
        """This child's inputs (persistent mode: up to cfg.iterations of them when `many`);
        True when one crashed."""
        if not self.cfg.persistent:
            self.place_input(server.input(input_path))
            return self.run_one()
        for i in range(self.cfg.iterations if many else 1):
            if i and not server.next():
                break
            outcome = self.run_persistent(server.input(input_path))
            if outcome != "ok":
                return outcome == "crash"
        return False

    def save(self, reports: list[dict], crash: dict | None, text: str) -> None:
        base = os.path.join(self.reports_dir, input_id(self.data))
        if os.path.exists(base + ".emsan.json"):
            return
        doc: dict = {"tool": "emsan", "reports": reports}
        if crash is not None:
            doc["crash"] = crash
        for ext, body in ((".emsan.txt", text + "\n"), (".emsan.json", json.dumps(doc, indent=2))):
            tmp = f"{base}{ext}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(body)
            os.replace(tmp, base + ext)


def main(argv: list[str] | None = None) -> int:
    """`python -m emsan.session.fuzz CONFIG [INPUT] [--json FILE]`: the process afl-fuzz starts.
    Inputs come through AFL++'s shared memory (or the file INPUT); without AFL++ it runs INPUT
    once (triage does that), writes the reports to FILE, and exits as `emsan run` would."""
    import argparse
    from emsan.cli.main import guarded

    ap = argparse.ArgumentParser(prog="python -m emsan.session.fuzz")
    ap.add_argument("config")
    ap.add_argument("input", nargs="?")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: serve(FuzzConfig.load(a.config), a.input, a.json_path))


def serve(cfg: FuzzConfig, input_path: str | None, json_path: str | None) -> int:
    """Run to the fork point and serve AFL++ from there (each child runs its inputs and exits);
    without AFL++, run the input in input_path once."""
    from emsan.cli.main import build_parser, run_options
    from emsan.machine.afl import CHILD, FINISHED, NO_AFL, ForkServer

    argv = ["run", *cfg.run_options, cfg.program, *cfg.args]
    ns = build_parser(argv).parse_args(argv)
    target = FuzzTarget(cfg, run_options(ns))
    target.run_to_fork_point()
    server = ForkServer(target.s.machine.handle_int, target.s.arch.name)
    for lo, hi in target.cover_ranges():
        server.cover(lo, hi - 1, cfg.compcov)
    role = server.serve()
    if role == FINISHED:
        os._exit(0)
    try:
        crashed = target.run_inputs(server, input_path, role == CHILD)
    except Exception:
        if role != CHILD:
            raise                       # the internal error of a run by hand
        target.log_error()
        crashed = False
    sys.stdout.flush()
    sys.stderr.flush()
    if role == CHILD:
        if crashed:
            os.abort()                  # AFL++ records a crash
        os._exit(0)                     # no interpreter teardown: the next child is waiting
    assert role == NO_AFL
    reports, crash = getattr(target, "last", ([], None))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"tool": "emsan", "reports": reports, **({"crash": crash} if crash else {})}, f, indent=2)
    if not crashed:
        return 0
    return crash["signal"] + 128 if crash and not reports else target.opts.error_exitcode


if __name__ == "__main__":
    sys.exit(main())
