"""Where conversions run: local processes that may die without breaking anything.

Everything goes through a concurrent.futures Executor so that a distributed engine (for example
Dask distributed's Client.get_executor(), issue 13) can replace the local one without touching
the pipeline. Processes rather than threads: a codec crash in one slide must not take the node down.

Why not ProcessPoolExecutor: when one of its workers dies (the OOM killer, a codec crash,
SIGKILL), the whole pool is broken: every future in flight fails with BrokenProcessPool, nobody
can tell which task killed it, and every later submit fails until the pool is recreated (issue 10:
the node converted nothing until a restart). Here every task runs in a process of its own,
forked from a forkserver that has the converter preloaded (a few milliseconds, no imports), so:

- a death affects that task only and is attributed to it: its future fails with WorkerDied
  (signal or exit status); the other tasks go on, and the next task gets a fresh process. There is
  no shared pool that could stay broken;
- a process that cannot be started (fork failing with EAGAIN/ENOMEM, the forkserver gone) leaves
  the task queued; starting is retried with backoff and `health()` says why nothing runs;
- a task's memory budget (MemoryBudget, RLIMIT_DATA) ends with its process, and memory a
  conversion fragmented is returned to the system after every slide.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from config.errors import WsiNodeError

log = logging.getLogger("wsi_node.executor")

MB = 1 << 20

BACKGROUND_NICE = 10
"""Nice value added to conversions run inside `wsi-node serve` (issue 14, target 3).

