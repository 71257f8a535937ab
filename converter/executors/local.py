"""Where conversions run.

Everything goes through a concurrent.futures Executor so that a distributed
engine (for example Dask distributed's Client.get_executor()) can replace
the local process pool without touching the pipeline. Processes rather than
threads: a codec crash in one slide must not take the node down.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Executor, ProcessPoolExecutor


def make_executor(max_workers: int, start_method: str = "forkserver") -> Executor:
    """A local process pool.

    forkserver (default) suits long-running, multi-threaded parents such as the
    node: workers fork from a clean server that has the converter preloaded.
    The one-shot CLI is single-threaded when it creates the pool and uses
    "fork", which saves re-importing the libraries (about 0.7 s) per run.
    """
    if start_method == "fork" and threading.active_count() > 1:
        # Forking a process that runs other threads can deadlock the child on a lock one of them held.
        start_method = "forkserver"
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["converter.conversion.convert"])
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=ctx)
