"""Receivers first: a mark the receivers touch while bytes arrive, and the pace conversions keep meanwhile.

Why: a copy-mode conversion moves gigabytes through the page cache and the disk at the kernel's
full speed (~2-3 GB/s into the page cache here), and a sender pushing at the same time got about
0.8x its throughput to an idle node: the scanner or PACS waits, a slide's conversion does not
need to hurry by comparison (issue 14, target 3: receiving continues at full speed for other
senders). The receivers (scp/incoming.py) touch `state/receiving.mark` at most every 0.2 s while
they write an instance; a conversion's kernel copy (converter.tiff.copier) asks, before each
64 MiB step, whether the mark is younger than a second, and if so keeps to YIELD_RATE and starts
the write-back of what it copied (so no burst of dirty pages is left for the final fsync while a
receiver fsyncs its own instances). The mark is a file, not shared memory, so that conversion
processes (a forkserver's children) need nothing but its path; Dask workers on other machines
find no mark of theirs and copy at full speed on their own disks. In the state folder, not the
inbox, which holds instances only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MARK_NAME = "receiving.mark"
TOUCH_EVERY = 0.2
"""Seconds between two touches of the mark by one receiver (a stat per 64 MiB is the reader's cost)."""
FRESH = 1.0
"""A mark younger than this means a receiver is writing now."""
YIELD_RATE = 128 << 20
"""Bytes per second a conversion copies while a receiver writes (a tenth of this disk's rate or less)."""


def mark_path(state_dir: Path) -> Path:
    """The mark of the node whose state folder is `state_dir` (its receivers and its conversions agree on it)."""
    return Path(state_dir) / MARK_NAME


class ReceivingMark:
    """The receivers' side: `touch()` on every write; the file's time is set at most every TOUCH_EVERY s."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._last = 0.0

    def touch(self) -> None:
        now = time.monotonic()
        if now - self._last < TOUCH_EVERY:
            return
        self._last = now
        try:
            os.utime(self.path)
        except FileNotFoundError:
            try:
                self.path.touch()
            except OSError:
                pass  # the mark only paces conversions; receiving never fails for it
        except OSError:
            pass


def receiving(path: str | Path, now: float | None = None) -> bool:
    """Whether a receiver touched the mark at `path` within the last FRESH seconds."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - mtime < FRESH


class Pace:
    """The copy's side: called before each step of `n` bytes; sleeps while receivers write, to YIELD_RATE."""

    def __init__(self, mark: str | Path, rate: int = YIELD_RATE) -> None:
        self.mark, self.rate = str(mark), rate
        self.slept = 0.0
        self._last: float | None = None

    def __call__(self, n: int) -> bool:
        """Wait as long as a step of `n` bytes may take while a receiver writes; True when it yielded."""
        now = time.monotonic()
        if not receiving(self.mark):
            self._last = now
            return False
        if self._last is not None:
            wait = n / self.rate - (now - self._last)
            if wait > 0:
                time.sleep(wait)
                self.slept += wait
        self._last = time.monotonic()
        return True
