"""Where conversions run: concurrent.futures-style executors, and the one place that picks one.

`local` (converter.executors.local): one process per conversion on this machine, the default.
`dask` (converter.executors.dask): tasks on a Dask distributed cluster (issue 13, docs/scale-out.md);
imported only when chosen, because Dask is an optional extra.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

from config.settings import BatchSettings


def make_configured_executor(settings: BatchSettings, start_method: str = "forkserver", nice: int = 0) -> Executor:
    """The executor `settings.executor` names, at most `max_concurrent` conversions at once.

    `nice`: CPU priority of local conversion processes (the node passes local.BACKGROUND_NICE so that
    its receivers come first); Dask workers are other processes, started and prioritised by their operator.

    For dask this connects, waits for a worker and checks the shared-path contract (a ConfigError at
    start when the extra is missing, the scheduler unreachable, or a worker sees other folders).
    Workers read the inbox and the archive (a re-opened series converts from archived originals too)
    and write into serving, where conversions stage under hidden names before the atomic rename.
    """
    if settings.executor == "dask":
        from converter.executors.dask_start import make_dask_executor

        return make_dask_executor(settings.max_concurrent, readable=(Path(settings.inbox), Path(settings.archive),
                                                                     Path(settings.serving)),
                                  writable=(Path(settings.serving),), address=settings.dask_scheduler or None,
                                  serving=Path(settings.serving))
    from converter.executors.local import make_executor

    return make_executor(settings.max_concurrent, start_method=start_method, nice=nice)
