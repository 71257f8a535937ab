"""CPU priority of conversion processes (issue 14, target 3): the node's receivers come first.

Real processes from the real executor; each task reports the nice value it ran at, from its main
thread and from a thread it started (codec pools are threads started inside the conversion, and
Linux keeps a nice value per thread).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from config.settings import BatchSettings
from converter.executors import make_configured_executor
from converter.executors.local import BACKGROUND_NICE, make_executor


def nice_of_task() -> tuple[int, int]:
    """(nice of the task's main thread, nice of a thread it starts)."""
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    t.start()
    t.join()
    return os.getpriority(os.PRIO_PROCESS, 0), seen[0]


def _expected(increment: int) -> int:
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + increment)


@pytest.mark.parametrize("nice", [0, BACKGROUND_NICE])
def test_task_and_its_threads_run_at_the_executors_nice(nice: int) -> None:
    ex = make_executor(1, nice=nice)
    try:
        main, thread = ex.submit(nice_of_task).result(timeout=60)
    finally:
        ex.shutdown(wait=True)
    assert (main, thread) == (_expected(nice), _expected(nice))
    assert os.getpriority(os.PRIO_PROCESS, 0) == _expected(0)  # the caller keeps its own priority


def test_configured_local_executor_passes_nice(tmp_path: Path) -> None:
    settings = BatchSettings(inbox=tmp_path / "i", serving=tmp_path / "s", archive=tmp_path / "a",
                             quarantine=tmp_path / "q", state_dir=tmp_path / "st", max_concurrent=1)
    ex = make_configured_executor(settings, nice=BACKGROUND_NICE)
    try:
        assert ex.submit(nice_of_task).result(timeout=60) == (_expected(BACKGROUND_NICE),) * 2
    finally:
        ex.shutdown(wait=True)


def test_node_converts_in_the_background(tmp_path: Path) -> None:
    """`wsi-node serve` builds its executor with BACKGROUND_NICE; the one-shot CLI keeps nice 0 (above)."""
    from scp.dimse import DimseSettings
    from scp.node import Node, NodeSettings

    p = BatchSettings(inbox=tmp_path / "inbox", serving=tmp_path / "serving", archive=tmp_path / "archive",
                      quarantine=tmp_path / "quarantine", state_dir=tmp_path / "state", max_concurrent=1)
    for d in (p.inbox, p.serving, p.archive, p.quarantine, p.state_dir):
        d.mkdir(parents=True)
    node = Node(NodeSettings(p, DimseSettings(bind="127.0.0.1", port=0), disk_reserve_mb=1))
    try:
        assert node.executor.submit(nice_of_task).result(timeout=60) == (_expected(BACKGROUND_NICE),) * 2
    finally:
        node.executor.shutdown(wait=True)
        node.pipeline.store.close()
        node.tracker.close()
