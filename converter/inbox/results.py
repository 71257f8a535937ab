"""What happens to a finished job: publish and archive, retry, quarantine.

The pipeline (converter.inbox.pipeline) submits jobs and hands each finished one here, on the
main thread, which alone moves originals and writes state. A series' result is one of:

- published: the state records the output and the instances it covers, the originals move to
  the archive (a full archive leaves them in the inbox, retried, and says so on /readyz);
- no space ("no-space" report): not the slide's fault; it stays queued, its attempt does not
  count, it is retried with backoff (converter.inbox.retries) and /readyz names the folder;
- no result (the conversion process died: WorkerDied, or the executor failed): the scratch files
  of that conversion are removed and the series is retried, at most max_attempts times in all,
  then quarantined as a poison slide with the reason;
- failed (bad input, verification, out of memory within its budget): quarantined at once with the
  report's error: the same input would fail the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import BatchSettings
from converter.conversion.report import ConversionReport
from converter.conversion.run import NO_SPACE, remove_scratch
from converter.executors.local import WorkerDied
from converter.inbox.moves import archive_files, quarantine_file, quarantine_series
from converter.inbox.outputs import sop_fingerprint, unique_by_sop
from converter.inbox.retries import Retries, poison_reason
from converter.inbox.state import FileRow, StateStore
from converter.source.instance import WsiInstance

if TYPE_CHECKING:
    from converter.inbox.tracker import Tracker

log = logging.getLogger("wsi_node.batch")


@dataclass
class Job:
    kind: str  # "series" | "passthrough"
    key: str
    rels: list[str]
    target: Path
    future: Future
    covered: float = 0.0
    """Arrival time up to which the tracker's instances are in this conversion."""
    started: float = field(default_factory=time.monotonic)


def series_instances(store: StateStore, uid: str, rels: set[str]) -> tuple[list[WsiInstance], list[WsiInstance]]:
    """Cached headers of the series: (the given inbox files, the archived ones), with current paths."""
    inbox, archived = [], []
    for r in store.series_files(uid):
        if r.rel in rels:
            inbox.append(replace(StateStore.header(r), path=r.location))
        elif r.state == "archived":
            archived.append(replace(StateStore.header(r), path=r.location))
    return inbox, archived


