"""The series-completeness tracker: what has arrived, and whether to convert now.

The rules themselves are pure (converter.inbox.completeness); this module keeps
their inputs (instances received, last arrival, sending associations,
conversions) per series and persists them in SQLite, so a restart resumes
every series that was in flight. It is used from one thread only: the
receivers hand their events to the node's main loop through a queue.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from converter.inbox.completeness import Completeness, Decision, InstanceFacts, SeriesActivity, assess, decide
from converter.source.instance import WsiInstance

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracked_series (
    uid TEXT PRIMARY KEY,
    study_uid TEXT,
    facts BLOB NOT NULL,        -- pickled {SOPInstanceUID: InstanceFacts}
    senders TEXT NOT NULL,      -- JSON list of calling AE titles seen
    first_arrival REAL NOT NULL,
    last_arrival REAL NOT NULL,
    converted_at REAL,          -- last_arrival covered by the latest published conversion
    status TEXT NOT NULL        -- receiving | converting | published | failed
);
"""


@dataclass
class Tracked:
    uid: str
    study_uid: str
    facts: dict[str, InstanceFacts] = field(default_factory=dict)
    senders: set[str] = field(default_factory=set)
    first_arrival: float = 0.0
    last_arrival: float = 0.0
    converted_at: float | None = None
    status: str = "receiving"
    open_associations: set[str] = field(default_factory=set)

    def completeness(self) -> Completeness:
        return assess(self.facts.values())


class Tracker:
    def __init__(self, db_path: Path, settle: float = 2.0, quiet: float = 60.0) -> None:
        self.settle = settle
        self.quiet = quiet
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db_path, isolation_level=None, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.series: dict[str, Tracked] = {}
        for uid, study, facts, senders, first, last, converted, status in self.db.execute("SELECT * FROM tracked_series"):
            self.series[uid] = Tracked(uid, study, pickle.loads(facts), set(json.loads(senders)), first, last, converted, status)
        self.prune()

    def prune(self, now: float | None = None, keep: float = 86400.0) -> None:
        """Forget (in memory) series finished more than `keep` seconds ago, so a node running for months
        does not re-assess every slide it ever received; their rows stay in the database."""
        now = time.time() if now is None else now
        for uid in [u for u, t in self.series.items()
                    if t.status in ("published", "failed") and not t.open_associations and now - t.last_arrival > keep]:
            del self.series[uid]

    def close(self) -> None:
        self.db.close()

    def _save(self, t: Tracked) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO tracked_series VALUES (?,?,?,?,?,?,?,?)",
            (t.uid, t.study_uid, pickle.dumps(t.facts), json.dumps(sorted(t.senders)), t.first_arrival, t.last_arrival,
             t.converted_at, t.status),
        )

    def on_instance(self, instance: WsiInstance, association: str | None, sender: str, when: float | None = None) -> Tracked:
        when = time.time() if when is None else when
        t = self.series.get(instance.series_uid)
        if t is None:
            t = self._load(instance.series_uid) or Tracked(instance.series_uid, instance.study_uid, first_arrival=when)
            self.series[instance.series_uid] = t
        t.facts[instance.sop_instance_uid] = InstanceFacts.from_instance(instance)
        t.senders.add(sender)
        t.last_arrival = max(t.last_arrival, when)
        if association:
            t.open_associations.add(association)
        if t.status in ("published", "failed"):
            t.status = "receiving"
        self._save(t)
        return t

    def _load(self, uid: str) -> Tracked | None:
        row = self.db.execute("SELECT * FROM tracked_series WHERE uid=?", (uid,)).fetchone()
        if row is None:
            return None
        _, study, facts, senders, first, last, converted, status = row
        return Tracked(uid, study, pickle.loads(facts), set(json.loads(senders)), first, last, converted, status)

    def on_association_closed(self, association: str) -> None:
        for t in self.series.values():
            t.open_associations.discard(association)

    def tracks(self, uid: str) -> bool:
        return uid in self.series

    def decision(self, uid: str, now: float | None = None) -> Decision:
        t = self.series[uid]
        activity = SeriesActivity(t.last_arrival, len(t.open_associations), t.converted_at)
        return decide(t.completeness(), activity, time.time() if now is None else now, self.settle, self.quiet)

    def started(self, uid: str) -> float:
        """The conversion starts now; returns the arrival time it covers."""
        t = self.series[uid]
        t.status = "converting"
        self._save(t)
        return t.last_arrival

    def finished(self, uid: str, covered: float, ok: bool) -> None:
        t = self.series.get(uid)
        if t is None:
            return
        if ok:
            t.converted_at = covered
            t.status = "published" if t.last_arrival <= covered else "receiving"
        else:
            t.converted_at = covered  # do not retry the same input in a loop; a new instance re-opens it
            t.status = "failed"
        self._save(t)

    def retry(self, uid: str) -> None:
        """The conversion ended without a result that counts (no space, a dead worker): the series is due
        again as it was before it started (the pipeline's backoff decides when it is submitted)."""
        t = self.series.get(uid)
        if t is None:
            return
        t.status = "receiving"
        self._save(t)

    def next_wakeup(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        times = [d.next_check for uid in self.series if (d := self.decision(uid, now)).next_check is not None]
        return min(times) if times else None
