"""Received bytes on their way to disk: space-guarded temporary files in `inbox/.incoming/`.

The one place where the network receivers (DIMSE C-STORE in dimse.py, STOW-RS parts in
stow_body.py) turn bytes into a temporary file. An `IncomingFile` knows how much room is left:
it asks the file system (os.statvfs of the inbox) when it is opened, again every few MB, and
whenever the bytes written would come within reach of the reserve. When free space is below
the reserve, when the instance would cross it, when the instance is over the size cap, or when
the disk fills in the middle (ENOSPC/EDQUOT), it switches to *discarding*: the temporary file is
removed at once, the rest of the instance is read and thrown away (so the association or
request stays usable and the sender gets a status: PS3.4 B.2.3 0xA700 Refused: Out of
Resources), and `refusal` says why in a sentence fit for an ErrorComment (no file path).

`IncomingFiles` is the registry of live temporary files per owner (one DIMSE association, one
HTTP request): when the owner ends, however it ends (release, abort, closed socket, failed
request), `release(owner)` removes whatever is left. Leftovers of a crash are removed at node
start by InstanceStore.clean_incoming (scp/storage.py); this module does not duplicate that.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from converter.inbox.receiving import ReceivingMark
from scp.write_behind import WriteBehind

log = logging.getLogger("wsi_node.incoming")

CHECK_EVERY = 4 << 20
"""Free space is asked again after this many bytes even when far from the reserve."""
WRITE_BEHIND_FROM = 8 << 20
"""Instances up to this size are written by the receiving thread itself (a thread would cost more than it saves)."""


@dataclass(frozen=True)
class SpaceRules:
    """Where temporary files go and what they may use."""

    folder: Path
    """inbox/.incoming: same file system as the inbox, so placing an instance is a rename."""
    reserve_bytes: int = 1 << 30
    """Free space that must remain on the inbox's file system (--disk-reserve-mb)."""
    max_instance_bytes: int = 0
    """Largest instance (DIMSE data set or STOW-RS part) accepted; 0: no cap (--max-instance-mb)."""
    mark: Path | None = None
    """The receivers' mark (converter.inbox.receiving), touched while bytes arrive, so that conversions yield the disk."""

    def free_bytes(self) -> int:
        return free_bytes(self.folder)


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer can still use on `folder`'s file system (statvfs f_bavail, not f_bfree).

    The one measure of free space for every receiver check (this module and InstanceStore.has_room):
    shutil.disk_usage().free counts blocks reserved for root, which the node cannot count on.
    """
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


class _Flusher:
    """What pynetdicom calls as `file.flush()`: writes are unbuffered, so there is nothing to flush."""

    @staticmethod
    def flush() -> None:
        pass


class IncomingFile:
    """One instance being received: a temporary file that turns into a discard when room runs out.

    Offers what pynetdicom's chunked receive uses of a NamedTemporaryFile (`write`, `name`,
    `file.flush()`, `close`), so the DIMSE receiver can hand it to pynetdicom as is.
    """

    file = _Flusher()
    write_behind_from = WRITE_BEHIND_FROM
    """Once the instance reaches this size, the rest is written by a scp.write_behind thread."""

    def __init__(self, rules: SpaceRules, registry: "IncomingFiles | None" = None, owner: object = None,
                 prefix: str = "in-", suffix: str = ".dcm") -> None:
        self.rules = rules
        self.registry = registry
        self.owner = owner
        self.written = 0
        """Bytes of this instance received so far (kept counting after a discard)."""
        self.refusal = ""
        """Why the instance is being discarded ("" while it is being kept): a short sentence."""
        self.reason = ""
        """The refusal as a metric key: "no-space", "too-large" or "error"."""
        self.errno = 0
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._free_at_check = 0
        self._written_at_check = 0
        self._behind: WriteBehind | None = None
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=rules.folder)
        self.name = name
        self.path = Path(name)
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        self._mark = ReceivingMark(rules.mark) if rules.mark is not None else None
        if registry is not None:
            registry.add(owner, self)
        self._check_room(0, at_open=True)

    # --- state -----------------------------------------------------------------------------------
    @property
    def discarding(self) -> bool:
        return bool(self.refusal)

    @property
    def kept(self) -> bool:
        return not self.refusal

    # --- writing ---------------------------------------------------------------------------------
    def write(self, data) -> int:
        n = len(data)
        if self._mark is not None:
            self._mark.touch()
        if self.refusal:
            self.written += n
            return n
        if self._fd is None:  # removed meanwhile (its owner ended, from another thread): the rest is thrown away
            self.written += n
            self.discard("the transfer ended before the instance was complete", "error")
            return n
        cap = self.rules.max_instance_bytes
        if cap and self.written + n > cap:
            self.written += n
            self.discard(f"instance over the size limit of {_mb(cap)} MB", "too-large")
            return n
        self._check_room(n)
        if self.refusal:
            self.written += n
            return n
        if self._behind is None and self.written + n >= self.write_behind_from:
            self._behind = WriteBehind(self._fd, self.written)
        behind = self._behind
        if behind is not None:
            self.written += n
            if not behind.put(data):  # a write failed, or the file was removed meanwhile (owner ended)
                self._write_failed(behind.error)
            return n
        view = memoryview(data)
        done = 0
        try:
            while done < n:
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self.written += n
            self._write_failed(exc)
            return n
        self.written += n
        return n

    def _queued(self) -> int:
        behind = self._behind
        return behind.pending if behind is not None else 0

    def _write_failed(self, exc: OSError | None) -> None:
        code = exc.errno if exc is not None else 0
        self.errno = code or 0
        if code in (errno.ENOSPC, errno.EDQUOT):
            self.discard("disk full while receiving")
        else:
            self.discard(f"write failed ({errno.errorcode.get(code, code)})", "error")

    def _check_room(self, n: int, at_open: bool = False) -> None:
        """Ask statvfs when opening, every CHECK_EVERY bytes, and when `n` more bytes could reach the reserve."""
        reserve = self.rules.reserve_bytes
        since = self.written - self._written_at_check
        estimate = self._free_at_check - since - n
        if not at_open and since + n < CHECK_EVERY and estimate >= reserve + CHECK_EVERY:
            return
        try:
            disk = self.rules.free_bytes()
        except OSError as exc:  # the inbox file system went away: nothing can be stored
            self.errno = exc.errno or 0
            self.discard("cannot check free disk space", "error")
            return
        free = disk - self._queued()  # bytes queued for the writer thread will take room too
        self._free_at_check, self._written_at_check = free, self.written
        if disk < reserve and (at_open or free - n < reserve):
            self.discard(f"free disk below the reserve of {_mb(reserve)} MB")
        elif free - n < reserve:
            self.discard(f"instance would cross the disk reserve of {_mb(reserve)} MB" if reserve else "not enough free disk for the instance")

    # --- ending ----------------------------------------------------------------------------------
    def discard(self, reason: str, key: str = "no-space") -> None:
        """Switch to discarding: the temporary file goes at once, the rest of the instance is ignored."""
        if not self.refusal:
            self.refusal, self.reason = reason, key
            log.debug("receiving %s: %s; the rest of the instance is read and discarded", self.path.name, reason)
        self._close_fd()
        self.remove()

    def close(self) -> None:
        """The instance is complete: every byte is written (or the write failure is a refusal); the file stays for the store step."""
        if self._behind is not None and self._fd is not None:
            error = self._behind.drain()
            if error is not None:
                self._write_failed(error)  # discards: the file goes, `refusal` says why
        self._close_fd()

    def remove(self) -> None:
        """Remove the temporary file if it is still the one this writer made (never someone else's)."""
        self._close_fd()
        if self._ident is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the temporary file %s: %s", self.path.name, exc)
            self._ident = None
        if self.registry is not None:
            self.registry.forget(self.owner, self)

    def _close_fd(self) -> None:
        if self._behind is not None:
            behind, self._behind = self._behind, None
            behind.stop()  # joined: no write reaches the descriptor after this
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "IncomingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class IncomingFiles:
    """The live temporary files per owner (a DIMSE association, an HTTP request); thread-safe."""

    def __init__(self, rules: SpaceRules) -> None:
        self.rules = rules
        self._live: dict[object, list[IncomingFile]] = {}
        self._lock = threading.Lock()

    def open(self, owner: object, prefix: str = "in-", suffix: str = ".dcm") -> IncomingFile:
        return IncomingFile(self.rules, self, owner, prefix, suffix)

    def add(self, owner: object, f: IncomingFile) -> None:
        with self._lock:
            self._live.setdefault(owner, []).append(f)

    def forget(self, owner: object, f: IncomingFile) -> None:
        with self._lock:
            files = self._live.get(owner)
            if files and f in files:
                files.remove(f)
                if not files:
                    del self._live[owner]

    def release(self, owner: object) -> int:
        """The owner has ended: remove every temporary file it still has. Returns how many."""
        with self._lock:
            files = self._live.pop(owner, [])
        for f in files:
            f.registry = None  # already forgotten
            f.remove()
        return len(files)

    def live(self, owner: object | None = None) -> int:
        with self._lock:
            if owner is not None:
                return len(self._live.get(owner, ()))
            return sum(len(v) for v in self._live.values())


def _mb(n: int) -> int:
    return n >> 20
