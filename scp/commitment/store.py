"""Pending storage commitments in SQLite (`state/commitments.sqlite`): they survive a restart.

A request is recorded before anything else is done with it, and stays 'pending' until its
N-EVENT-REPORT was answered by the requester ('delivered') or it is older than the maximum age
('expired'; logged, the sender re-asks). Written by one thread only (the commitment service,
scp/commitment/service.py), so the node's own state database keeps its single writer too.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from converter.inbox.database import connect

from scp.commitment.request import CommitmentRequest, Reference

SCHEMA = """
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT PRIMARY KEY,
    calling_aet TEXT NOT NULL,
    address TEXT NOT NULL,         -- the requester's IP address (for the log; replies go to commitment_peers)
    refs TEXT NOT NULL,            -- JSON [[SOP Class UID, SOP Instance UID], ...]
    received REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL,           -- pending | delivered | expired
    outcome TEXT,                  -- the last report sent: "N committed, M failed (...)"
    last_error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commitments_state ON commitments(state);
"""


@dataclass
class Pending:
    request: CommitmentRequest
    calling_aet: str
    address: str
    received: float
    attempts: int = 0
    next_attempt: float = 0.0
    state: str = "pending"
    outcome: str | None = None
    last_error: str | None = None


class CommitmentStore:
    def __init__(self, path: Path) -> None:
        self.db, _fresh = connect(path)  # a damaged file is kept aside; pending reports are then lost, and logged so
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, p: Pending) -> bool:
        """Record a new request; False if its Transaction UID is already known (a duplicate)."""
        refs = json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in p.request.references])
        try:
            self.db.execute("INSERT INTO commitments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (p.request.transaction_uid, p.calling_aet, p.address, refs, p.received, p.attempts,
                             p.next_attempt, p.state, p.outcome, p.last_error, time.time()))
        except sqlite3.IntegrityError:
            return False
        return True

    def update(self, p: Pending) -> None:
        self.db.execute("UPDATE commitments SET attempts=?, next_attempt=?, state=?, outcome=?, last_error=?, updated=? "
                        "WHERE transaction_uid=?", (p.attempts, p.next_attempt, p.state, p.outcome, p.last_error, time.time(),
                                                    p.request.transaction_uid))

    def get(self, transaction_uid: str) -> Pending | None:
        rows = self._select("WHERE transaction_uid=?", (transaction_uid,))
        return rows[0] if rows else None

    def pending(self) -> list[Pending]:
        return self._select("WHERE state='pending' ORDER BY next_attempt", ())

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM commitments GROUP BY state").fetchall())

    def _select(self, where: str, args: tuple) -> list[Pending]:
        out = []
        for row in self.db.execute("SELECT transaction_uid, calling_aet, address, refs, received, attempts, next_attempt, state, "
                                   f"outcome, last_error FROM commitments {where}", args):
            tuid, aet, address, refs, received, attempts, next_attempt, state, outcome, error = row
            request = CommitmentRequest(tuid, tuple(Reference(c, i) for c, i in json.loads(refs)))
            out.append(Pending(request, aet, address, received, attempts, next_attempt, state, outcome, error))
        return out

    def prune(self, older_than: float) -> int:
        """Forget delivered and expired commitments received before `older_than` (pending ones stay)."""
        return self.db.execute("DELETE FROM commitments WHERE state != 'pending' AND received < ?", (older_than,)).rowcount
