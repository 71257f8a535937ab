"""Byte ranges of source files copied by the kernel into one output file, at places fixed up front.

Why: copy mode is bound by the disk, and the kernel copy of a 4 GB level 0 takes longer than
everything else of a conversion together. Its destination offsets do not depend on the TIFF's
structure when the structure is written last (behind the pixel data, converter.tiff.relocate),
so the copy can start before the series is planned, while the plan, the frame checks and the
structure run on the other core. Each range starts at the same place in a 4 KiB block as in its
source (a file system that shares blocks, XFS or Btrfs reflinks, may then do so), and a large
range at the same place in a 2 MiB span (`place`: the page cache's large folios line up). The copy
runs in one thread (os.copy_file_range releases the GIL; `copy_range` falls back to sendfile and
reads); `cancel` stops it between 64 MiB steps (a frame check failed, or the plan does not want
these bytes), and `join` re-raises its error (ENOSPC included) in the caller. The command line's
copy runs in a process instead (converter.tiff.forked_copier), from the same places.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from converter.durable import start_writeback
from converter.errors import DecodeError

BLOCK = 4096
FOLIO = 2 << 20
"""The largest page-cache folio on x86-64 (the PMD size). A kernel copy whose source and destination
offsets differ by a multiple of it copies whole folios; offsets that agree only modulo 4 KiB made
ext4's copy_file_range of a 3.2 GB level 0 take 1.6-1.8 s instead of 1.2-1.3 s on this VM (the
destination starting 4 KiB after the source's place; 64 KiB multiples were as fast as 2 MiB ones)."""
LARGE_RUN = 64 << 20
"""Ranges from this size on are placed modulo FOLIO: the padding, a hole of under 2 MiB, is under 3 % of
the range; smaller ranges keep the 4 KiB rule (a level of a few KB gains nothing from 2 MiB of padding)."""
HEADER = 16
"""Bytes kept for the TIFF header at the front of the output: a BigTIFF header's size (a classic one uses 8)."""
_STEP = 64 << 20
SHARED_RATE = 16 << 30
"""Bytes per second above which a kernel copy cannot have copied (memory copies run at a few GB/s
here; a shared 64 MiB step took 0.03-0.09 ms on XFS, a copied one 25-34 ms on ext4)."""
_BUFFER = 8 << 20
# copy_file_range refuses across file systems on older kernels (EXDEV), is missing (ENOSYS), or
# refuses a file system or file kind (EINVAL, EOPNOTSUPP, ETXTBSY, EPERM on some FUSE mounts).
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ETXTBSY, errno.EPERM}


@dataclass(frozen=True)
class Run:
    """Bytes [start, stop) of a source file, copied as one range."""

    path: str
    start: int
    stop: int


def _cut(path: str, offset: int) -> DecodeError:
    return DecodeError(f"{path}: the file ended at byte {offset} while its frames were copied; the file is truncated.",
                       "Send or copy the file again.")


def copy_by_reads(src: int, dst: int, src_offset: int, count: int, dst_offset: int, path: str = "source") -> None:
    """Copy with pread/pwrite through one 8 MiB buffer (the last fallback: any file system)."""
    done = 0
    while done < count:
        data = os.pread(src, min(_BUFFER, count - done), src_offset + done)
        if not data:
            raise _cut(path, src_offset + done)
        view, k = memoryview(data), 0
        while k < len(data):
            k += os.pwrite(dst, view[k:], dst_offset + done + k)
        done += len(data)


def copy_by_sendfile(src: int, dst: int, src_offset: int, count: int, dst_offset: int, path: str = "source") -> None:
    """Copy with sendfile(2) (in the kernel, to a regular file since Linux 2.6.33); reads as a fallback."""
    done = 0
    try:
        os.lseek(dst, dst_offset, os.SEEK_SET)
        while done < count:
            n = os.sendfile(dst, src, src_offset + done, count - done)
            if n == 0:
                raise _cut(path, src_offset + done)
            done += n
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        copy_by_reads(src, dst, src_offset + done, count - done, dst_offset + done, path)


def copy_range(src: int, dst: int, src_offset: int, count: int, dst_offset: int, path: str = "source") -> None:
    """Copy `count` bytes inside the kernel (copy_file_range, like cp), falling back where refused.

    ENOSPC and other write errors propagate: the conversion reports them (converter.conversion.run).
    """
    done = 0
    # A file system that shares blocks (XFS, Btrfs: reflinks) shares only whole blocks, and only when
    # both offsets are block-aligned; otherwise the kernel copies every byte. Ranges placed at their
    # source's place in a block (plan_places) are copied up to the next boundary first, so that the
    # rest starts aligned on both sides and is shared, not copied (a 1 GB range: 0.001 s instead of 6 s).
    head = -src_offset % BLOCK if (src_offset - dst_offset) % BLOCK == 0 else 0
    try:
        while done < count:
            step = min(count - done, head - done) if done < head else count - done
            n = os.copy_file_range(src, dst, step, src_offset + done, dst_offset + done)
            if n == 0:
                raise _cut(path, src_offset + done)
            done += n
    except (OSError, AttributeError) as exc:  # AttributeError: no os.copy_file_range on this platform
        if isinstance(exc, OSError) and exc.errno not in _NO_KERNEL_COPY:
            raise
        copy_by_sendfile(src, dst, src_offset + done, count - done, dst_offset + done, path)




