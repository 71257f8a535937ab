"""run_in_fork: one task in a child forked from the caller, with the executor's isolation (issue 14).

The cases run in a fresh interpreter: a fork needs a single-threaded process, and a test session
may hold threads of earlier tests. Real processes, real signals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from converter.executors.local import run_in_fork

REPO = Path(__file__).resolve().parents[3]

_SCRIPT = r"""
import json, os, signal, sys
from converter.executors.local import WorkerDied, run_in_fork

def big(n):
    return os.getpid(), b"x" * n  # larger than a pipe's buffer: read before the child is joined

def fails():
    raise ValueError("bad frame 3")

def killed():
    os.kill(os.getpid(), signal.SIGKILL)

def exits():
    os._exit(3)

out = {"parent": os.getpid()}
pid, data = run_in_fork(big, 5 << 20)
out["result"] = [pid, len(data)]
try:
    run_in_fork(fails)
except ValueError as exc:
    out["raised"] = str(exc)
for name, fn in (("killed", killed), ("exits", exits)):
    try:
        run_in_fork(fn)
    except WorkerDied as exc:
        out[name] = [exc.signal, exc.exitcode, exc.problem]
out["after"] = run_in_fork(os.getpid) != os.getpid()  # the parent goes on after deaths
print(json.dumps(out))
"""


def test_result_exception_and_deaths_of_a_forked_task():
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    pid, size = out["result"]
    assert pid != out["parent"] and size == 5 << 20
    assert out["raised"] == "bad frame 3"
    sig, _code, problem = out["killed"]
    assert sig == 9 and "SIGKILL" in problem and "out of memory" in problem
    assert out["exits"][:2] == [None, 3] and "status 3" in out["exits"][2]
    assert out["after"] is True


def test_refused_while_another_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        with pytest.raises(RuntimeError, match="single-threaded"):
            run_in_fork(int, "1")
    finally:
        stop.set()
        t.join()
