"""The early copy of `wsi-node convert`: the same kernel copy, in a process forked before anything heavy is imported.

Why a module of its own: the process, its unnamed output file (O_TMPFILE), its death with the
command (PR_SET_PDEATHSIG) and its reaping are one concept, apart from where the bytes go and
how they are copied (converter.tiff.copier, which both copiers share).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from converter.tiff.copier import Places, Run, copy_places, plan_places


def _libc():
    """The C library, for the two Linux calls Python's os module lacks (linkat's flags, prctl)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _link_unnamed(fd: int, path: Path) -> None:
    """Give the O_TMPFILE file open at `fd` the name `path`: linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW), as
    open(2) describes (os.link does not follow that link, and AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH)."""
    import ctypes

    if _libc().linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, os.fsencode(path), 0x400) != 0:  # AT_FDCWD, AT_SYMLINK_FOLLOW
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent ends (prctl PR_SET_PDEATHSIG, Linux)."""
    try:
        _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


class ForkedCopier(Places):
    """The same copy in a process forked at once, for `wsi-node convert` before it imports anything heavy.

    Why a process: the command line reads every header (pydicom, ~0.2 s to import) and imports the
    conversion engine (~0.1 s) before it forks the conversion (converter.executors.local.run_in_fork,
    which needs a process with one thread, so no copy thread may run in it then); at 150,000 px that
    half second was a sixth of the whole copy. This copy starts right after the arguments are read,
    into a file with no name in the output's folder (O_TMPFILE; a hidden name where the file system
    has no such files); the conversion adopts it by linking (or renaming) it to its own temporary
    name (`claim`), waits for it through a pipe (`join`: its error, ENOSPC included, is raised
    there), or kills it (`cancel`). The copier dies with the command (PR_SET_PDEATHSIG). Only the
    process that forked it reaps it (`dispose`, which also removes a named file nobody claimed).
    """

    def __init__(self, path: Path, runs: list[Run], start: int) -> None:
        self.path = path
        self.places, self.end = plan_places(runs, start)
        self._clear = {}
        self._status: bytes | None = None
        self._owner = os.getpid()
        self.started = time.monotonic()
        """When the copy began (CLOCK_MONOTONIC is one clock for every process on Linux)."""
        self._early = path
        self._disposed = False
        # A file with no name (O_TMPFILE) where the file system allows it: whatever ends the command
        # (SIGKILL included) before a conversion claims it, nothing is left behind. The descriptor is
        # inherited by the conversion process, which links it under its own temporary name.
        self._unnamed: int | None = None
        try:
            self._unnamed = os.open(Path(path).parent, os.O_TMPFILE | os.O_RDWR, 0o644)
            dst = self._unnamed
        except (OSError, AttributeError):
            dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        read, write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the copier: stdlib calls only, then out without the parent's exit handlers
            os.close(read)
            status = b"ok"
            try:
                _die_with(parent)
                copy_places(self.places, dst)
            except OSError as exc:
                status = f"errno {exc.errno} {exc}".encode()
            except BaseException as exc:  # noqa: BLE001 - reported to whoever joins
                status = f"error {type(exc).__name__}: {exc}".encode()
            finally:
                os.write(write, status)
                os._exit(0)
        os.close(write)
        if self._unnamed is None:
            os.close(dst)
        self.pid, self._read = pid, read

    def claim(self, tmp: Path) -> None:
        """Make the copy's file the conversion's temporary file `tmp` (the copy may still run)."""
        if self._unnamed is not None and self.path != tmp:
            _link_unnamed(self._unnamed, tmp)
            os.close(self._unnamed)
            self._unnamed, self.path = None, tmp
        else:
            super().claim(tmp)

    def _wait(self) -> bytes:
        if self._status is None:
            chunks = []
            while chunk := os.read(self._read, 4096):
                chunks.append(chunk)
            os.close(self._read)
            self._status = b"".join(chunks) or b"error the copying process died"
        return self._status

    def cancel(self) -> None:
        """Kill the copy and wait until it is gone; the file stays (the caller or `dispose` removes it)."""
        if self._status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait()
            self._status = b"error cancelled"

    def join(self) -> None:
        """Wait for the copy; raise its error, if any; then zero what clear_after names."""
        status = self._wait().decode(errors="replace")
        if status.startswith("errno "):
            _tag, number, message = status.split(" ", 2)
            raise OSError(int(number), message)
        if status != "ok":
            raise RuntimeError(f"the early copy into {self.path} failed: {status[6:]}")
        if self._unnamed is not None:  # not claimed yet: the file has no name
            self._zero_tails(self._unnamed)
            return
        dst = os.open(self.path, os.O_RDWR)
        try:
            self._zero_tails(dst)
        finally:
            os.close(dst)

    def dispose(self) -> None:
        """In the forking process, at the end: stop and reap the copier, remove its file unless claimed."""
        if os.getpid() != self._owner or self._disposed:
            return
        self._disposed = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        if self._status is None:
            os.close(self._read)
            self._status = b"error disposed"
        if self._unnamed is not None:
            os.close(self._unnamed)  # the last reference: an unclaimed unnamed file is gone now
            self._unnamed = None
        Path(self._early).unlink(missing_ok=True)  # gone already when a conversion claimed (renamed) it
