"""The inbox pipeline: scan, group, convert or pass through, publish, archive, quarantine.

One pass looks at the inbox, decides what is ready, and submits work to the
executor; finished work is collected on the main thread, which alone moves
originals and writes state, so the SQLite database never sees two writers.

Rules a pathology IT team can rely on:
- a file counts only when its mtime is at least `settle_seconds` old, and
  names that look temporary (leading dot, .part, .tmp, ...) are ignored;
- a dropped folder (a top-level entry of the inbox) is handled only when every
  file in it has settled, so a slide being copied is not converted half-way;
- originals move to the archive only after the output is verified and
  published; failures move to the quarantine with a reason file; nothing is
  deleted;
- state lives in SQLite, so a restart (kill -9 included) resumes without
  converting anything twice.

This module runs the passes and collects the results; scanning and the settle
rule are in converter.inbox.scan, the archive and quarantine moves in
converter.inbox.moves, output names and the already-published check in
converter.inbox.outputs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from config.options import default
from config.settings import BatchSettings, ConversionOptions
from converter.conversion.convert import convert_series, plan_series
from converter.executors.local import MemoryBudget, conversion_budget
from converter.source.discover import safe_name
from converter.source.instance import WsiInstance
from converter.inbox.moves import quarantine_file, quarantine_series, unique_path
from converter.inbox.outputs import sidecar_matches, sop_fingerprint, target_for, unique_by_sop
from converter.inbox.resends import resent_copies
from converter.inbox.results import Job, Results, series_instances
from converter.inbox.retries import Retries
from converter.inbox.receiving import mark_path
from converter.inbox.passthrough import check_passthrough, move_passthrough, passthrough_suffix
from converter.inbox.scan import classify, scan_inbox, walk_inbox
from converter.conversion.plain_tiff import convert_plain_tiff
from converter.inbox.state import FileRow, StateStore

if TYPE_CHECKING:
    from converter.inbox.tracker import Tracker

log = logging.getLogger("wsi_node.batch")
RAN_ON_KEPT = 1000
"""How many jobs the pipeline remembers the worker of (the status page shows the recent ones)."""

@dataclass
class PassSummary:
    submitted: int = 0
    waiting: list[str] = field(default_factory=list)
    quarantined: int = 0


def process_passthrough(src: str, target: str, options: ConversionOptions) -> dict:
    """Worker side of a passthrough: check, then move or convert. Returns a plain dict for the main thread."""
    src_p, target_p = Path(src), Path(target)
    check = check_passthrough(src_p)
    if check.action == "move":
        move_passthrough(src_p, target_p)
        return {"action": "move", "detail": check.detail, "ok": True, "output": str(target_p)}
    if check.action == "convert":
        out = target_p.with_name(_strip_suffix(target_p.name) + ".tiff")
        report = convert_plain_tiff(src_p, out, options)
        return {"action": "convert", "detail": check.detail, "ok": report.ok, "output": report.output, "error": report.error}
    return {"action": "reject", "detail": check.detail, "ok": False, "error": check.detail}


def _strip_suffix(name: str) -> str:
    suffix = passthrough_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


class InboxPipeline:
    def __init__(self, settings: BatchSettings, executor: Executor | None, clock: Callable[[], float] = time.time,
                 tracker: "Tracker | None" = None, max_attempts: int = default("max_attempts"),
                 memory_cap_mb: int = default("conversion_memory_mb")) -> None:
        self.s = settings
        self.executor = executor
        self.tracker = tracker
        self.memory_cap = memory_cap_mb << 20
        self.on_job_done: Callable[[], None] | None = None
        """Called (from a worker-result thread) when a job finishes, so an event loop can wake up."""
        self.on_job_finished: Callable[[str, object, float], None] | None = None
        """Called on the collecting thread with (job kind, result or exception, seconds since submission), for metrics."""
        self.clock = clock
        # Conversions yield to the receivers writing into this inbox (converter.inbox.receiving).
        self.options = replace(settings.conversion_options(), yield_to=str(mark_path(Path(settings.state_dir))))
        readonly = settings.dry_run
        self.store = StateStore(Path(settings.state_dir) / "wsi-node.sqlite", readonly=readonly)
        self.jobs: dict[str, Job] = {}
        self.retries = Retries(clock, max_attempts)
        """Backoff, space problems and fault counts (converter.inbox.retries)."""
        self.results = Results(settings, self.store, tracker, self.retries)
        self._waiting_logged: set[str] = set()
        self.ran_on: dict[str, str] = {}
        """Job key -> the worker that ran its last conversion (executor.worker_of), the latest RAN_ON_KEPT."""

    # --- start-up ---------------------------------------------------------------------------
    def recover(self) -> None:
        """Resume after a crash: in-flight series go back to pending, temporary files of conversions and moves go."""
        reset = self.store.reset_in_flight()
        for uid in reset:
            log.warning("series %s was being converted when the last run stopped; it will be converted again", uid)
        serving = Path(self.s.serving)
        for item in serving.iterdir() if serving.exists() else []:
            name = item.name
            if name.startswith(".") and (name.endswith(".tmp") or name.endswith(".work") or name.endswith(".incoming")):
                log.info("removing temporary %s left by an interrupted run", item)
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
        if self.tracker is not None and self.tracker.fresh:
            self._refill_tracker()
        self._finish_archiving()
        self._reconcile_tracker(set(reset))
        # Moves across filesystems copy to .<name>.<pid>.tmp beside the target: look where pending files go.
        folders = {Path(root) / Path(rel).parent for rel in self.store.files() for root in (self.s.archive, self.s.quarantine)}
        for folder in folders:
            for item in folder.glob(".*.tmp") if folder.is_dir() else []:
                log.info("removing temporary %s left by an interrupted move", item)
                item.unlink(missing_ok=True)

    def _finish_archiving(self) -> None:
        """Archive the originals of series recorded as published whose run stopped before moving them.

        Results.series records "published" and then archives: a kill between the two leaves the
        originals in the inbox with nothing due to move them (the tracker has finished the series).
        When the published sidecar says it was made from exactly those instances, they are archived
        now, as the "already published" path of _handle_series would.
        """
        for state in list(self.store.all_series()):
            if state.get("state") != "published" or not state.get("output"):
                continue
            uid = state["uid"]
            published = sorted(json.loads(state.get("fingerprint") or "[]"))
            rows = [r for r in self.store.series_files(uid)
                    if r.state == "pending" and r.kind == "dicom" and r.header is not None and Path(r.location).exists()]
            if not rows or not {StateStore.header(r).sop_instance_uid for r in rows} <= set(published):
                continue
            if sidecar_matches(Path(state["output"]), uid, published):
                log.info("series %s: archiving %d original(s) of its published output %s (the last run stopped before "
                         "archiving them)", uid, len(rows), state["output"])
                self.results.archive(rows)

    def _reconcile_tracker(self, reset: set[str]) -> None:
        """Bring the tracker's verdicts in line with the series rows after a stop between the two records.

        * Row published or failed, tracker still converting (Results.series writes the row first): give
          the tracker that verdict, or the status page shows the series converting for ever.
        * Row was converting (`reset`), tracker says published or failed (nodes before that order wrote
          the verdict first): forget the verdict, or "converted" holds the slide for ever.
        """
        if self.tracker is None:
            return
        for uid, tracked in list(self.tracker.series.items()):
            if uid in reset:
                if tracked.status in ("published", "failed"):
                    self.tracker.reopen(uid)
                continue
            if tracked.status != "converting":
                continue
            state = self.store.series(uid) or {}
            if state.get("state") == "published" and set(tracked.facts) <= set(json.loads(state.get("fingerprint") or "[]")):
                self.tracker.finished(uid, tracked.last_arrival, True)
            elif state.get("state") == "failed":
                self.tracker.finished(uid, tracked.last_arrival, False)

    def _refill_tracker(self) -> None:
        """The state database started empty (first start, deleted or damaged, converter.inbox.database):
        instances already received are in the inbox, so the tracker learns them again from there and a
        half-received slide completes when its last instance arrives, not after the quiet period."""
        count = 0
        pending: set[str] = set()
        for entry in walk_inbox(Path(self.s.inbox)):
            row = classify(entry)
            if row.kind != "dicom" or row.header is None:
                continue
            self.store.put_file(row.rel, row.location, row.size, row.mtime_ns, row.kind, row.series_uid, row.header, row.reason)
            self.tracker.on_instance(row.header, None, "inbox", entry.mtime_ns / 1e9)
            pending.add(row.series_uid)
            count += 1
        archived = 0
        archive = Path(self.s.archive)
        for entry in walk_inbox(archive) if archive.is_dir() else []:
            if entry.rel.startswith("replaced/"):
                continue  # earlier copies of re-sent instances, kept for the record only
            row = classify(entry)
            if row.kind == "dicom" and row.header is not None:
                # A re-opened series converts from its archived originals too (InboxPipeline._instances).
                self.store.put_file(f"archive:{row.rel}", row.location, row.size, row.mtime_ns, "dicom",
                                    row.series_uid, row.header, None, state="archived")
                if row.series_uid in pending:
                    # A series re-opened by instances in the inbox: its archived levels count for completeness
                    # (a level 0 published earlier is not "missing"); series only in the archive stay untracked.
                    self.tracker.on_instance(row.header, None, "archive", entry.mtime_ns / 1e9)
                archived += 1
        if count or archived:
            log.warning("the state database %s started empty; %d instance(s) in the inbox and %d in the archive were read "
                        "again: their series are tracked as before", self.store.path, count, archived)

    # --- scanning ---------------------------------------------------------------------------
    def scan(self) -> tuple[list[FileRow], set[str]]:
        """Settled files (classified, headers cached) and the drop units still being written (rules: converter.inbox.scan)."""
        now = self.clock()
        busy = {rel for job in self.jobs.values() for rel in job.rels}
        return scan_inbox(Path(self.s.inbox), self.store, now, self.s.settle_seconds, busy, self.tracker)

    # --- one pass -----------------------------------------------------------------------------
    def run_pass(self) -> PassSummary:
        summary = PassSummary()
        rows, unsettled = self.scan()
        for unit in sorted(unsettled):
            if unit not in self._waiting_logged:
                log.info("%s is still being written; waiting until it has been unchanged for %g s", unit, self.s.settle_seconds)
                self._waiting_logged.add(unit)
        summary.waiting = sorted(unsettled)
        by_series: dict[str, list[FileRow]] = defaultdict(list)
        for row in rows:
            unit = row.rel.split("/", 1)[0]
            if unit in unsettled:
                continue
            self._waiting_logged.discard(unit)
            try:
                if row.kind == "rejected":
                    quarantine_file(row, row.reason or "rejected", Path(self.s.quarantine), self.store)
                    summary.quarantined += 1
                elif row.kind == "passthrough":
                    if self._submit_passthrough(row):
                        summary.submitted += 1
                else:
                    by_series[row.series_uid].append(row)
            except Exception:  # one bad file must not stop the pass (nor every later one)
                self.retries.fault("error")
                delay = self.retries.defer(f"file:{row.rel}")
                log.exception("%s could not be handled; retrying in %g s", row.rel, delay)
        spoiled = {row.series_uid: row for row in rows if row.kind == "rejected" and row.series_uid in by_series}
        for uid, bad in spoiled.items():
            # A dropped series with an unreadable member: converting the rest would publish a smaller slide
            # that looks whole. Everything of it goes to quarantine together, with the reason.
            members = by_series.pop(uid)
            reason = (f"an instance file of this series was rejected ({bad.reason}); the other {len(members)} file(s) are "
                      f"kept with it so that no incomplete slide is published. Fix: replace that file and drop the series again.")
            log.error("series %s: %s", uid, reason)
            quarantine_series(uid, members, reason, Path(self.s.quarantine), self.store)
            self.results.failures += 1
            summary.quarantined += len(members)
        units_of: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            if row.kind == "dicom":
                units_of[row.series_uid].add(row.rel.split("/", 1)[0])
        for uid, members in by_series.items():
            if uid in self.jobs or self.retries.deferred(uid):
                continue
            try:
                notes: list[str] = []
                if self.tracker is not None and self.tracker.tracks(uid):
                    decision = self.tracker.decision(uid, self.clock())
                    if decision.action == "wait":
                        continue
                    # The report says which signal decided (structure, association end, commitment, quiet period).
                    notes = [f"completion: {decision.rule}" + (f": {decision.reasons[0]}" if decision.reasons else "")]
                    if decision.action == "convert-incomplete":
                        notes += [f"the slide looked incomplete when the quiet period ended: {r}" for r in decision.reasons]
                        log.warning("series %s: no new instance for %g s; converting what arrived. Incomplete: %s",
                                    uid, self.tracker.quiet, "; ".join(decision.reasons))
                elif units_of[uid] & unsettled:
                    continue
                if self._handle_series(uid, members, notes):
                    summary.submitted += 1
            except Exception as exc:  # one bad series must not stop the pass (nor every later one)
                self.retries.fault("error")
                delay = self.retries.defer(uid)
                log.exception("series %s could not be handled; retrying in %g s", uid, delay)
                self.store.set_series(uid, state="pending", error=f"could not be handled: {type(exc).__name__}: {exc}")
        return summary

    def register_received(self, instance: WsiInstance) -> None:
        """A receiver stored this instance in the inbox: record it as classified, so scans need not read it again."""
        path = Path(instance.path)
        st = path.stat()
        rel = path.relative_to(Path(self.s.inbox)).as_posix()
        self.store.put_file(rel, str(path), st.st_size, st.st_mtime_ns, "dicom", instance.series_uid, instance)
        tracked = self.tracker.series.get(instance.series_uid) if self.tracker is not None else None
        if tracked is not None and len(tracked.facts) == 1:
            # The first instance the tracker has of this series: if it re-opens a published series whose
            # tracker row is gone (a rebuilt state), its archived instances still count for completeness.
            for row in self.store.series_files(instance.series_uid):
                if row.state == "archived" and row.kind == "dicom":
                    self.tracker.on_instance(StateStore.header(row), None, "archive", row.mtime_ns / 1e9)

    def _instances(self, uid: str, rels: set[str]) -> tuple[list[WsiInstance], list[WsiInstance]]:
        """Cached headers of the series: (the given inbox files, the archived ones), with current paths."""
        return series_instances(self.store, uid, rels)

    def _handle_series(self, uid: str, members: list[FileRow], notes: list[str] | None = None) -> bool:
        state = self.store.series(uid)
        if state and state["state"] == "published":
            members, replaced = resent_copies(uid, members, set(json.loads(state["fingerprint"] or "[]")), self.store,
                                               Path(self.s.archive))
            if not members:
                return False
            if replaced:
                self.store.set_series(uid, stale=1)
                state["stale"] = 1
            else:
                log.warning("series %s: new instances arrived after it was published; re-opening and converting again", uid)
        inbox_instances, archived_instances = self._instances(uid, {r.rel for r in members})
        instances = unique_by_sop(inbox_instances + archived_instances)
        target = target_for(uid, members, Path(self.s.serving), self.s.naming, self.store)
        if not (state and state.get("stale")) and sidecar_matches(target, uid, sop_fingerprint(instances)):
            log.info("series %s: %s is already published for exactly these instances (an earlier run stopped before archiving)", uid, target)
            self.store.set_series(uid, study_uid=instances[0].study_uid, state="published", output=str(target),
                                  fingerprint=json.dumps(sop_fingerprint(instances)), attempts=0)
            if self.tracker is not None and self.tracker.tracks(uid):  # its output covers every instance it has
                self.tracker.finished(uid, self.tracker.series[uid].last_arrival, True)
            self.results.archive(members)
            return False
        attempts = (state or {}).get("attempts") or 0
        if attempts >= self.retries.max_attempts:
            self.results.poison(uid, members, attempts, (state or {}).get("error") or "the node stopped during each attempt")
            return False
        budget = self._budget(instances)
        if budget > self.memory_cap:
            big = max(instances, key=lambda i: i.tile_width * i.tile_height)
            error = (f"series {uid}: its declared frame size ({big.tile_width} x {big.tile_height} px) needs about "
                     f"{budget >> 20} MB to convert, more than conversion_memory_mb ({self.memory_cap >> 20} MB). Fix: check "
                     "Columns/Rows of its instances; if they are real, raise conversion_memory_mb.")
            self.results.failed(uid, members, error)
            return False
        attempts += 1
        if attempts > 1:
            notes = [*(notes or []), f"attempt {attempts} of {self.retries.max_attempts}; before: {(state or {}).get('error')}"]
        self.store.set_series(uid, study_uid=instances[0].study_uid, state="converting", output=str(target), attempts=attempts,
                              error=(state or {}).get("error") if attempts > 1 else None)
        log.info("series %s: converting %d instance(s) to %s%s", uid, len(instances), target,
                 f" (attempt {attempts} of {self.retries.max_attempts})" if attempts > 1 else "")
        covered = self.tracker.started(uid) if self.tracker is not None and self.tracker.tracks(uid) else 0.0
        future = self.executor.submit(MemoryBudget(convert_series, budget), instances, target, self.options, notes or [])
        self.jobs[uid] = Job("series", uid, [r.rel for r in members], target, future, covered=covered)
        self._notify_when_done(future)
        return True

    def _budget(self, instances: list[WsiInstance]) -> int:
        biggest = max(instances, key=lambda i: i.tile_width * i.tile_height)
        return conversion_budget(biggest.tile_width, biggest.tile_height, biggest.samples_per_pixel, self.options.threads,
                                 cap_bytes=1 << 62)

    def _submit_passthrough(self, row: FileRow) -> bool:
        key = f"file:{row.rel}"
        if key in self.jobs or self.retries.deferred(key):
            return False
        target = unique_path(Path(self.s.serving) / safe_name(Path(row.rel).name))
        log.info("%s: checking and passing through to %s", row.rel, target)
        future = self.executor.submit(MemoryBudget(process_passthrough, self.memory_cap), row.location, str(target), self.options)
        self.jobs[key] = Job("passthrough", key, [row.rel], target, future)
        self._notify_when_done(future)
        return True

    def _notify_when_done(self, future: Future) -> None:
        if self.on_job_done is not None:
            callback = self.on_job_done
            future.add_done_callback(lambda _f: callback())

    # --- results --------------------------------------------------------------------------------
    def collect(self, wait: bool = False, timeout: float | None = None) -> int:
        """Handle finished jobs (all of them when wait=True); returns how many were handled."""
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as wait_futures

        handled = 0
        while self.jobs:
            futures = [j.future for j in self.jobs.values()]
            if wait:
                done, _ = wait_futures(futures, return_when=FIRST_COMPLETED)
            else:
                done, _ = wait_futures(futures, timeout=timeout or 0, return_when=FIRST_COMPLETED)
                timeout = 0
            if not done:
                break
            for key, job in list(self.jobs.items()):
                if job.future in done:
                    del self.jobs[key]
                    try:
                        self._finish(job)
                    except Exception as exc:  # one result that cannot be handled must not stop the others
                        self.retries.fault("error")
                        delay = self.retries.defer(key)
                        log.exception("the result of %s could not be handled; retrying in %g s", key, delay)
                        if job.kind == "series":
                            self.store.set_series(key, state="pending", error=f"result not handled: {type(exc).__name__}: {exc}")
                    handled += 1
        return handled

    def _finish(self, job: Job) -> None:
        files = self.store.files(job.rels)
        rows = [files[r] for r in job.rels if r in files]
        try:
            result = job.future.result()
        except Exception as exc:  # the worker died (a codec crash, out of memory) or the executor failed
            result = exc
        worker_of = getattr(self.executor, "worker_of", None)
        worker = worker_of(job.future) if worker_of is not None else None
        if worker:
            self.ran_on.pop(job.key, None)
            self.ran_on[job.key] = worker
            while len(self.ran_on) > RAN_ON_KEPT:
                del self.ran_on[next(iter(self.ran_on))]
        if self.on_job_finished is not None:
            try:
                self.on_job_finished(job.kind, result, time.monotonic() - job.started)
            except Exception:  # metrics must never stop the pipeline
                log.exception("job-finished hook failed")
        if job.kind == "series":
            self.results.series(job, rows, result)
        else:
            self.results.passthrough(job, rows, result)

    @property
    def published(self) -> int:
        return self.results.published

    @property
    def failures(self) -> int:
        return self.results.failures

    # --- dry run ------------------------------------------------------------------------------------
    def dry_run(self, emit: Callable[[str], None] = print) -> None:
        rows, unsettled = self.scan()
        for unit in sorted(unsettled):
            emit(f"wait       {unit}: still being written (changed less than {self.s.settle_seconds:g} s ago)")
        by_series: dict[str, list[FileRow]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: r.rel):
            if row.rel.split("/", 1)[0] in unsettled:
                continue
            size = f"{row.size / 1e6:.1f} MB"
            if row.kind == "rejected":
                emit(f"quarantine {row.rel} ({size}): {row.reason}")
            elif row.kind == "passthrough":
                check = check_passthrough(Path(row.location))
                verb = {"move": "pass       ", "convert": "convert    ", "reject": "quarantine "}[check.action]
                emit(f"{verb}{row.rel} ({size}): {check.detail}")
            else:
                by_series[row.series_uid].append(row)
        for uid, members in by_series.items():
            size = sum(r.size for r in members) / 1e6
            instances, _ = self._instances(uid, {r.rel for r in members})
            fresh = {r.rel: r.header for r in members if r.header is not None and not isinstance(r.header, bytes)}
            if fresh:
                instances = [replace(h, path=r.location) for r in members if (h := fresh.get(r.rel)) is not None] + instances
            state = self.store.series(uid)
            if state and state["state"] == "published" and {i.sop_instance_uid for i in instances} <= set(json.loads(state["fingerprint"] or "[]")):
                emit(f"archive    series {uid} ({len(members)} files, {size:.1f} MB): already published as {state['output']}")
                continue
            target = target_for(uid, members, Path(self.s.serving), self.s.naming, self.store)
            try:
                series, plan = plan_series(instances, self.options)
            except Exception as exc:
                emit(f"quarantine series {uid} ({len(members)} files, {size:.1f} MB): {exc}")
                continue
            levels = "; ".join(f"L{lv.index} {lv.width}x{lv.height} {lv.action} ({lv.reason})" for lv in plan.levels)
            emit(f"convert    series {uid} ({len(members)} files, {size:.1f} MB) -> {target}: {levels}")
