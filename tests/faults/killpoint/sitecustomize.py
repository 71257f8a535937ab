"""SIGKILL the node at one chosen point of its own code, once: a crash exactly between two steps.

Loaded by Python at start-up (this folder is put first on PYTHONPATH by tests/faults/test_kill_points.py)
when WSI_TEST_KILL_AT names `module:Class.method` and WSI_TEST_KILL_ONCE a marker file that does not
exist yet. The method runs; when it returns (WSI_TEST_KILL_WHEN=before: as it is called) (and, with WSI_TEST_KILL_IF=`key=value`, only when it was
called with that keyword argument), the marker is written and the process kills itself with
SIGKILL: no `finally`, no clean-up, as a power cut or the OOM killer would leave it. The product code
is not changed and does not know; the restart that follows finds the state of that moment.
"""

import os

_spec = os.environ.get("WSI_TEST_KILL_AT")
_once = os.environ.get("WSI_TEST_KILL_ONCE")


def _install() -> None:
    import importlib
    import signal
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: `python -m scp.cli` adds it later
    module_name, _, attr = _spec.partition(":")
    owner_name, _, method_name = attr.partition(".")
    owner = getattr(importlib.import_module(module_name), owner_name)
    original = getattr(owner, method_name)
    key, _, value = os.environ.get("WSI_TEST_KILL_IF", "").partition("=")
    before = os.environ.get("WSI_TEST_KILL_WHEN") == "before"

    def kill(kwargs) -> None:
        if (not key or str(kwargs.get(key)) == value) and not os.path.exists(_once):
            Path(_once).write_text(f"killed {'before' if before else 'after'} {_spec} in process {os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    def killing(*args, **kwargs):
        if before:
            kill(kwargs)
        result = original(*args, **kwargs)
        kill(kwargs)
        return result

    setattr(owner, method_name, killing)


if _spec and _once and not os.path.exists(_once):
    _install()
