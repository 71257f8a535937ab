"""Opening the node's SQLite state: a damaged or missing file is moved aside or noted, never fatal.

The state (converter.inbox.state, converter.inbox.tracker, scp.commitment.store) is a cache of what
the folders already hold: instances in the inbox, originals in the archive, published TIFFs with
their JSON reports in serving. So the node does not refuse to start when the file is damaged
(truncated by a full disk, overwritten, not SQLite at all): the damaged file is kept beside the new
one as `<name>.damaged-<time>` for inspection, an error line names both, and the state is rebuilt
from the folders (a published series is recognised by its sidecar and not converted twice; the
instances still in the inbox are fed to the tracker again, see InboxPipeline.recover). A file
deleted while the node was stopped is rebuilt the same way, with a warning. The choice of a rebuild
over a refusal to start is written down in docs/operations.md ("Failure behaviour").
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("wsi_node.state")

_SIDE_FILES = ("-wal", "-shm", "-journal")


def connect(path: Path) -> tuple[sqlite3.Connection, bool]:
    """An open, checked connection in WAL mode, and whether the state starts empty (new, missing or damaged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or path.stat().st_size == 0
    if not fresh:
        problem = _damage(path)
        if problem is not None:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(aside)
            for suffix in _SIDE_FILES:
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
            log.error("state database %s is damaged (%s); kept as %s, rebuilding the state from the inbox, "
                      "archive and serving folders. Fix: nothing to do; delete %s once you no longer need it.",
                      path, problem, aside, aside)
            fresh = True
    db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db, fresh


def _damage(path: Path) -> str | None:
    """Why the file is not a usable SQLite database, or None. A lock held by another process is no damage."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if row and row[0] == "ok" else f"integrity check: {row[0] if row else 'no answer'}"