class Results:
    """Handles finished jobs; counts what was published and what failed."""

    def __init__(self, settings: BatchSettings, store: StateStore, tracker: "Tracker | None", retries: Retries) -> None:
        self.s = settings
        self.store = store
        self.tracker = tracker
        self.retries = retries
        self.published = 0
        self.failures = 0

    def series(self, job: Job, rows: list[FileRow], result: object) -> None:
        uid = job.key
        report = result if isinstance(result, ConversionReport) else None
        current = self.store.series(uid) or {}
        if report is not None and report.ok:
            self.retries.settled(uid)
            self.retries.space.pop("serving", None)
            instances, archived = series_instances(self.store, uid, {r.rel for r in rows})
            fingerprint = sop_fingerprint(unique_by_sop(instances + archived))
            # The series row first, the tracker's verdict second: a crash between the two leaves a row that
            # says "published" (InboxPipeline.recover archives its originals and settles the tracker), never
            # a tracker that says "converted" for a row still "converting" (nothing would convert it again).
            self.store.set_series(uid, state="published", output=report.output, error=None, attempts=0, stale=0,
                                  conversions=(current.get("conversions") or 0) + 1, fingerprint=json.dumps(fingerprint))
            if self.tracker is not None and self.tracker.tracks(uid):
                self.tracker.finished(uid, job.covered, True)
            self.published += 1
            log.info("series %s published: %s (%s; %.1f s)", uid, report.output,
                     ", ".join(f"L{lv.index} {lv.action}" for lv in report.levels), report.timings.get("total", 0))
            self.archive(rows)
            return
        if report is not None and report.status == "no-space":
            # Not the slide's fault: it stays queued (its attempt does not count) and is retried when space returns.
            self.retries.fault("no-space")
            self.retries.space["serving"] = report.error or "no space"
            delay = self.retries.defer(uid)
            self.store.set_series(uid, state="pending", error=report.error, attempts=max(0, (current.get("attempts") or 1) - 1))
            self._retry_tracked(uid)
            log.error("series %s: %s Retrying in %g s.", uid, report.error, delay)
            return
        if report is None:
            if isinstance(result, WorkerDied):
                self.retries.fault("worker-death")
            reason = result.problem if isinstance(result, WorkerDied) else f"the conversion did not return a result: {result!r}"
            for path in remove_scratch(job.target, getattr(result, "pid", None)):
                log.info("removed %s of the conversion that did not finish", path)
            attempts = current.get("attempts") or 1
            if attempts >= self.retries.max_attempts:
                self.poison(uid, rows, attempts, reason)
                return
            self.retries.fault("retry")
            delay = self.retries.defer(uid)
            error = f"attempt {attempts} of {self.retries.max_attempts}: {reason}"
            self.store.set_series(uid, state="pending", error=error)
            self._retry_tracked(uid)
            log.error("series %s: %s; converting it again in %g s", uid, error, delay)
            return
        self.failed(uid, rows, report.error or "failed", job.covered)

    def _retry_tracked(self, uid: str) -> None:
        if self.tracker is not None and self.tracker.tracks(uid):
            self.tracker.retry(uid)

    def poison(self, uid: str, rows: list[FileRow], attempts: int, reason: str) -> None:
        self.retries.fault("poison")
        self.failed(uid, rows, poison_reason(uid, attempts, reason))

    def failed(self, uid: str, rows: list[FileRow], error: str, covered: float | None = None) -> None:
        self.retries.settled(uid)
        self.failures += 1
        self.store.set_series(uid, state="failed", error=error, attempts=0)  # before the tracker: see series()
        if self.tracker is not None and self.tracker.tracks(uid):
            self.tracker.finished(uid, self.tracker.series[uid].last_arrival if covered is None else covered, False)
        log.error("series %s failed: %s", uid, error)
        quarantine_series(uid, rows, error, Path(self.s.quarantine), self.store)

    def archive(self, rows: list[FileRow]) -> None:
        archive_files(rows, Path(self.s.archive), self.store)
        left = [r.rel for r in rows if Path(r.location).exists()]
        if left:
            free = shutil.disk_usage(self.s.archive).free >> 20
            self.retries.space["archive"] = (f"{len(left)} original(s) could not be moved to the archive {self.s.archive} "
                                             f"({free} MB free); they stay in the inbox and are retried")
        else:
            self.retries.space.pop("archive", None)

    def passthrough(self, job: Job, rows: list[FileRow], result: object) -> None:
        if isinstance(result, BaseException):
            if isinstance(result, OSError) and result.errno in NO_SPACE:
                self.retries.fault("no-space")
                self.retries.space["serving"] = f"no space left passing {job.rels[0]} through to {job.target.parent}: {result}"
                log.error("%s; retrying in %g s", self.retries.space["serving"], self.retries.defer(job.key))
                return
            self.retries.attempts[job.key] += 1
            if isinstance(result, WorkerDied):
                self.retries.fault("worker-death")
            if self.retries.attempts[job.key] < self.retries.max_attempts:
                self.retries.fault("retry")
                log.error("%s: attempt %d of %d: %s; retrying in %g s", job.rels[0], self.retries.attempts[job.key],
                          self.retries.max_attempts, result, self.retries.defer(job.key))
                return
            self.retries.fault("poison")
        self.retries.settled(job.key)
        if not isinstance(result, dict):
            result = {"ok": False, "action": "error", "error": f"the check failed {self.retries.max_attempts} time(s): {result}"}
        row = rows[0] if rows else None
        if result.get("ok"):
            self.published += 1
            if result["action"] == "move":
                log.info("%s passed through to %s (%s)", job.rels[0], result["output"], result["detail"])
                if row:
                    self.store.forget_files([row.rel])
            else:
                log.info("%s converted to pyramidal TIFF %s (%s)", job.rels[0], result["output"], result["detail"])
                if row:
                    self.archive([row])
        else:
            self.failures += 1
            log.error("%s: %s", job.rels[0], result.get("error"))
            if row:
                quarantine_file(row, result.get("error") or "failed", Path(self.s.quarantine), self.store)