The receivers and the conversions share the machine's cores (2 on the reference machine), and
a copy-mode conversion keeps one core busy, mostly in the kernel copying pages. A sender that
is kept waiting can time out (DIMSE and ACSE timeouts); a conversion that waits a little is
published a little later. So the node's own threads (receivers, main loop) come first when both
want a core: nice 10 gives a conversion about 10 % of a core that a receiver thread also wants
(CFS weights 110 vs 1024), and the whole core when nobody else does, so an idle node converts
as fast as `wsi-node convert` (which keeps nice 0). Only CPU priority: the I/O is mostly the
kernel's writeback threads, which an I/O priority of the writer does not reach.
"""


class WorkerDied(WsiNodeError):
    """The process running a task ended without returning a result (killed, crashed, exited)."""

    def __init__(self, exitcode: int | None, pid: int | None) -> None:
        self.exitcode, self.pid = exitcode, pid
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = "unknown signal"
            hint = "; out of memory?" if self.signal == signal.SIGKILL else "; a crash in a codec library?" \
                if self.signal in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL) else ""
            what = f"the conversion process died (signal {self.signal}, {name}{hint})"
        else:
            what = f"the conversion process exited with status {exitcode} without a result"
        super().__init__(what, "the series is retried; if it keeps failing it is quarantined as a poison slide: "
                               "check the system log (dmesg) for the out-of-memory killer")


@dataclass(frozen=True)
class MemoryBudget:
    """A task wrapper (picklable, so any executor can run it): `fn` runs with RLIMIT_DATA at `limit` bytes.

    RLIMIT_DATA, not RLIMIT_AS: measured on a 24000 x 18000 re-encode, RSS peaks at 134 MB, private
    writable data (what RLIMIT_DATA counts, Linux >= 4.7) at 210 MB, but address space at 395 MB with
    2 threads and 828 MB with 8 (glibc reserves 64 MB of address space per thread arena): an address
    space limit would hurt normal slides on machines with many cores, a data limit tracks real use.
    Allocation beyond it fails (MemoryError in Python and numpy) instead of the OOM killer taking the
    process, or the whole machine swapping. The previous limit is restored after the task.
    """

    fn: Callable[..., Any]
    limit: int

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = self.limit if hard == resource.RLIM_INFINITY else min(self.limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        try:
            return self.fn(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


BLOCK_PX = 2048
"""converter.tiff.blocks.MAX_BLOCK: the side of the pixel blocks a re-encode works in (a test checks they agree)."""


def conversion_budget(tile_width: int, tile_height: int, samples: int, threads: int, cap_bytes: int) -> int:
    """The memory budget of a conversion from the slide's declared frame size: bytes, at most `cap_bytes`.

    Re-encoding works in blocks of at most 2048 x 2048 px (converter/tiff/blocks.py), so memory does
    not grow with the slide's width or height, only with the threads (each holds a block, its halvings
    and one decoded frame) and with the frame size (a frame larger than a block is decoded whole);
    copy mode holds a few bytes per frame. Measured (issue 14): peak RSS 108-110 MB at 24,000 and
    60,000 px wide. The budget is 256 MB + 16 MB per thread + per thread 4 blocks and 2 frames, well
    above what was measured, so that normal slides are never near it.
    """
    block = BLOCK_PX * BLOCK_PX * max(1, samples)
    frame = max(1, tile_width) * max(1, tile_height) * max(1, samples)
    per_thread = 16 * MB + 4 * block + 2 * frame
    return min(cap_bytes, 256 * MB + max(1, threads) * per_thread)


def _child(conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict, nice: int = 0) -> None:
    """Runs in the task's process: the result, or the exception, goes back over `conn`.

    `nice` is applied first, while the process has one thread, so that every thread the conversion
    starts later (codec pools) inherits it: Linux keeps a nice value per thread.
    """
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # raising one's own nice value is always allowed; a sandbox may still refuse it
            pass
    try:
        outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except BaseException as exc:  # handed to the future, whatever it is
        outcome = (False, exc)
    try:
        conn.send(outcome)
    except Exception as exc:  # the result or exception cannot be pickled
        conn.send((False, RuntimeError(f"the task's result could not be sent back: {type(exc).__name__}: {exc}")))
    conn.close()


@dataclass
class _Task:
    future: Future
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict


@dataclass
class _Running:
    task: _Task
    process: Any
    conn: Connection
    done: bool = False


class IsolatedProcessExecutor(Executor):
    """At most `max_workers` tasks at once, each in a fresh process; see the module docstring."""

    def __init__(self, max_workers: int, start_method: str = "forkserver", preload: tuple[str, ...] = (),
                 nice: int = 0) -> None:
        self.max_workers = max(1, max_workers)
        self.nice = max(0, nice)
        """Added to each task process's nice value (CPU priority): 0 for the CLI, BACKGROUND_NICE in the node."""
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver" and preload:
            self._ctx.set_forkserver_preload(list(preload))
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._running: dict[int, _Running] = {}
        self._shutdown = False
        self._wake_r, self._wake_w = os.pipe()
        self._unavailable: str | None = None
        self._retry_at = 0.0
        self._backoff = 1.0
        self.deaths = 0
        """Tasks whose process died, since the start."""
        self.on_death: Callable[[WorkerDied], None] | None = None
        """Called (on the supervisor thread) for each death, e.g. to count it."""
        self.finished: collections.Counter[str] = collections.Counter()
        """Finished tasks since the start: ok (a result), failed (an exception, a death)."""
        self._worker_of: weakref.WeakKeyDictionary[Future, str] = weakref.WeakKeyDictionary()
        self._thread = threading.Thread(target=self._supervise, name="wsi-node-executor", daemon=True)
        self._thread.start()

    # --- the Executor interface -----------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit a conversion: the executor was shut down")
            self._queue.append(_Task(future, fn, args, kwargs))
        future.add_done_callback(self._count)
        self._poke()
        return future

    def _count(self, future: Future) -> None:
        if not future.cancelled():
            with self._lock:
                self.finished["ok" if future.exception() is None else "failed"] += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
        self._poke()
        if wait:
            self._thread.join()

    # --- what operations and tests look at ---------------------------------------------------------
    def running_pids(self) -> list[int]:
        """Process ids of the tasks running now."""
        with self._lock:
            return [r.process.pid for r in self._running.values() if not r.done]

    def pid_of(self, future: Future) -> int | None:
        """The process id running the task of `future`, while it runs (for operators and tests)."""
        with self._lock:
            return next((r.process.pid for r in self._running.values() if r.task.future is future and not r.done), None)

    def stats(self) -> dict[str, int]:
        """Tasks queued, running, finished ok or failed, and deaths since the start (for /metrics)."""
        with self._lock:
            return {"queued": len(self._queue), "running": len(self._running), "ok": self.finished["ok"],
                    "failed": self.finished["failed"], "worker_deaths": self.deaths,
                    "by_worker": {"local": self.finished["ok"]} if self.finished["ok"] else {}}

    def worker_of(self, future: Future) -> str | None:
        """Which process ran the task of `future` ("local pid N"), once it started."""
        with self._lock:
            return self._worker_of.get(future)

    def health(self) -> tuple[bool, str]:
        """(True, summary) when tasks can run; (False, why) when no process can be started."""
        with self._lock:
            if self._unavailable:
                return False, self._unavailable
            if self._shutdown:
                return False, "the conversion executor is shut down"
            return True, f"{len(self._running)} of {self.max_workers} conversion process(es) busy, {len(self._queue)} queued"

    # --- the supervisor thread -------------------------------------------------------------------------
    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _start_ready(self) -> None:
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.max_workers or time.monotonic() < self._retry_at:
                    return
                task = self._queue.popleft()
            if task.future.cancelled():
                continue
            receive, send = self._ctx.Pipe(duplex=False)
            process = self._ctx.Process(target=_child, args=(send, task.fn, task.args, task.kwargs, self.nice), daemon=True)
            try:
                process.start()
            except OSError as exc:  # fork failed (EAGAIN, ENOMEM), the forkserver is gone: the task waits
                receive.close()
                send.close()
                with self._lock:
                    self._unavailable = (f"cannot start a conversion process: {exc}; retrying in {self._backoff:g} s "
                                         "(check free memory and the process limit)")
                    self._retry_at = time.monotonic() + self._backoff
                    self._backoff = min(30.0, self._backoff * 2)
                    self._queue.appendleft(task)
                log.error("%s", self._unavailable)
                return
            except Exception as exc:  # the task itself cannot be sent (unpicklable): only it fails
                receive.close()
                send.close()
                if task.future.set_running_or_notify_cancel():
                    task.future.set_exception(exc)
                continue
            if not task.future.set_running_or_notify_cancel():  # cancelled while its process started
                process.kill()
            send.close()
            with self._lock:
                self._worker_of[task.future] = f"local pid {process.pid}"
                self._running[receive.fileno()] = _Running(task, process, receive)
                if self._unavailable:
                    log.info("conversion processes start again")
                self._unavailable, self._backoff = None, 1.0

    def _supervise(self) -> None:
        while True:
            self._start_ready()
            with self._lock:
                if self._shutdown and not self._running and not self._queue:
                    break
                running = list(self._running.values())
                delay = max(0.05, self._retry_at - time.monotonic()) if self._queue and self._unavailable else None
            objects: list[Any] = [self._wake_r]
            for r in running:
                objects.append(r.process.sentinel)
                if not r.done:
                    objects.append(r.conn)
            ready = wait(objects, timeout=delay)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for r in running:
                if not r.done and (r.conn in ready or r.process.sentinel in ready):
                    self._receive(r)
                if r.process.sentinel in ready:
                    self._reap(r)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _receive(self, r: _Running) -> None:
        try:
            if not r.conn.poll():
                return
            ok, value = r.conn.recv()
        except (EOFError, OSError):
            return  # the process ended without a result: _reap says why
        r.done = True
        if ok:
            r.task.future.set_result(value)
        else:
            r.task.future.set_exception(value)

    def _reap(self, r: _Running) -> None:
        r.process.join()
        if not r.done:
            self._receive(r)
        with self._lock:
            self._running.pop(r.conn.fileno(), None)
        r.conn.close()
        if not r.done:
            r.done = True
            death = WorkerDied(r.process.exitcode, r.process.pid)
            self.deaths += 1
            log.error("conversion process %s: %s", r.process.pid, death.problem)
            if self.on_death is not None:
                try:
                    self.on_death(death)
                except Exception:  # metrics must not stop the supervisor
                    log.exception("death hook failed")
            r.task.future.set_exception(death)
        r.process.close()


