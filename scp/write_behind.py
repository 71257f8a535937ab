"""Writing a received instance from its own thread, with the disk's write-back started as the data arrives.

Why: a receiver that writes each buffer itself waits for every copy into the page cache between two
network reads, and the fsync owed before the success answer (PS3.4 B.2.3: success only once the
instance is stored) then waits for the whole instance to reach the disk, about 0.4 s for 1.1 GB on
this machine's disk, after the last byte came in. Here the receiving thread only queues its buffers
(references, no copy: the caller hands buffers it will not change) and goes back to the network; one
writer thread per file writes them with os.writev, and every WRITEBACK_EVERY bytes asks the kernel to
start writing that range to disk (Linux sync_file_range SYNC_FILE_RANGE_WRITE, asynchronous; where it
is missing, os.fdatasync in this thread) and waits for the range before it, so that at most two
ranges are dirty. The data stays in the page cache, where the validation before the answer (every
frame's item header, PS3.5 A.4) and the conversion read it. (O_DIRECT writes were tried: about twice as
fast as page-cache writes on a loaded machine, but the validation then reads the item headers from the
disk, 0.4-0.6 s for a 1.1 GB instance against 0.02 s from the cache, and the conversion reads all of it.) The final fsync, which stays where it was (scp/storage.py, before the answer), then
has only the tail left. sync_file_range makes nothing durable by itself (no metadata, no device cache
flush); durability still comes from that fsync.

Memory is bounded: a producer waits while more than MAX_PENDING bytes are queued (back-pressure to the
sender through TCP). A write error stops the writer; the producer learns it from `put` or `drain` and
decides (IncomingFile turns it into a discard). `stop` always joins the thread before the caller closes
the descriptor, so no write can reach a closed (or reused) file descriptor.
"""

from __future__ import annotations

import os
import threading
from collections import deque

from converter.durable import start_writeback

MAX_PENDING = 16 << 20
"""Bytes queued and not yet written, at most (the receiver waits beyond it): the RSS a large instance may add."""
WRITEBACK_EVERY = 32 << 20
"""Bytes per write-back range."""
IOV_BATCH = 512
"""Buffers per os.writev call, at most (below IOV_MAX, 1024 on Linux)."""
BATCH_BYTES = 4 << 20
"""Bytes per os.writev call, at most: what is queued meanwhile waits less than a whole queue's write."""

class WriteBehind:
    """One writer thread for one open file descriptor, fed by one producer thread."""

    def __init__(self, fd: int, offset: int = 0, max_pending: int = MAX_PENDING,
                 writeback_every: int = WRITEBACK_EVERY) -> None:
        self.fd = fd
        self.error: OSError | None = None
        """The first write error; nothing more is written after it."""
        self.written = offset
        self._queue: deque = deque()
        self._pending = 0
        self._max_pending = max_pending
        self._every = writeback_every
        self._range_start = offset  # start of the range not yet handed to write-back
        self._previous: tuple[int, int] | None = None  # the range handed over last, waited for next time
        self._stopping = False
        self._busy = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="incoming-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Bytes queued and not yet written."""
        return self._pending

    def put(self, data) -> bool:
        """Queue `data` (bytes, bytearray or memoryview, not changed afterwards); False once a write has failed."""
        n = len(data)
        with self._cond:
            while self._pending > self._max_pending and self.error is None and not self._stopping:
                self._cond.wait()
            if self.error is not None or self._stopping:
                return False
            self._queue.append(data)
            self._pending += n
            if len(self._queue) == 1:
                self._cond.notify_all()
        return True

    def drain(self) -> OSError | None:
        """Wait until everything queued is written (or a write failed); returns the error, if any."""
        with self._cond:
            while (self._queue or self._busy) and self.error is None:
                self._cond.wait()
            return self.error

    def stop(self) -> None:
        """Stop the thread, dropping what is still queued; returns once it has ended (the fd is no longer used)."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._pending = 0
            self._cond.notify_all()
        self._thread.join()

    # --- writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch, size = [], 0
                while self._queue and len(batch) < IOV_BATCH and size < BATCH_BYTES:
                    batch.append(self._queue.popleft())
                    size += len(batch[-1])
                self._busy = True
            try:
                self._write(batch)
                error = None
            except OSError as exc:
                error = exc
            with self._cond:
                self._busy = False
                self._pending -= size
                if error is not None:
                    self.error = error
                    self._queue.clear()
                    self._pending = 0
                self._cond.notify_all()
                if error is not None:
                    return

    def _write(self, batch: list) -> None:
        views = [memoryview(b) for b in batch]
        while views:
            done = os.writev(self.fd, views)
            self.written += done
            while views and done >= len(views[0]):
                done -= len(views[0])
                views.pop(0)
            if done:
                views[0] = views[0][done:]
        if self.written - self._range_start >= self._every:
            start, length = self._range_start, self.written - self._range_start
            start_writeback(self.fd, start, length)
            if self._previous is not None:  # at most two ranges dirty: wait for the one before
                start_writeback(self.fd, *self._previous, wait=True)
            self._previous = (start, length)
            self._range_start = self.written
