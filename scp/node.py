"""`wsi-node serve`: receivers, tracker, inbox pipeline and workers in one process.

Threads: pynetdicom serves associations in its own threads, and uvicorn serves
DICOMweb STOW-RS requests on its own event loop in one more thread (parts are
parsed and stored in worker threads); receivers only store instances, and
every store and association/request event is queued to the main loop,
which alone updates the tracker and the state database, runs inbox passes
and collects finished conversions. The loop sleeps until an event, a
finished job, the tracker's next deadline (settle or quiet period) or the
scan interval, so a complete slide is published about `settle` seconds after
its last instance, not at the next scan.

Faults (issue 10): nothing one instance or series does can stop the loop or make it spin. An
event that cannot be handled is logged with its UIDs and counted; a series that cannot be
handled is deferred with backoff by the pipeline; a conversion process that dies costs only its
series an attempt (converter.executors.local, converter.inbox.results). /readyz says when
conversions cannot run (no process can be started, serving or archive full).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from config.options import default
from config.settings import BatchSettings
from converter.executors import make_configured_executor
from converter.executors.local import BACKGROUND_NICE
from config.errors import ConfigError
from converter.inbox.completeness.profiles import SenderProfile
from converter.inbox.pipeline import InboxPipeline
from converter.inbox.tracker import Tracker
from converter.inbox.receiving import mark_path
from scp.commitment.locate import NodeLocator
from scp.commitment.sender import Timeouts
from converter.source.validate import DEFAULT_LIMITS, Limits
from scp.commitment.service import CommitmentService
from scp.dimse import WSI_STORAGE, DimseReceiver, DimseSettings
from scp.events import ReceiverEvents
from scp.http import HttpServer
from scp.metrics import NodeMetrics, node_version
from scp.monitor import Monitor
from scp.storage import InstanceStore, StoreResult
from scp.stow import HttpSettings, StowReceiver

log = logging.getLogger("wsi_node.node")


@dataclass
class NodeSettings:
    pipeline: BatchSettings
    dimse: DimseSettings
    disk_reserve_mb: int = 1024
    settle: float = 2.0
    quiet: float = 60.0
    http: HttpSettings | None = None
    """DICOMweb STOW-RS receiver; None: no HTTP listener."""
    max_attempts: int = default("max_attempts")
    """Conversion attempts of a series whose conversion process dies, before it is quarantined as a poison slide."""
    conversion_memory_mb: int = default("conversion_memory_mb")
    """Cap of the memory budget of one conversion; slides whose declared size needs more are refused."""
    profiles: dict[str, SenderProfile] = field(default_factory=dict)
    """Completeness rules per calling AE title (--sender-profile); others: settle, quiet and the defaults."""
    limits: Limits = DEFAULT_LIMITS
    """What every received instance is checked against before it is acknowledged (header size, nesting, budget)."""


class Node:
    def __init__(self, settings: NodeSettings) -> None:
        self.s = settings
        p = settings.pipeline
        self.events: queue.Queue = queue.Queue()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.store = InstanceStore(Path(p.inbox), Path(p.archive), Path(p.quarantine),
                                   reserve_bytes=settings.disk_reserve_mb << 20, keep_other=settings.dimse.accept_other_storage,
                                   limits=settings.limits, mark=mark_path(Path(p.state_dir)))
        self.tracker = Tracker(Path(p.state_dir) / "wsi-node.sqlite", settings.settle, settings.quiet, settings.profiles)
        # local processes, or a Dask cluster (--executor dask: connects and checks the shared paths now, docs/scale-out.md);
        # local conversions run below the receivers' CPU priority (BACKGROUND_NICE: a sender must not wait for a conversion)
        self.executor = make_configured_executor(p, start_method="forkserver", nice=BACKGROUND_NICE)
        self.pipeline = InboxPipeline(p, self.executor, tracker=self.tracker, max_attempts=settings.max_attempts,
                                      memory_cap_mb=settings.conversion_memory_mb)
        self.pipeline.on_job_done = self.wake.set
        self.version = node_version()
        self.metrics = NodeMetrics(self.version, settings.dimse.ae_title)
        self.pipeline.on_job_finished = self.metrics.job_finished
        self.pipeline.retries.on_fault = self.metrics.fault
        self.dimse = DimseReceiver(settings.dimse, self.store, ReceiverEvents(lambda r, a: self._stored(r, a, "dimse"), self._closed,
                                                                              self.metrics.refused))
        self.commitment = self._commitment_service()
        self.dimse.commitment = self.commitment
        self.http: HttpServer | None = None
        if settings.http is not None:
            h = settings.http
            self.stow = StowReceiver(h, self.store, ReceiverEvents(lambda r, a: self._stored(r, a, "stow"), self._closed,
                                                                   self.metrics.refused))
            self.monitor = Monitor(self)
            # STOW-RS authenticates in its own endpoint: the operations routes are open (read-only, no patient data).
            self.stow.app.router.routes.extend(self.monitor.routes)
            self.http = HttpServer(self.stow.app, h.bind, h.port, h.tls_cert, h.tls_key, h.graceful_seconds)

    def _commitment_service(self) -> CommitmentService:
        """Storage Commitment SCP (scp/commitment/): its own thread and database; checks run on the main loop."""
        p, d = self.s.pipeline, self.s.dimse
        service = CommitmentService(Path(p.state_dir) / "commitments.sqlite", d.ae_title, d.commitment,
                                    NodeLocator(Path(p.state_dir) / "wsi-node.sqlite", Path(p.quarantine)).locate,
                                    None if d.accept_other_storage else frozenset({WSI_STORAGE}),
                                    Timeouts(d.acse_timeout, d.dimse_timeout, d.network_timeout))
        service.run_check = lambda fn: fn() if self.stop_event.is_set() else self.query(lambda _node: fn(), timeout=120)
        service.on_committed = lambda series, aet, when: (self.events.put(("committed", series, when)), self.wake.set())
        service.attach_metrics(self.metrics.registry)
        return service

    # receiver threads
    def _stored(self, result: StoreResult, association: str, protocol: str = "dimse") -> None:
        self.events.put(("stored", result, association, time.time()))
        self.wake.set()
        try:
            size = result.path.stat().st_size if result.path is not None else 0
        except OSError:
            size = 0
        self.metrics.stored(protocol, association, size)

    def _closed(self, association: str, released: bool = True) -> None:
        self.events.put(("closed", association, released))
        self.wake.set()

    def query(self, fn: Callable[["Node"], Any], timeout: float = 5.0) -> Any:
        """Run `fn(node)` on the main loop (which alone touches the tracker and the state database); any thread."""
        future: Future = Future()
        self.events.put(("query", fn, future))
        self.wake.set()
        return future.result(timeout)

    # main loop
    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                self._handle(event)
            except Exception:  # one event must not stop the others, nor the loop
                self.metrics.fault("error")
                what = event[0]
                if what == "stored" and event[1].instance is not None:
                    what = f"instance {event[1].instance.sop_instance_uid} of series {event[1].instance.series_uid}"
                log.exception("%s could not be handled; the node goes on with the others", what)

    def _handle(self, event: tuple) -> None:
        if event[0] == "stored":
            _, result, association, when = event
            if result.instance is not None:
                sender = association.split("@", 1)[0]
                self.tracker.on_instance(result.instance, association, sender, when)
                self.pipeline.register_received(result.instance)
        elif event[0] == "closed":
            self.tracker.on_association_closed(event[1], released=event[2])
        elif event[0] == "committed":  # a storage commitment covered these instances: the sender's completion signal
            for uid, sops in event[1].items():
                self.tracker.on_commitment(uid, sops, event[2])
        elif event[0] == "query":
            _, fn, future = event
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self))
                except BaseException as exc:  # handed to the asking thread
                    future.set_exception(exc)

    def _due(self, now: float) -> bool:
        """Whether a tracked series is due for conversion now (not running, not waiting for a retry)."""
        for uid in list(self.tracker.series):
            if uid in self.pipeline.jobs or self.pipeline.retries.deferred(uid):
                continue
            try:
                if self.tracker.decision(uid, now).action != "wait":
                    return True
            except Exception:  # a series whose facts cannot be assessed must not stop the loop
                self.metrics.fault("error")
                log.exception("series %s: its completeness cannot be assessed; it waits for the next scan", uid)
                self.pipeline.retries.defer(uid)
        return False

    def _next_deadline(self, now: float, next_scan: float, last_pass: float) -> float:
        deadline = next_scan
        try:
            wakeup = self.tracker.next_wakeup(now)
        except Exception:
            log.exception("cannot compute the tracker's next deadline; waking at the next scan")
            wakeup = None
        retry = self.pipeline.retries.next_retry()
        if self._due(now):  # due by an event (a commitment), not a deadline: pass as soon as the rate limit allows
            wakeup = now if wakeup is None else min(wakeup, now)
        for t in (wakeup, retry):
            if t is not None:
                deadline = min(deadline, max(t + 0.05, last_pass + 0.5))
        return deadline

    def start(self) -> None:
        removed = self.store.clean_incoming()
        if removed:
            log.info("removed %d partial transfer(s) left by the last run", removed)
        self.pipeline.recover()
        # Start a conversion worker now: the first slide must not pay for forking and importing it.
        self.executor.submit(int).result(timeout=300)
        self.commitment.start()
        self.dimse.start()
        if self.http is not None:
            try:
                self.http.start()
            except BaseException:
                self.dimse.stop()
                raise
        d = self.s.dimse
        tls = " (TLS)" if d.tls_cert else ""
        web = f"DICOMweb STOW-RS on {self.http.url}/dicom-web/studies" if self.http else "DICOMweb off"
        log.info("wsi-node ready: DICOM AE %s listening on %s:%d%s; %s; inbox %s; serving %s",
                 d.ae_title, d.bind, self.dimse.port, tls, web, self.s.pipeline.inbox, self.s.pipeline.serving)

    def run(self) -> int:
        interval = self.s.pipeline.watch_interval
        next_scan = last_pass = 0.0
        next_prune = time.time() + 3600
        failures = 0
        while not self.stop_event.is_set():
            self.wake.clear()
            now = time.time()
            try:
                self._drain()
                # A due series triggers a pass at once, but at most twice a second (a series that
                # stays due, e.g. its files were removed by hand, must not spin the loop).
                if now >= next_scan or (self._due(now) and now - last_pass >= 0.5):
                    last_pass, next_scan = now, now + interval
                    self.pipeline.run_pass()
                self.pipeline.collect(wait=False)
                failures = 0
            except Exception:
                # Series and results are isolated in the pipeline; what fails here is the pass itself
                # (the inbox folder gone, the state database unwritable). Receivers keep running.
                failures += 1
                self.metrics.fault("error")
                delay = min(60.0, 5.0 * failures)
                log.exception("an inbox pass failed (%d in a row); retrying in %g s", failures, delay)
                self.stop_event.wait(delay)
                continue
            if now >= next_prune:
                self.tracker.prune(now)
                next_prune = now + 3600
            self.wake.wait(max(0.05, self._next_deadline(now, next_scan, last_pass) - time.time()))
        return self.shutdown()

    def shutdown(self) -> int:
        log.info("stopping: no new associations or HTTP requests; finishing the requests and conversions in progress")
        self.dimse.stop()
        if self.http is not None:
            self.http.stop()
        self.commitment.stop(drain=self._drain)
        self._drain()
        self.pipeline.collect(wait=True)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.pipeline.store.close()
        self.tracker.close()
        log.info("stopped cleanly")
        return 0

    def request_stop(self, *_args: object) -> None:
        self.stop_event.set()
        self.wake.set()


def serve(settings: NodeSettings) -> int:
    try:
        node = Node(settings)
    except ConfigError as exc:  # e.g. --executor dask without the extra, or workers that see other folders
        log.error("cannot start: %s", exc)
        return 2
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    try:
        node.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        node.shutdown()
        return 2
    return node.run()
