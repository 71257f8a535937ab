"""Conversions on a Dask distributed cluster (issue 13): a concurrent.futures Executor over a Client.

The pipeline only calls `submit` and reads futures (docs/architecture.md), so scale-out is this
module alone: the node stays the one place that receives, decides, publishes and archives, and the
one writer of its SQLite state; workers only run the conversion function on paths they see at the
same place as the node (the shared-path contract, docs/scale-out.md).

What it adds to Client.submit, and why:
- at most `max_workers` tasks on the cluster at once (the node's --max-concurrent): the others wait
  here, in order, so a burst of slides does not flood the scheduler and the node's back-pressure is
  one number whatever the executor;
- a worker that died running the task (SIGKILL, the OOM killer, a crash) makes the scheduler raise
  KilledWorker once `distributed.scheduler.allowed-failures` workers died on it: it becomes the same
  WorkerDied the local executor raises, so the pipeline's bounded retries and poison-slide quarantine
  apply unchanged. The node sets allowed-failures to 0 on the scheduler at start so that every death
  costs one of the node's own max_attempts (otherwise a poison slide would kill 4 workers per attempt);
- a task the cluster lost (the scheduler restarted, the node's connection dropped) fails with
  TaskLost, which the pipeline retries like any conversion without a result;
- a published result is checked on the node before the pipeline sees it: the TIFF and its report must
  exist at the path the worker named and the TIFF must parse (ResultNotVisible otherwise: retried);
- a conversion writes into a hidden staging folder of its task in serving, and the node publishes it
  (converter.executors.staging): a stale task (its node restarted, its scheduler lost) cannot publish;
- the memory budget (local.MemoryBudget) is counted on top of what the long-lived worker process
  already uses (_OnWorker), since a Dask worker is not a fresh process per conversion.

Dask is an optional extra (`pip install wsi-node[dask]`): without it, choosing the dask executor
is a ConfigError at start that says what to install (import_distributed).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import uuid
import weakref
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from config.errors import ConfigError, WsiNodeError
from converter.conversion.report import ConversionReport
from converter.conversion.run import data_bytes
from converter.executors.local import MemoryBudget, WorkerDied
from converter.executors.staging import Staging

log = logging.getLogger("wsi_node.executor")

INSTALL_FIX = ("install the extra on the node and on every worker: pip install 'wsi-node[dask]' "
               "(dask[distributed]>=2026.1), or use --executor local")
CONTRACT_FIX = ("mount the inbox, serving and archive folders at the same paths on every Dask worker, readable and "
                "(serving) writable by the worker's user (docs/scale-out.md, the shared-path contract)")
PROBE_PREFIX = ".wsi-node-probe-"
"""Hidden, so the inbox scan ignores the probe file (converter.inbox.scan skips dot names)."""


def import_distributed() -> Any:
    """The `distributed` module, or a ConfigError that says what to install."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(f"--executor dask needs Dask distributed, which is not installed here ({exc}).",
                          INSTALL_FIX) from None
    return distributed


class DaskWorkerDied(WorkerDied):
    """A Dask worker died while it ran the task (KilledWorker): to the pipeline, a dead conversion process."""

    def __init__(self, worker: str, task: str) -> None:
        self.exitcode, self.pid, self.signal, self.worker = None, None, None, worker
        WsiNodeError.__init__(self, f"the Dask worker {worker} died while converting (task {task}; killed, "
                                    "out of memory or a crash)",
                              "the series is retried; if it keeps failing it is quarantined as a poison slide: "
                              "check that worker's log and memory limit")


class TaskLost(WsiNodeError):
    """The cluster no longer knows the task (scheduler restarted, connection lost): no result, retried."""


class ResultNotVisible(WsiNodeError):
    """The worker reported a published output that the node cannot see complete at the same path."""


@dataclass(frozen=True)
class _OnWorker:
    """The task as a worker runs it: a MemoryBudget counts from what the worker process uses already.
    Returns (the worker's address, the result), so the node can say which worker ran each conversion."""

    fn: Callable[..., Any]
    staging: str | None = None
    """The task's staging folder (converter.executors.staging), created here before the conversion runs."""

    def __call__(self, *args: Any) -> tuple[str, Any]:
        from distributed import get_worker

        if self.staging:
            Path(self.staging).mkdir(exist_ok=True)  # not parents: a swept serving is not re-created here
        fn = self.fn
        if isinstance(fn, MemoryBudget):
            fn = MemoryBudget(fn.fn, fn.limit + data_bytes())
        return get_worker().address, fn(*args)


