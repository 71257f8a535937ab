"""Start of the Dask executor (issue 13): connect, configure the scheduler, check the shared-path contract.

Split from converter.executors.dask (the executor itself) to keep both modules small. At start the
node connects to the scheduler, waits for a worker, sets allowed-failures to 0 on the scheduler
(every worker death costs one of the node's max_attempts), writes probe files into its folders and
asks every worker to read them at the same paths (docs/scale-out.md, the shared-path contract), and
decides whether to annotate tasks with a `memory` resource: only when every connected worker
declares one (`dask worker --resources memory=4e9`), since a task asking for a resource no worker
has would wait forever; for the same reason a task never asks for more than the largest declared value.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Iterable

from config.errors import ConfigError
from converter.executors.dask import CONTRACT_FIX, PROBE_PREFIX, DaskExecutor, import_distributed

log = logging.getLogger("wsi_node.executor")


# --- start: connect, configure the scheduler, check the shared-path contract --------------------------

def _probe_on_worker(probes: list[tuple[str, str]], writable: list[str]) -> list[str]:
    """Runs on every worker (Client.run): what of the node's folders this worker does not see as the node does."""
    problems = []
    for path, token in probes:
        try:
            content = Path(path).read_text()
        except OSError as exc:
            problems.append(f"cannot read the probe file {path} the node wrote ({exc.strerror or exc})")
            continue
        if content != token:
            problems.append(f"{path} holds other content than the node wrote: another folder at the same path")
    for folder in writable:
        test = Path(folder) / f"{PROBE_PREFIX}{uuid.uuid4().hex}.w"
        try:
            test.write_text("w")
            test.unlink()
        except OSError as exc:
            problems.append(f"cannot write into {folder} ({exc.strerror or exc})")
    return problems


def check_shared_paths(client: Any, readable: Iterable[Path], writable: Iterable[Path]) -> None:
    """Write a probe file into each folder, ask every worker to read it; ConfigError naming path and worker."""
    probes: list[tuple[str, str]] = []
    try:
        for folder in readable:
            token = uuid.uuid4().hex
            path = Path(folder).resolve() / f"{PROBE_PREFIX}{token}"
            path.write_text(token)
            probes.append((str(path), token))
        answers = client.run(_probe_on_worker, probes, [str(Path(w).resolve()) for w in writable], on_error="return")
    finally:
        for path, _ in probes:
            Path(path).unlink(missing_ok=True)
    problems = []
    for worker, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            problems.append(f"Dask worker {worker}: the check failed ({type(answer).__name__}: {answer})")
        else:
            problems.extend(f"Dask worker {worker}: {p}" for p in answer)
    if problems:
        raise ConfigError("the Dask workers do not see the node's folders at the same paths: " + "; ".join(problems) + ".",
                          CONTRACT_FIX)


def make_dask_executor(max_workers: int, readable: Iterable[Path], writable: Iterable[Path],
                       address: str | None = None, connect_timeout: float = 30.0, workers_timeout: float = 60.0,
                       serving: Path | None = None) -> DaskExecutor:
    """Connect to the scheduler (`address`, else Dask's own setting DASK_SCHEDULER_ADDRESS / scheduler-address),
    wait for a worker, set allowed-failures to 0 on the scheduler, check the shared paths. ConfigError on failure.
    With `serving`, conversions are staged there and published by the node (converter.executors.staging)."""
    distributed = import_distributed()
    import dask

    address = address or dask.config.get("scheduler-address", None)
    if not address:
        raise ConfigError("--executor dask: the Dask scheduler's address is not set.",
                          "set DASK_SCHEDULER_ADDRESS=tcp://HOST:8786 (Dask's own setting) in the node's environment")
    try:
        client = distributed.Client(address, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--executor dask: cannot reach the Dask scheduler at {address} ({exc}).",
                          "start it (dask scheduler --port 8786) or fix DASK_SCHEDULER_ADDRESS") from None
    try:
        try:
            client.wait_for_workers(1, timeout=workers_timeout)
        except TimeoutError:
            raise ConfigError(f"--executor dask: no Dask worker connected to the scheduler {address} within "
                              f"{workers_timeout:g} s.", f"start workers: dask worker {address} --nthreads 1") from None
        before = client.run_on_scheduler(_set_allowed_failures, 0)
        if before != 0:
            log.warning("the Dask scheduler %s had distributed.scheduler.allowed-failures=%s; set to 0 so that every "
                        "worker death costs one of the node's max_attempts (set DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 "
                        "where the scheduler starts, so a restarted scheduler has it too)", address, before)
        check_shared_paths(client, readable, writable)
    except BaseException:
        client.close()
        raise
    info = client.scheduler_info().get("workers", {})
    resources = workers_declare_memory(info)
    log.info("conversions run on the Dask scheduler %s (%d worker(s) now, at most %d conversion(s) at once; %s)",
             address, len(info), max_workers, "tasks ask for their memory budget as the worker resource `memory`"
             if resources else "no worker declares a `memory` resource: tasks carry no resource annotation")
    return DaskExecutor(client, max_workers, serving=serving, resources=resources)


def workers_declare_memory(workers: dict[str, Any]) -> float:
    """The largest `memory` resource when every worker (scheduler_info()["workers"]) declares one, else 0."""
    declared = [(w.get("resources") or {}).get("memory") for w in workers.values()]
    return float(max(declared)) if declared and all(d is not None for d in declared) else 0.0


def _set_allowed_failures(value: int, dask_scheduler: Any = None) -> int:
    """On the scheduler (Client.run_on_scheduler): set allowed_failures, return what it was."""
    before = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = value
    return before


__all__ = ["check_shared_paths", "make_dask_executor", "workers_declare_memory"]