def run_in_fork(fn: Callable[..., Any], /, *args: Any, nice: int = 0, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a child forked from the calling thread; its result, its exception, or WorkerDied.

    The same isolation as a task of IsolatedProcessExecutor (a crash or the OOM killer ends the
    child only and is reported as WorkerDied; the child's memory goes back to the system when it
    ends) without its fixed cost: a forkserver is a fresh interpreter that imports the converter
    again (~0.4 s, more than a small slide's whole conversion), a fork of a process that has it
    imported takes milliseconds, and the arguments need no pickling. For `wsi-node convert` of one
    series (issue 14).

    Only from a process with no other thread (RuntimeError otherwise): a fork copies one thread,
    and a lock another thread held at that moment would stay locked in the child forever (why the
    executor forks from a forkserver, see make_executor).
    """
    if threading.active_count() != 1:
        raise RuntimeError(f"run_in_fork needs a single-threaded process; {threading.active_count()} threads run")
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args, kwargs, nice), daemon=True)
    outcome: tuple[bool, Any] | None = None
    try:
        try:
            process.start()
        finally:
            send.close()  # the child holds its own end: EOF here once it is gone
        # The result first (a large one would fill the pipe while the child waits to exit), then the exit.
        wait([receive, process.sentinel])
        try:
            if receive.poll():
                outcome = receive.recv()
        except (EOFError, OSError):
            pass  # the child ended without a result
        process.join()
    finally:
        receive.close()
        if process.is_alive():  # the parent was interrupted (Ctrl-C reaches the child too: it cleans up)
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
    if outcome is None:
        raise WorkerDied(process.exitcode, process.pid)
    ok, value = outcome
    if ok:
        return value
    raise value


def make_executor(max_workers: int, start_method: str = "forkserver", nice: int = 0) -> Executor:
    """The local executor: one fresh process per task, at most `max_workers` at once, each at `nice`
    (see BACKGROUND_NICE).

    Processes start from a forkserver that has the converter preloaded, whatever `start_method`
    asks: the executor forks from its own supervisor thread, and forking a process that runs
    other threads can deadlock the child on a lock one of them held (seen with "fork": children of
    the one-shot CLI hung). "fork" is accepted for the callers that ask for it and means
    forkserver; the server costs about 0.3 s once per executor.
    """
    del start_method  # see above: always forkserver
    return IsolatedProcessExecutor(max_workers, "forkserver", preload=("converter.conversion.convert",), nice=nice)
