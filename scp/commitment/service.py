"""The commitment service: one thread that records, checks, reports and retries storage commitments.

The N-ACTION handler (pynetdicom's thread, scp/dimse.py) validates the request (request.py), answers
at once and hands the request here. This thread alone writes the commitments database (store.py):
it records the request, checks every referenced instance (check.py, locate.py) through `run_check`
(in the node: its main loop, so instances stored just before the N-ACTION are registered first),
builds the N-EVENT-REPORT (report.py), and delivers it (sender.py): on the requester's association
while it is open, otherwise on a new association to the requester's entry in `commitment_peers`.
An undelivered report is retried with exponential backoff (first after `retry_seconds`, at most
`max_backoff` apart) until `max_age`, then expired; the instances are checked again at every
attempt. Requests left pending by a restart are resumed. Each outcome is one log line with the
Transaction UID and AE title (never patient data) and a count in `counts` (for /metrics).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scp.commitment.check import Located, check, committed_series
from scp.commitment.peers import Peer
from scp.commitment.report import Outcome, event_information
from scp.commitment.request import CommitmentRequest
from scp.commitment.sender import NotDelivered, Timeouts, send_new_association, send_on_association
from scp.commitment.store import CommitmentStore, Pending

log = logging.getLogger("wsi_node.commitment")


@dataclass
class CommitmentSettings:
    peers: dict[str, Peer] = field(default_factory=dict)
    """AE title -> reply address for reports on a new association. Not empty: only these AEs may request."""
    retry_seconds: float = 10.0
    """First retry of an undelivered report; doubles each time."""
    max_backoff: float = 600.0
    max_age: float = 86400.0
    """A report still undelivered after this long is given up (logged; the sender asks again)."""


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


class CommitmentService:
    def __init__(self, db_path: Path, ae_title: str, settings: CommitmentSettings,
                 locate: Callable[[set[str]], dict[str, Located]], supported_classes: frozenset[str] | None = None,
                 timeouts: Timeouts = Timeouts(), tls: ssl.SSLContext | None = None) -> None:
        self.db_path = db_path
        self.ae_title = ae_title
        self.s = settings
        self.locate = locate
        self.supported = supported_classes
        self.timeouts = timeouts
        self.tls = tls
        self.run_check: Callable[[Callable[[], Any]], Any] = _direct
        """How the check runs: directly here, or (the node) on the node's main loop."""
        self.on_committed: Callable[[dict[str, frozenset[str]], str, float], None] = lambda series, aet, when: None
        """`on_committed({series UID: committed SOP UIDs}, calling AE, when)`: the completion signal (first check only)."""
        self.counts: Counter[str] = Counter()
        """Outcomes: requested, refused, delivered-same, delivered-new, retry, expired, committed, failures."""
        self.inbox: queue.Queue = queue.Queue()
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metric: Any = None
        self.store: CommitmentStore | None = None

    # --- any thread -------------------------------------------------------------------------------
    def allowed(self, calling_aet: str) -> bool:
        """Whether this AE may request commitment: any when the peers table is empty, else only its entries."""
        return not self.s.peers or calling_aet in self.s.peers

    def submit(self, request: CommitmentRequest, calling_aet: str, address: str, assoc: object | None) -> bool:
        """Queue an accepted request; False if its Transaction UID is in progress already (a duplicate)."""
        with self._lock:
            if request.transaction_uid in self._active:
                return False
            self._active.add(request.transaction_uid)
        self.count("requested")
        self.inbox.put((request, calling_aet, address, assoc, time.time()))
        return True

    def start(self) -> None:
        self.store = CommitmentStore(self.db_path)
        resumed = self.store.pending()
        with self._lock:
            self._active.update(p.request.transaction_uid for p in resumed)
        if resumed:
            log.info("storage commitment: %d report(s) left pending by the last run; delivering them", len(resumed))
        self._thread = threading.Thread(target=self._run, name="commitment", daemon=True)
        self._thread.start()

    def attach_metrics(self, registry: Any) -> None:
        """Count outcomes on /metrics: wsi_node_storage_commitments{outcome} in the node's registry."""
        from prometheus_client import Counter as PromCounter

        self._metric = PromCounter("wsi_node_storage_commitments", "Storage commitment requests and reports by outcome "
                                   "(requested, refused, delivered-same, delivered-new, retry, expired; committed and failures "
                                   "count instances)", ["outcome"], registry=registry)
        for key in ("requested", "refused", "delivered-same", "delivered-new", "retry", "expired", "committed", "failures"):
            self._metric.labels(key)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        if self._metric is not None and n:
            self._metric.labels(key).inc(n)

    def stop(self, timeout: float = 30.0, drain: Callable[[], None] | None = None) -> None:
        """Stop the thread; `drain` (the node's event drain) runs meanwhile, so a check waiting on the main loop ends."""
        self._stop.set()
        self.inbox.put(None)
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                if drain is not None:
                    drain()
                self._thread.join(0.05)
            self._thread = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """For tests and shutdown: True once no request is waiting in the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inbox.empty() and self.inbox.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    # --- the service thread -----------------------------------------------------------------------
    def _run(self) -> None:
        assert self.store is not None
        while not self._stop.is_set():
            due = self.store.pending()
            now = time.time()
            for p in due:
                if p.next_attempt <= now and not self._stop.is_set():
                    self._guarded(self._attempt, p, None)
            later = [p.next_attempt for p in self.store.pending()]
            wait = max(0.05, min(later) - time.time()) if later else 3600.0
            try:
                item = self.inbox.get(timeout=wait)
            except queue.Empty:
                continue
            try:
                if item is not None:
                    self._guarded(self._new, *item)
            finally:
                self.inbox.task_done()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # one commitment must not stop the others
            self.count("error")
            log.exception("storage commitment: unexpected error; the request stays pending and is retried")

    def _new(self, request: CommitmentRequest, calling_aet: str, address: str, assoc: object | None, when: float) -> None:
        assert self.store is not None
        p = Pending(request, calling_aet, address, when, next_attempt=when)
        if not self.store.add(p):  # known from an earlier run: a retransmission
            log.warning("storage commitment %s from %s: Transaction UID already known; not recorded twice",
                        request.transaction_uid, calling_aet)
            return
        log.info("storage commitment %s requested by %s at %s for %d instance(s)", request.transaction_uid, calling_aet,
                 address, len(request.references))
        self._attempt(p, assoc, first=True)

    def _check(self, request: CommitmentRequest) -> tuple[Outcome, dict[str, Located]]:
        def run() -> tuple[Outcome, dict[str, Located]]:
            found = self.locate({r.sop_instance_uid for r in request.references})
            return check(request.references, found, self.supported), found
        return self.run_check(run)

    def _attempt(self, p: Pending, assoc: object | None, first: bool = False) -> None:
        assert self.store is not None
        tuid, aet = p.request.transaction_uid, p.calling_aet
        outcome, found = self._check(p.request)
        if first:
            self.count("committed", len(outcome.committed))
            self.count("failures", len(outcome.failed))
            series = committed_series(outcome, found)
            if series:
                self.on_committed(series, aet, p.received)
        info = event_information(tuid, outcome, self.ae_title)
        p.attempts += 1
        p.outcome = outcome.summary()
        errors = []
        how = ""
        if assoc is not None:
            try:
                send_on_association(assoc, outcome.event_type, info)
                how = "same"
            except NotDelivered as exc:
                errors.append(str(exc))
        peer = self.s.peers.get(aet)
        if not how and peer is not None:
            try:
                send_new_association(self.ae_title, peer, outcome.event_type, info, self.timeouts, self.tls)
                how = "new"
            except NotDelivered as exc:
                errors.append(str(exc))
        elif not how:
            errors.append(f"no reply address for {aet}: add it to commitment_peers (--commitment-peer {aet}=host:port)")
        if how:
            p.state, p.last_error = "delivered", None
            self.store.update(p)
            self._done(tuid)
            self.count(f"delivered-{how}")
            log.info("storage commitment %s for %s: event type %d (%s) delivered on %s association",
                     tuid, aet, outcome.event_type, p.outcome, "the same" if how == "same" else "a new")
            return
        p.last_error = "; ".join(errors)
        now = time.time()
        if now - p.received >= self.s.max_age:
            p.state = "expired"
            self.store.update(p)
            self._done(tuid)
            self.count("expired")
            log.error("storage commitment %s for %s: given up after %d attempt(s) over %.0f s: %s; the sender must ask again",
                      tuid, aet, p.attempts, now - p.received, p.last_error)
            return
        delay = min(self.s.max_backoff, self.s.retry_seconds * 2 ** (p.attempts - 1))
        p.next_attempt = now + delay
        self.store.update(p)
        self.count("retry")
        log.warning("storage commitment %s for %s: report (%s) not delivered: %s; retrying in %g s",
                    tuid, aet, p.outcome, p.last_error, delay)

    def _done(self, tuid: str) -> None:
        with self._lock:
            self._active.discard(tuid)
