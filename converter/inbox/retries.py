"""When the pipeline tries a job again, and what it counts: backoff, attempts, space, faults.

A job can fail for reasons that are not the slide's: no space in serving or the archive, a
conversion process killed by the out-of-memory killer or by hand. Those jobs stay queued and are
retried with a backoff (2 s doubling to 60 s), so a full disk is not hammered and a freed one is
used within a minute. A series whose conversion process dies is retried at most `max_attempts`
times (the count is kept in the state database, so restarts do not reset it: a slide that kills
the node itself cannot loop forever either), then quarantined as a poison slide. Faults are
counted here for /metrics and /readyz. Bad input is not retried: it is quarantined at once, as
before, by the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable

log = logging.getLogger("wsi_node.batch")

RETRY_FIRST_S, RETRY_MAX_S = 2.0, 60.0
FAULTS = ("worker-death", "retry", "poison", "no-space", "error")
"""What is counted: a conversion process died; a job was queued again; a poison slide was
quarantined; a write failed for lack of space; handling one series or result raised."""


class Retries:
    """Retry times per job key (a SeriesInstanceUID, or file:<rel> for a passthrough) and fault counts."""

    def __init__(self, clock: Callable[[], float] = time.time, max_attempts: int = 3) -> None:
        self.clock = clock
        self.max_attempts = max(1, max_attempts)
        self.retry_at: dict[str, float] = {}
        """Job key -> clock time before which it is not tried again."""
        self._backoff: dict[str, float] = {}
        self.attempts: Counter[str] = Counter()
        """Attempts of passthrough jobs (series keep theirs in the state database)."""
        self.space: dict[str, str] = {}
        """Folder role ("serving", "archive") -> why writing there failed for lack of space; cleared by the next success."""
        self.faults: Counter[str] = Counter()
        self.on_fault: Callable[[str], None] | None = None
        """Called with each fault kind (FAULTS), for metrics."""

    def deferred(self, key: str) -> bool:
        """Whether job `key` waits for its next retry."""
        return self.clock() < self.retry_at.get(key, 0.0)

    def next_retry(self) -> float | None:
        """The clock time of the next retry, if any."""
        return min(self.retry_at.values()) if self.retry_at else None

    def defer(self, key: str) -> float:
        """Try `key` again after the next backoff step; returns the delay in seconds."""
        delay = self._backoff[key] = min(RETRY_MAX_S, self._backoff.get(key, RETRY_FIRST_S / 2) * 2)
        self.retry_at[key] = self.clock() + delay
        return delay

    def settled(self, key: str) -> None:
        """`key` finished (published, or failed for good): forget its backoff and attempts."""
        self.retry_at.pop(key, None)
        self._backoff.pop(key, None)
        self.attempts.pop(key, None)

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1
        if self.on_fault is not None:
            try:
                self.on_fault(kind)
            except Exception:  # metrics must never stop the pipeline
                log.exception("fault hook failed")


def poison_reason(uid: str, attempts: int, last: str) -> str:
    """The quarantine reason of a series whose every conversion attempt ended without a result."""
    return (f"poison slide: {attempts} conversion attempt(s) of series {uid} ended without a result; the last: {last}. "
            "Fix: check the slide (its declared size and pixel data) and the system log (dmesg) for the out-of-memory "
            "killer, then move the files back into the inbox to try again.")
