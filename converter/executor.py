"""Where conversions run.

Everything goes through a concurrent.futures Executor so that a distributed
engine (for example Dask distributed's Client.get_executor()) can replace
the local process pool without touching the pipeline. Processes rather than
threads: a codec crash in one slide must not take the node down.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor


def make_executor(max_workers: int) -> Executor:
    # spawn: children start clean, without the parent's threads and open sockets.
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))
