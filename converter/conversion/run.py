"""The wrapper every conversion runs in: scratch names, publication of the report, errors, cleanup.

Both kinds of conversion (a DICOM series in convert.py, a plain TIFF in plain_tiff.py) write
the TIFF under a temporary name beside the output and spool tiles to a work folder there, and
must end the same way: the sidecar JSON is written only after the TIFF was published; every
failure becomes the report's `error` instead of an exception (the executor runs one
conversion per task and needs a plain value back); the scratch files go whatever happened;
`timings.total` is the whole wall time. Keeping that in one place keeps the two alike.

Two failures are not about the slide and get a status of their own, so that the pipeline can
tell them apart from bad input: "no-space" (ENOSPC/EDQUOT anywhere while writing; the series
stays queued and is retried when space returns) and "out-of-memory" (the conversion exceeded its
memory budget, converter.executors.local.MemoryBudget). Whatever failed, nothing partial stays in
serving: the temporary TIFF, the work folder, the sidecar's temporary file, and a TIFF that was
renamed into place but whose sidecar could not be written, are removed. A process killed outright
cannot clean up: the pipeline removes that conversion's scratch files (scratch_files) after the
death, and at every start; `wsi-node convert` removes those of killed commands from its output
folder when it starts (stale_scratch).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from config.errors import WsiNodeError
from converter.conversion.report import ConversionReport
from converter.durable import atomic_write_text, temp_name

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def sidecar_path(output: Path) -> Path:
    """Where the report of `output` is published: the same name with .json."""
    return output.with_suffix(".json")


def run_conversion(output: Path, report: ConversionReport, body: Callable[[Path, Path], None],
                   describe: Callable[[Exception], str]) -> ConversionReport:
    """Run `body(work, tmp)`, which must write and publish `output`; then publish the report.

    `work` is a scratch folder (created by `body` when it needs it) and `tmp` the temporary
    name of the TIFF, both beside `output` and removed afterwards. A `WsiNodeError` (bad input,
    no space, failed verification) becomes `report.error` as it is; any other exception is
    turned into the error text by `describe` (which may also log it). Never raises for those.
    """
    t0 = time.monotonic()
    work = output.parent / f".{output.name}.{os.getpid()}.work"
    tmp = output.parent / f".{output.name}.{os.getpid()}.tmp"
    published = False
    try:
        body(work, tmp)
        published = True
        report.status = "published"
        report.output = str(output)
        report.timings["total"] = round(time.monotonic() - t0, 3)
        atomic_write_text(sidecar_path(output), report.to_json())
    except BaseException as exc:
        if published:  # the TIFF is in place but its sidecar is not: take it back, nothing half-published
            report.status, report.output = "failed", None
            output.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        no_space = _in_chain(exc, lambda e: isinstance(e, OSError) and e.errno in NO_SPACE)
        no_memory = _in_chain(exc, lambda e: isinstance(e, MemoryError))
        if no_space is not None:
            report.status = "no-space"
            report.error = (f"no space left on the filesystem of {output.parent} while writing {output.name} "
                            f"({_free_mb(output.parent)} MB free): {no_space.strerror}. Nothing was published. "
                            "Fix: free space there; the series is converted when space returns.")
        elif no_memory is not None:  # also behind a DecodeError: a frame that could not be allocated is not corrupt
            report.status = "out-of-memory"
            report.error = (f"the conversion needed more memory than its budget of {_budget_mb()} MB "
                            f"({no_memory or 'allocation failed'}). "
                            "Fix: check the slide's declared size (TotalPixelMatrixColumns/Rows); if it is real, raise "
                            "conversion_memory_mb and move the files back into the inbox.")
        elif isinstance(exc, WsiNodeError):
            report.error = str(exc)
        else:  # a bug or an unexpected library failure: still a clear, per-conversion failure
            report.error = describe(exc)
    finally:
        for path in (work, tmp, temp_name(sidecar_path(output))):
            _remove(path)
        report.timings["total"] = round(time.monotonic() - t0, 3)
    return report


def scratch_files(output: Path, pid: int | None = None) -> Iterator[Path]:
    """The temporary files and work folders of conversions to `output` (of process `pid`, or any)."""
    tag = str(pid) if pid is not None else "*"
    for pattern in (f".{output.name}.{tag}.work", f".{output.name}.{tag}.tmp", f".{sidecar_path(output).name}.{tag}.tmp"):
        yield from output.parent.glob(pattern)


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove what stale_scratch finds; returns what went."""
    return _remove_all(stale_scratch(folder))