@dataclass(frozen=True)
class Placed:
    """A copied range and where it lies in the output."""

    run: Run
    at: int


def max_padding(run: Run) -> int:
    """The span `place` aligns `run` in, which is also the most bytes it may skip before it."""
    return FOLIO if run.stop - run.start >= LARGE_RUN else BLOCK


def place(run: Run, pos: int) -> int:
    """The first offset from `pos` on where `run` goes: at its source's place in a 4 KiB block (reflinks
    share only whole, aligned blocks), and a large run at its source's place in a 2 MiB span (FOLIO)."""
    return pos + (run.start - pos) % max_padding(run)


def plan_places(runs: list[Run], start: int) -> tuple[list[Placed], int]:
    """Destination of every run, from `start` on (see `place`); and the end."""
    placed, pos = [], start
    for run in runs:
        pos = place(run, pos)
        placed.append(Placed(run, pos))
        pos += run.stop - run.start
    return placed, pos


def steps(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """(offset, count) pieces of [start, stop) that end on multiples of `size` (a power of two).

    Why: a kernel copy call that begins inside a page-cache folio of its source copied 1.4x slower
    (level 0 of 3.2 GB in 64 MiB steps: 1.10 s from offsets 622 bytes past a 4 KiB boundary, 0.78 s
    when every step but the first began on a 64 MiB boundary; ext4, this VM).
    """
    out, lo = [], start
    while lo < stop:
        hi = min(stop, (lo // size + 1) * size)
        out.append((lo, hi - lo))
        lo = hi
    return out


def copy_places(places: list[Placed], dst: int, stopped=lambda: False, pace=None) -> None:
    """Copy every place's range into `dst` in 64 MiB steps; `stopped()` is asked before each step.

    `pace(n)` (converter.inbox.receiving.Pace), when given, is called before each step and sleeps
    while receivers write; a step it paced has its write-back started at once, so the bytes go to
    disk at the paced rate instead of as one burst at the final fsync.
    """
    sources: dict[str, int] = {}
    try:
        for p in places:
            src = sources.get(p.run.path)
            if src is None:
                src = sources[p.run.path] = os.open(p.run.path, os.O_RDONLY)
            for lo, n in steps(p.run.start, p.run.stop, _STEP):
                if stopped():
                    return
                at = p.at + lo - p.run.start
                paced = pace is not None and pace(n)
                t0 = time.monotonic()
                copy_range(src, dst, lo, n, at, p.run.path)
                if n >= 1 << 20 and time.monotonic() - t0 < n / SHARED_RATE:
                    # Faster than memory can copy: the file system shared the blocks (copy_range), and
                    # there is no disk bandwidth to leave to the receivers; pacing would only delay.
                    pace = None
                if paced:
                    start_writeback(dst, at, n)
    finally:
        for fd in sources.values():
            os.close(fd)


class Places:
    """What both copiers share: the planned places, lookups, and the zeroing of unused tails."""

    path: Path
    places: list[Placed]
    end: int
    _clear: dict[int, int]

    def where(self, run: Run) -> int | None:
        """Output offset of `run`'s first byte when it lies inside a copied range of the same file, else None."""
        for p in self.places:
            if p.run.path == run.path and p.run.start <= run.start and run.stop <= p.run.stop:
                return p.at + run.start - p.run.start
        return None

    def clear_after(self, stops: dict[int, int]) -> None:
        """After the copy, zero what range `k` held past source byte `stops[k]` (bytes no tile refers to)."""
        self._clear = stops

    def _zero_tails(self, dst: int) -> None:
        for k, stop in self._clear.items():
            p = self.places[k]
            if stop < p.run.stop:
                zeros, at, done = bytes(p.run.stop - stop), p.at + stop - p.run.start, 0
                while done < len(zeros):
                    done += os.pwrite(dst, memoryview(zeros)[done:], at + done)

    def claim(self, tmp: Path) -> None:
        """Make the copy's file the conversion's temporary file `tmp` (a rename; the copy may still run)."""
        if self.path != tmp:
            os.replace(self.path, tmp)
            self.path = tmp


class Copier(Places):
    """The kernel copy of `runs` into `path` (created or truncated), from byte `start` on, in a thread."""

    def __init__(self, path: Path, runs: list[Run], start: int, pace=None) -> None:
        self.path = path
        self.places, self.end = plan_places(runs, start)
        self._pace = pace
        self._clear = {}
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self._dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._thread = threading.Thread(target=self._run, name="wsi-node-copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            copy_places(self.places, self._dst, self._cancel.is_set, self._pace)
        except BaseException as exc:  # handed to join()
            self._error = exc

    def cancel(self) -> None:
        """Stop at the next step and wait; the bytes copied so far stay in the file (the caller removes it)."""
        self._cancel.set()
        self._thread.join()
        self._close()

    def join(self) -> None:
        """Wait for every range; raise the copy's error, if any; then zero what clear_after names."""
        self._thread.join()
        try:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            self._zero_tails(self._dst)
        finally:
            self._close()

    def _close(self) -> None:
        if self._dst >= 0:
            os.close(self._dst)
            self._dst = -1
