"""The SQLite state (state/wsi-node.sqlite) deleted, truncated or locked by another process.

What the code does (converter/inbox/state.py, tracker.py): both open the file with
sqlite3.connect(timeout=30) in WAL mode and create the schema if missing; nothing checks that an
existing node lost its state. What the issue asks: a clear error or a rebuild from the inbox and
archive, never a silent loss. These tests assert that: no instance and no published slide is
lost, the operator is told (a log line or /readyz naming the state database), and a lock held by
another process delays the node instead of breaking it. A deleted or damaged file is rebuilt from
the folders (converter/inbox/database.py says why a rebuild rather than a refusal to start).
"""

from __future__ import annotations

import sqlite3
import threading
import time

from converter.testkit import SlideSpec
from tests.faults.audit import node_answers
from tests.faults.harness import c_store, readyz

A = SlideSpec(width=1024, height=768, seed=601, downsamples=(1, 4))


def _db(node):
    return node.folder("state") / "wsi-node.sqlite"


def test_state_locked_by_another_process_while_running_delays_but_loses_nothing(node_process, series_factory):
    a = series_factory(A)
    node = node_process()
    holder = sqlite3.connect(_db(node), timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()
    try:
        # The receivers do not need the state: the sender is answered while the lock is held.
        assert [o.status for o in c_store(node.port, a[1])] == [0, 0]
        status, body = readyz(node.url)
        assert status == 503 and "state_db_writable" in body["failing"], body
        time.sleep(2)
        assert node.published(a[3]) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        released.set()
    node.wait_published(a[3], a[4], timeout=60)
    assert readyz(node.url)[0] == 200
    node_answers(node)


def test_state_locked_at_start_the_node_waits_then_starts(node_process, tmp_path, series_factory):
    a = series_factory(A)
    node = node_process(data=tmp_path / "locked")
    node.stop()
    holder = sqlite3.connect(_db(node), timeout=5, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    node.start(wait=False)
    time.sleep(3)
    holder.execute("ROLLBACK")
    holder.close()
    node.wait_ready(60)
    assert [o.status for o in c_store(node.port, a[1])] == [0, 0]
    node.wait_published(a[3], a[4], timeout=60)


STATE_A = SlideSpec(width=1024, height=768, seed=601, downsamples=(1, 4))
STATE_B = SlideSpec(width=1024, height=768, seed=602, downsamples=(1, 4))


def _db(node):
    return node.folder("state") / "wsi-node.sqlite"


def _remove_db(node) -> None:
    for suffix in ("", "-wal", "-shm"):
        (node.folder("state") / f"wsi-node.sqlite{suffix}").unlink(missing_ok=True)


def test_state_deleted_while_stopped_loses_nothing(node_process, series_factory):
    a, b = series_factory(STATE_A), series_factory(STATE_B)
    node = node_process(quiet=600)
    assert [o.status for o in c_store(node.port, a[1])] == [0, 0]
    node.wait_published(a[3], a[4])
    assert [o.status for o in c_store(node.port, b[1][:1])] == [0]  # b: half received
    time.sleep(1)
    node.stop()
    _remove_db(node)
    node.start()
    # The rest of b arrives: b is published from all its instances; a's output is still there.
    assert [o.status for o in c_store(node.port, b[1][1:])] == [0]
    node.wait_published(b[3], b[4], timeout=60)
    assert node.published(a[3]) is not None
    node_answers(node)


def test_state_truncated_while_stopped_gives_a_clear_error_or_a_rebuild(node_process, series_factory):
    a = series_factory(STATE_A)
    node = node_process()
    assert [o.status for o in c_store(node.port, a[1])] == [0, 0]
    node.wait_published(a[3], a[4])
    node.stop()
    db = _db(node)
    db.write_bytes(db.read_bytes()[:100])
    (node.folder("state") / "wsi-node.sqlite-wal").unlink(missing_ok=True)
    node.start(wait=False)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and node.alive():
        try:
            node.wait_ready(1)
            break
        except AssertionError:
            pass
    log = node.log_text()
    if node.alive():
        # A rebuild: it says so, naming the file, and the published slide is still served.
        assert "wsi-node.sqlite" in log.split("wsi-node ready")[-2 if "wsi-node ready" in log else -1], log[-2000:]
        assert node.published(a[3]) is not None
        node_answers(node)
    else:
        # A clear error: a non-zero exit, a message naming the state file, no Python traceback.
        assert node.proc.returncode != 0
        tail = log.split("wsi-node ready")[-1]
        assert "wsi-node.sqlite" in tail and "Traceback" not in tail, tail[-2000:]