def remove_scratch(output: Path, pid: int | None = None) -> list[Path]:
    """Remove what scratch_files finds (after a conversion process was killed); returns what went."""
    return _remove_all(list(scratch_files(output, pid)))


def _remove_all(paths: list[Path]) -> list[Path]:
    for path in paths:
        _remove(path)
    return paths


_SCRATCH = re.compile(r"\.(?P<name>.+\.(?:tiff?|json))\.(?P<pid>[0-9]+)\.(?:tmp|work|early)", re.IGNORECASE)
"""A conversion's scratch name beside its output: .<output>.<pid>.tmp or .work, the sidecar's .<name>.json.<pid>.tmp,
the command's early copy .<output>.<pid>.early (converter.conversion.early_copy, where O_TMPFILE is refused)."""


def _process_exists(pid: int) -> bool:
    """Whether `pid` is a process that can still write (a zombie cannot: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z"


def stale_scratch(folder: Path) -> list[Path]:
    """Scratch files and folders in `folder` left by conversions whose process no longer exists.

    Why: a command killed outright (SIGKILL, the OOM killer, a power cut) cannot remove its
    temporary TIFF, which may hold gigabytes, and nothing else would; the next command into the
    same folder does. A file whose process still runs (another command converting there now) is
    kept. Only names of this module's pattern are touched: .<name>.tif(f)/.json.<pid>.tmp/.work/.early.
    """
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        m = _SCRATCH.fullmatch(path.name)
        if m is not None and int(m["pid"]) != os.getpid() and not _process_exists(int(m["pid"])):
            found.append(path)
    return sorted(found)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _in_chain(exc: BaseException | None, match: Callable[[BaseException], bool]) -> Any:
    """The exception behind `exc` (itself, its cause or context, ten deep) that `match`es, if any."""
    seen = 0
    while exc is not None and seen < 10:
        if match(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _free_mb(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free >> 20
    except OSError:
        return -1


def _budget_mb() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft >> 20)


def started_pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool whose threads all run before the conversion allocates anything big.

    ThreadPoolExecutor starts threads lazily, on submit. Under a memory budget (RLIMIT_DATA) a
    thread that cannot bootstrap dies with "MemoryError" printed and no exception in the caller,
    and Thread.start then waits for it forever (CPython 3.11): the conversion would hang instead
    of failing as out-of-memory. So the threads are started here, first, and only when the budget
    leaves room (else MemoryError: reported as out-of-memory); no later submit starts one.
    """
    n = max(1, threads)
    soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
    if soft != resource.RLIM_INFINITY:
        left = soft - data_bytes()
        if left < THREAD_HEADROOM * n:
            raise MemoryError(f"only {max(0, left) >> 20} MB of the memory budget is left for the conversion itself")
    pool = ThreadPoolExecutor(n)
    gate = threading.Barrier(n)
    for f in [pool.submit(gate.wait, 30) for _ in range(n)]:
        f.result()
    return pool


THREAD_HEADROOM = 32 << 20
"""Budget a started conversion must have left per thread before its pool starts (a decoded tile and stacks)."""


def data_bytes() -> int:
    """The process's private writable data now (VmData, what RLIMIT_DATA counts), bytes; 0 where unknown."""
    try:
        with open("/proc/self/status") as fp:
            for line in fp:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0