def check_published(result: Any, worker: str) -> None:
    """Raise ResultNotVisible unless a published result is on the node's filesystem, complete."""
    if isinstance(result, ConversionReport):
        output = result.output if result.ok else None
    elif isinstance(result, dict) and result.get("ok"):
        output = result.get("output")
    else:
        return
    if not output:
        return
    path = Path(output)
    problem = None
    if not path.is_file():
        problem = "does not exist here"
    elif isinstance(result, ConversionReport):
        if not path.with_suffix(".json").is_file():
            problem = "has no report (.json) beside it here"
        else:
            problem = _tiff_problem(path, len(result.levels))
    if problem:
        raise ResultNotVisible(f"the Dask worker {worker} published {path}, but that file {problem}: the worker and "
                               "the node do not see the same serving folder", CONTRACT_FIX)


def _tiff_problem(path: Path, levels: int) -> str | None:
    import tifffile  # the converter's TIFF library; only IFDs are read

    try:
        with tifffile.TiffFile(path) as tif:
            pages = len(tif.pages)
    except Exception as exc:  # any parse failure means incomplete or not a TIFF
        return f"is not a readable TIFF ({type(exc).__name__}: {exc})"
    return None if pages >= levels else f"has {pages} pages, fewer than the {levels} levels reported"


@dataclass
class _Task:
    future: Future
    fn: Callable[..., Any]
    args: tuple
    name: str
    final: Path | None = None
    """Where the node publishes the staged output (converter.executors.staging), or None (not staged)."""


