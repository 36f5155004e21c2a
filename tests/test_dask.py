"""`emsan fleet` and `emsan triage` on a real Dask cluster: a scheduler and two worker processes
started on this machine (loopback only), with the same results as the local runs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import build, emsan

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and `dask worker --nworkers 2`, as README says to start them."""
    dask = shutil.which("dask") or os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(dask):
        pytest.skip("the dask command line (dask.distributed) is not installed")
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    procs = []
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                       "--no-dashboard"], stdout=subprocess.DEVNULL,
                                      stderr=open(logs / "scheduler.log", "wb"), start_new_session=True))
        procs.append(subprocess.Popen([dask, "worker", addr, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"], stdout=subprocess.DEVNULL,
                                      stderr=open(logs / "worker.log", "wb"), start_new_session=True))
        with distributed.Client(addr, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield addr, procs[1].pid
    finally:
        for p in reversed(procs):           # each started in a session of its own: end its group
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def worker_pids(worker_cmd_pid: int) -> set[int]:
    return {c.pid for c in psutil.Process(worker_cmd_pid).children(recursive=True)}


def test_fleet_on_dask_matches_local(cluster, tmp_path):
    addr, worker_pid = cluster
    exe = build("kfence_cases", "x86_64")
    runs = []
    for where in ([], ["--scheduler", addr]):
        js = tmp_path / f"fleet{len(runs)}.json"
        emsan("fleet", "--runs", "4", "--jobs", "2", "--seed", "5", "--sample-interval", "1", "--quiet",
              *where, "--json", str(js), "--", exe, "use_after_free_read", status=99)
        runs.append(json.loads(js.read_text()))
    local, remote = runs
    strip = [{k: v for k, v in b.items() if k != "example"} for b in local["bugs"]]
    assert [{k: v for k, v in b.items() if k != "example"} for b in remote["bugs"]] == strip
    assert remote["statuses"] == local["statuses"] == {"report": 4}
    # the runs happened in the worker processes, not here
    workers = worker_pids(worker_pid)
    ran_in = {int(r["runner"].rsplit(":", 1)[1]) for r in remote["per_run"]}
    assert ran_in and ran_in <= workers, (ran_in, workers)


def test_triage_on_dask_matches_local(cluster, tmp_path):
    addr, worker_pid = cluster
    exe = build("fuzz_target", "x86_64")
    d = tmp_path / "crashes"
    d.mkdir()
    for i, data in enumerate([b"EMSNabcdefgh", b"y" * 50, b"EMSN" + b"q" * 20, b"fine"]):
        (d / f"id:{i:06d}").write_bytes(data)
    out = []
    for where in ([], ["--scheduler", addr]):
        js = tmp_path / f"t{len(out)}.json"
        emsan("triage", "--quiet", *where, "--json", str(js), "--sarif", str(tmp_path / "t.sarif"), str(d),
              "--", exe, status=99)
        out.append(json.loads(js.read_text()))
    local, remote = out
    key = lambda s: sorted((b["key"], sorted(i["input"] for i in b["inputs"]), b["smallest"]) for b in s["bugs"])
    assert key(remote) == key(local) and len(remote["bugs"]) == 2
    assert [q["input"] for q in remote["not_reproduced"]] == [q["input"] for q in local["not_reproduced"]]
    ran_in = {int(i["runner"].rsplit(":", 1)[1]) for b in remote["bugs"] for i in b["inputs"]}
    assert ran_in <= worker_pids(worker_pid)


def test_unreachable_scheduler(tmp_path):
    exe = build("hello", "x86_64")
    t0 = time.monotonic()
    p = emsan("fleet", "--runs", "1", "--quiet", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--", exe,
              timeout=120, status=2)
    assert b"cannot reach the Dask scheduler" in p.stderr and time.monotonic() - t0 < 90
