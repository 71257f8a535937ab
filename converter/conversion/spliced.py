"""Writing the copied levels into a TIFF whose structure is written: copy, checks, early fsync.

Why threads: the kernel copies a level's frames (converter.tiff.splice) with the GIL released,
so the frame checks (converter.conversion.copy_frames) run beside it on the other core instead
of before it; a failed check stops the copy at its next chunk and the error is raised as before,
so nothing is published (the temporary file is removed by converter.conversion.run). Once the
tiles point at the frames, the fsync of the file starts in the background while the output is
verified and colour-checked; its result is collected before the rename (`Background.join`), so an
I/O error reported to that fsync is not lost (Linux reports a write-back error once per open file).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from converter.conversion.copy_frames import PlannedCopy
from converter.conversion.report import ConversionReport
from converter.durable import fsync_file
from converter.tiff.splice import append_levels, point_tiles


class Background:
    """`fn(*args)` in a thread; join() waits and returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="wsi-node-splice", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to join(): the caller decides
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def join(self) -> Any:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._value


def _nothing() -> None:
    return None


def write_spliced(tmp: Path, copies: dict[int, PlannedCopy], report: ConversionReport) -> tuple[Background, dict[int, int]]:
    """Copy the levels' frames into `tmp` (IFD index -> planned copy), checking every frame meanwhile.

    Returns the background fsync of `tmp` (a no-op when nothing was copied; join() it before the
    rename) and the tile bytes of each spliced IFD (for the report, without reading the tags back).
    """
    if not copies:
        return Background(_nothing), {}
    t = time.monotonic()
    stop = threading.Event()
    copying = Background(append_levels, tmp, {page: c.splice for page, c in copies.items()}, stop)
    try:
        for planned in copies.values():
            planned.check()
    except BaseException:
        stop.set()
        copying.wait()
        raise
    report.timings["copy_check"] = round(time.monotonic() - t, 3)
    placed = copying.join()
    point_tiles(tmp, placed)
    report.timings["splice"] = round(time.monotonic() - t, 3)
    return Background(fsync_file, tmp), {page: int(counts.sum()) for page, (_offsets, counts) in placed.items()}
