"""The node's Prometheus metrics: what is counted, under which names and labels.

Counters are updated from the receivers' threads (`stored`) and the main loop (`job_finished`);
gauges that need the tracker or the state database are set by the `/metrics` handler in
monitor.py from the main loop's snapshot. Each node has a registry of its own, so several
nodes in one process (the tests) keep separate counts. Apart from monitor.py, which serves
them, because the node creates and feeds them whether or not the HTTP port is on.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

STATES = ("receiving", "waiting", "converting", "published", "failed")
"""Series states shown on /metrics and the status page."""


EXECUTOR_STATES = ("queued", "running", "ok", "failed", "worker_deaths")
"""What executor.stats() counts, shown on /metrics and the status page."""


def executor_stats(executor: Any) -> dict[str, Any] | None:
    """`executor.stats()` (converter.executors local and dask), or None for an executor without it."""
    stats = getattr(executor, "stats", None)
    return stats() if stats is not None else None


def executor_line(kind: str, executor: Any) -> str:
    """One line for the status page: the executor's counts and which workers ran how many conversions."""
    stats = executor_stats(executor)
    if stats is None:
        return ""
    counts = ", ".join(f"{stats.get(s, 0)} {s.replace('_', ' ')}" for s in EXECUTOR_STATES)
    workers = "; ".join(f"{w}: {n}" for w, n in sorted((stats.get("by_worker") or {}).items()))
    return f"executor {kind}: {counts}" + (f"; ran on {workers}" if workers else "")


def node_version() -> str:
    try:
        from importlib.metadata import version

        return version("wsi-node")
    except Exception:  # running from a source tree that was not installed
        return "0+unknown"


class NodeMetrics:
    """The node's Prometheus metrics, in a registry of its own (several nodes can share a process)."""

    def __init__(self, version: str, ae_title: str) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        Info("wsi_node", "Version and identity of the node", registry=r).info({"version": version, "ae_title": ae_title})
        self.instances = Counter("wsi_node_instances_received", "Instances stored, by protocol and calling AE title "
                                 "(STOW-RS: the authenticated user, or anonymous)", ["protocol", "calling_ae"], registry=r)
        self.bytes = Counter("wsi_node_received_bytes", "Bytes of the instances stored, by protocol and calling AE title",
                             ["protocol", "calling_ae"], registry=r)
        self.series = Gauge("wsi_node_series", "Series by state (tracked series, plus the state database's)", ["state"], registry=r)
        self.conversions = Counter("wsi_node_conversions", "Finished series conversions, by result (published, failed) and mode "
                                   "(copy: every level copied, reencode: none, auto: some)", ["result", "mode"], registry=r)
        self.duration = Histogram("wsi_node_conversion_duration_seconds", "Conversion time of a series (sidecar timings.total)",
                                  buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600), registry=r)
        self.tiles = Counter("wsi_node_tiles", "Tiles written to published slides: copied byte for byte, or re-encoded",
                             ["action"], registry=r)
        self.queue = Gauge("wsi_node_queue_depth", "Conversion jobs submitted and not finished", registry=r)
        self.free = Gauge("wsi_node_free_disk_bytes", "Free bytes on the inbox filesystem", registry=r)
        self.reserve = Gauge("wsi_node_disk_reserve_bytes", "Free disk below which instances are refused", registry=r)
        self.deaths = Counter("wsi_node_worker_deaths", "Conversion processes that died without a result "
                              "(killed, out-of-memory killer, a codec crash)", registry=r)
        self.retries = Counter("wsi_node_conversion_retries", "Conversions queued again after their process died", registry=r)
        self.poison = Counter("wsi_node_poison_slides", "Series quarantined because every conversion attempt died", registry=r)
        self.faults = Counter("wsi_node_pipeline_faults", "Faults of the inbox pipeline that are not the slide's: no-space "
                              "(serving or archive full), error (an event, series or result that could not be handled)",
                              ["kind"], registry=r)
        self.refusals = Counter("wsi_node_refused", "Instances, requests and associations refused, by protocol and reason",
                                ["protocol", "reason"], registry=r)
        self.executor_tasks = Gauge("wsi_node_executor_conversions", "Conversions of the executor (local or dask) by state: "
                                    "queued in the node, running, and since the start finished ok or failed (died, lost)",
                                    ["executor", "state"], registry=r)
        self.by_worker = Gauge("wsi_node_executor_conversions_by_worker", "Conversions that returned a result, since the "
                               "start, by the worker that ran them (Dask worker address; 'local' for local processes)",
                               ["executor", "worker"], registry=r)
        self.ready = Gauge("wsi_node_conversions_ready", "1 when conversions can run (see /readyz), else 0", registry=r)
        for state in STATES:
            self.series.labels(state)
        for action in ("copied", "reencoded"):
            self.tiles.labels(action)
        for kind in ("no-space", "error"):
            self.faults.labels(kind)

    def executor(self, kind: str, executor: Any) -> None:
        """Set the executor gauges from `executor.stats()` (converter.executors: local and dask)."""
        stats = executor_stats(executor)
        if stats is None:
            return
        for state in EXECUTOR_STATES:
            self.executor_tasks.labels(kind, state).set(stats.get(state, 0))
        for worker, n in (stats.get("by_worker") or {}).items():
            self.by_worker.labels(kind, worker).set(n)

    def fault(self, kind: str) -> None:
        """A fault of the pipeline or the main loop (converter.inbox.retries.FAULTS); any thread."""
        counter = {"worker-death": self.deaths, "retry": self.retries, "poison": self.poison}.get(kind)
        (counter if counter is not None else self.faults.labels(kind)).inc()

    def refused(self, protocol: str, reason: str) -> None:
        """A receiver refused something ("dimse"/"stow", a short reason key); the receivers' `refused` event."""
        self.refusals.labels(protocol, reason).inc()

    def stored(self, protocol: str, association: str, size: int) -> None:
        sender = association.split("@", 1)[0]
        if protocol == "stow":
            sender = sender.partition("/")[2] or "anonymous"  # key: STOW[/user]@client#n
        self.instances.labels(protocol, sender).inc()
        self.bytes.labels(protocol, sender).inc(size)

    def job_finished(self, kind: str, result: Any, seconds: float) -> None:
        from converter.conversion.report import ConversionReport

        if kind != "series":
            return
        report = result if isinstance(result, ConversionReport) else None
        ok = report is not None and report.ok
        mode = "unknown"
        if report is not None and report.levels:
            copied = [lv.action == "copy" for lv in report.levels]
            mode = "copy" if all(copied) else "reencode" if not any(copied) else "auto"
        elif report is not None:
            mode = str(report.options.get("mode", "unknown"))
        self.conversions.labels("published" if ok else "failed", mode).inc()
        if report is not None:
            self.duration.observe(report.timings.get("total", seconds))
        else:
            self.duration.observe(seconds)
        if ok:
            self.tiles.labels("copied").inc(sum(lv.tiles for lv in report.levels if lv.action == "copy"))
            self.tiles.labels("reencoded").inc(sum(lv.tiles for lv in report.levels if lv.action != "copy"))
