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
import time
from dataclasses import dataclass, field
from pathlib import Path

from converter.inbox.completeness import (Completeness, Decision, InstanceFacts, SenderProfile, SeriesActivity, assess,
                                          decide, profile_for)
from converter.inbox.database import connect
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
    associations_ended: int = 0
    """Associations that delivered instances of it and were released (in memory; 0 after a restart)."""
    committed_at: float | None = None
    """A storage commitment request covered every instance received (in memory: the sender's signal)."""
    decided_by: str = ""
    """The rule that started the latest conversion (converter.inbox.completeness.RULES), for the status page."""

    def completeness(self, small_level_px: int | None = None) -> Completeness:
        return assess(self.facts.values()) if small_level_px is None else assess(self.facts.values(), small_level_px=small_level_px)


class Tracker:
    def __init__(self, db_path: Path, settle: float = 2.0, quiet: float = 60.0,
                 profiles: dict[str, SenderProfile] | None = None) -> None:
        self.settle = settle
        self.quiet = quiet
        self.profiles: dict[str, SenderProfile] = dict(profiles or {})
        """Per calling AE title (converter.inbox.completeness.profiles); others use default_profile."""
        self.db, self.fresh = connect(db_path)
        """fresh: the database started empty (new, missing or damaged); InboxPipeline.recover refills it."""
        self.db.executescript(SCHEMA)
        self.series: dict[str, Tracked] = {}
        for uid, study, facts, senders, first, last, converted, status in self.db.execute("SELECT * FROM tracked_series"):
            t = Tracked(uid, study, pickle.loads(facts), set(json.loads(senders)), first, last, converted, status)
            # Whatever delivered it before the restart is gone, but whether it was released or cut off by
            # the crash is not known: the association-end rule waits for a new association (or the quiet period).
            t.associations_ended = 0
            self.series[uid] = t
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

    def on_association_closed(self, association: str, released: bool = True) -> None:
        """released=False (aborted, connection lost): no longer open, but not a sign that the slide is whole."""
        for t in self.series.values():
            if association in t.open_associations:
                t.open_associations.discard(association)
                t.associations_ended += 1 if released else 0

    def on_commitment(self, uid: str, sops: frozenset[str] | set[str], when: float) -> bool:
        """A storage commitment request committed `sops` of series `uid`; if they cover every instance the node
        has of it, that is the sender's completion signal (converter.inbox.completeness.decide). Returns whether
        it counted."""
        t = self.series.get(uid) or self._load(uid)
        if t is None or not t.facts or not set(t.facts) <= set(sops):
            return False
        self.series[uid] = t
        t.committed_at = max(when, t.last_arrival)
        return True

    @property
    def default_profile(self) -> SenderProfile:
        """The profile of senders without their own: the tracker's settle and quiet (adjustable) and the defaults."""
        return SenderProfile(settle=self.settle, quiet=self.quiet)

    def profile(self, uid: str) -> SenderProfile:
        return profile_for(self.series[uid].senders, self.profiles, self.default_profile)

    def tracks(self, uid: str) -> bool:
        return uid in self.series

    def decision(self, uid: str, now: float | None = None) -> Decision:
        t = self.series[uid]
        p = self.profile(uid)
        activity = SeriesActivity(t.last_arrival, len(t.open_associations), t.converted_at, t.associations_ended, t.committed_at)
        return decide(t.completeness(p.small_level_px), activity, time.time() if now is None else now, p.settle, p.quiet,
                      p.association_end_completes)

    def started(self, uid: str) -> float:
        """The conversion starts now; returns the arrival time it covers."""
        t = self.series[uid]
        try:
            t.decided_by = self.decision(uid).rule
        except Exception:  # the status page's detail must never stop a conversion
            t.decided_by = ""
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

    def reopen(self, uid: str) -> None:
        """Forget the verdict of the latest conversion: its result was never recorded (the node stopped
        between the tracker's row and the series row), so the series is assessed as if not converted."""
        t = self.series.get(uid)
        if t is None:
            return
        t.converted_at = None
        t.status = "receiving"
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