class DaskExecutor(Executor):
    """At most `max_workers` tasks on the cluster of `client` at once; see the module docstring."""

    def __init__(self, client: Any, max_workers: int, own_client: bool = True, serving: Path | None = None,
                 resources: float = 0.0, sweep_interval: float = 10.0) -> None:
        self.client = client
        self.max_workers = max(1, max_workers)
        self._own_client = own_client
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._running: dict[str, tuple[_Task, Any]] = {}
        self._settling: set[str] = set()
        self._shutdown = False
        self.resources = resources
        """The largest `memory` resource a worker declared (0: none): tasks ask for min(their budget, it)."""
        self.finished: collections.Counter[str] = collections.Counter()
        """Outcomes since the start: ok, failed (an exception: died, lost, not visible), cancelled."""
        self._worker_of: weakref.WeakKeyDictionary[Future, str] = weakref.WeakKeyDictionary()
        self.by_worker: collections.Counter[str] = collections.Counter()
        """Tasks that returned a result, by the address of the worker that ran them."""
        self.staging = Staging(serving, self._owned) if serving is not None else None
        if self.staging is not None:
            self.staging.start_sweeping(sweep_interval)
        self.deaths = 0
        """Tasks whose worker died, since the start."""
        self.on_death: Callable[[WorkerDied], None] | None = None

    # --- the Executor interface -------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        if kwargs:
            fn = functools.partial(fn, **kwargs)  # Client.submit keeps some keyword names for itself
        name = getattr(getattr(fn, "fn", fn), "__name__", "task")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit a conversion: the executor was shut down")
            self._queue.append(_Task(future, fn, args, name))
        self._start_ready()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            queued = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
        for task in queued:
            task.future.cancel()
        if self.staging is not None:
            self.staging.stop()
        if wait:
            while True:
                with self._lock:
                    pending = [t.future for t, _ in self._running.values()] + [t.future for t in self._queue]
                if not pending:
                    break
                for f in pending:
                    try:
                        f.exception()
                    except BaseException:  # cancelled: nothing to wait for
                        pass
        if self._own_client:
            try:
                self.client.close(timeout=10)
            except Exception:  # the scheduler may be gone already
                log.debug("closing the Dask client failed", exc_info=True)

    # --- what operations and tests look at ---------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """(True, summary) when tasks can run; (False, why) when no worker is connected."""
        if self._shutdown:
            return False, "the conversion executor is shut down"
        try:
            status = self.client.status
            workers = len(self.client.scheduler_info().get("workers", {})) if status == "running" else 0
        except Exception as exc:
            return False, f"the Dask scheduler {self.address} cannot be asked: {exc}"
        if status != "running":
            return False, f"the Dask client is {status}: the scheduler {self.address} is not reachable"
        if workers == 0:
            return False, f"no Dask worker is connected to the scheduler {self.address}"
        with self._lock:
            return True, (f"{len(self._running)} of {self.max_workers} conversion(s) on {workers} Dask worker(s), "
                          f"{len(self._queue)} queued")

    @property
    def address(self) -> str:
        return str(getattr(self.client.scheduler, "address", "?"))

    def keys_running(self) -> list[str]:
        """The Dask keys of the tasks this node has on the cluster now."""
        with self._lock:
            return list(self._running)

    def _owned(self) -> list[str]:
        with self._lock:
            return [*self._running, *self._settling]

    def stats(self) -> dict[str, int]:
        """Conversions queued in the node, running on the cluster, and finished by outcome (for /metrics)."""
        with self._lock:
            return {"queued": len(self._queue), "running": len(self._running), "ok": self.finished["ok"],
                    "failed": self.finished["failed"], "worker_deaths": self.deaths, "by_worker": dict(self.by_worker)}

    def worker_of(self, future: Future) -> str | None:
        """The address of the Dask worker that ran (returned) this future's task, when it finished there."""
        return self._worker_of.get(future)

    # --- submitting and finishing ----------------------------------------------------------------------
    def _start_ready(self) -> None:
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.max_workers:
                    return
                task = self._queue.popleft()
                if not task.future.set_running_or_notify_cancel():
                    continue
                key = f"{task.name}-{uuid.uuid4().hex}"  # grouped by function name on the dashboard
                args = task.args
                if self.staging is not None:
                    args, task.final = self.staging.rewrite(key, task.fn, args)
                extra = ({"resources": {"memory": min(task.fn.limit, self.resources)}}  # more would wait forever
                         if self.resources and isinstance(task.fn, MemoryBudget) else {})
                try:
                    staged = str(self.staging.folder(key)) if task.final is not None else None
                    dfut = self.client.submit(_OnWorker(task.fn, staged), *args, key=key, pure=False, retries=0, **extra)
                except Exception as exc:  # the client is closed, or the task cannot be pickled: only it fails
                    task.future.set_exception(TaskLost(f"the conversion could not be sent to the Dask scheduler: {exc}",
                                                       "check that the scheduler runs; the series is retried"))
                    continue
                self._running[key] = (task, dfut)
            dfut.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: str, dfut: Any) -> None:
        """On Dask's callback thread: hand the outcome to the concurrent future, start the next task."""
        with self._lock:
            task, _ = self._running.pop(key, (None, None))
            if task is not None:
                self._settling.add(key)
        if task is None:
            return
        try:
            self._settle(task, key, dfut)
        finally:
            with self._lock:
                self._settling.discard(key)
                self.finished["ok" if task.future.done() and not task.future.cancelled() and task.future.exception() is None
                              else "failed"] += 1
            if self.staging is not None and task.final is not None:
                self.staging.discard(key)  # published or not, the task's staging folder goes
            if self.staging is not None:
                self.staging.sweep()  # stale tasks' folders (an earlier run, a lost task) go too
            dfut.release()
            self._start_ready()

    def _settle(self, task: _Task, key: str, dfut: Any) -> None:
        distributed = import_distributed()
        status = dfut.status
        if status == "finished":
            try:
                worker, result = dfut.result(timeout=60)
                check_published(result, worker)
                if self.staging is not None and task.final is not None:
                    result = self.staging.publish(key, result, task.final)
            except BaseException as exc:  # the result cannot be fetched, is not visible here, or cannot be published
                task.future.set_exception(exc if isinstance(exc, WsiNodeError) else
                                          TaskLost(f"the result of {key} could not be fetched or published: {exc}",
                                                   "it is retried"))
                return
            self._worker_of[task.future] = worker
            with self._lock:
                self.by_worker[worker] += 1
            log.info("task %s ran on the Dask worker %s", key, worker)
            task.future.set_result(result)
            return
        if status == "error":
            exc = dfut.exception(timeout=60)
            if isinstance(exc, distributed.KilledWorker):
                death = DaskWorkerDied(str(getattr(exc.last_worker, "address", "?")), key)
                self.deaths += 1
                log.error("%s", death.problem)
                if self.on_death is not None:
                    try:
                        self.on_death(death)
                    except Exception:  # metrics must not stop the executor
                        log.exception("death hook failed")
                exc = death
            task.future.set_exception(exc)
            return
        task.future.set_exception(TaskLost(f"the Dask cluster lost the conversion {key} (status {status}: the scheduler "
                                           "restarted or the node's connection to it dropped)", "it is retried"))


__all__ = ["DaskExecutor", "DaskWorkerDied", "ResultNotVisible", "TaskLost", "check_published", "import_distributed"]
