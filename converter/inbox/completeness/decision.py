"""Wait, convert, or convert although the slide looked incomplete: :func:`decide`.

Combines the structural verdict (:mod:`converter.inbox.completeness.structure`) with the series'
activity and the current time (passed in, never read) into a :class:`Decision`, plus the time at
which the answer could change, so the caller can schedule a wake-up instead of polling. Pure: no
I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from converter.inbox.completeness.facts import SeriesActivity
from converter.inbox.completeness.structure import Completeness

DEFAULT_SETTLE_S: Final = 2.0
"""Seconds after the last arrival before a complete series is converted (no association open)."""

DEFAULT_QUIET_S: Final = 60.0
"""Seconds without a new instance after which the series is converted whatever it looks like."""

WAIT: Final = "wait"
CONVERT: Final = "convert"
CONVERT_INCOMPLETE: Final = "convert-incomplete"
ACTIONS: Final = (WAIT, CONVERT, CONVERT_INCOMPLETE)


@dataclass(frozen=True)
class Decision:
    """What to do with the series now, and when to ask again."""

    action: str
    """"wait", "convert" or "convert-incomplete" (convert, but report that the slide looked incomplete)."""
    reasons: tuple[str, ...]
    """Human-readable. For "convert-incomplete" the structural reasons come first."""
    next_check: float | None
    """Absolute time at which the decision could change without a new event (schedule a wake-up
    then); None if only a new event (arrival, association end) can change it."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS} (got {self.action!r})")


def decide(
    completeness: Completeness,
    activity: SeriesActivity,
    now: float,
    settle: float = DEFAULT_SETTLE_S,
    quiet: float = DEFAULT_QUIET_S,
) -> Decision:
    """Wait, convert, or convert although the slide looked incomplete.

    * Converted, and nothing arrived since (``converted_at >= last_arrival``): wait; only a new
      instance can change that. A series that received instances after its conversion is
      re-opened and goes through the rules below again.
    * Complete, no association sending, ``settle`` seconds since the last arrival: convert. The
      settle time absorbs the last instances of a sender that opens a new association per instance.
    * Complete but an association is still sending: wait for it to end (an event). Safety net: a
      sender that never releases its association must not hold the slide forever, so after
      ``quiet`` seconds without an arrival, convert anyway.
    * Incomplete: wait until ``quiet`` seconds without an arrival, then "convert-incomplete" with the
      reasons, whatever the associations: converting what arrived beats holding it forever, and a
      late instance re-opens the series.

    Deadlines are compared as ``now >= last_arrival + delay`` (not ``now - last_arrival >= delay``),
    so a wake-up at exactly ``next_check`` sees the new decision despite float rounding. ``settle``
    is capped at ``quiet``, which is by definition the longest wait.
    """
    if not (settle >= 0 and quiet >= 0):
        raise ValueError(f"settle and quiet must be >= 0 seconds (got settle={settle}, quiet={quiet})")
    last = activity.last_arrival
    if activity.converted_at is not None and activity.converted_at >= last:
        return Decision(WAIT, ("converted; no instance arrived since",), None)
    notes: tuple[str, ...] = ()
    if activity.converted_at is not None:
        notes = ("re-opened: instances arrived after the last conversion",)
    open_assocs = activity.open_associations
    settle_deadline = last + min(settle, quiet)
    quiet_deadline = last + quiet
    quiet_over = now >= quiet_deadline
    assoc_text = f"{open_assocs} association{'s' if open_assocs != 1 else ''} still open"

    if completeness.complete:
        if open_assocs == 0:
            if now >= settle_deadline:
                return Decision(CONVERT, (f"complete; nothing new for {settle:g} s and no association open",) + notes, None)
            return Decision(WAIT, (f"complete; settling until {settle:g} s after the last arrival",) + notes, settle_deadline)
        if quiet_over:
            return Decision(CONVERT, (f"complete; {assoc_text} but nothing arrived for {quiet:g} s",) + notes, None)
        return Decision(
            WAIT,
            (f"complete; {assoc_text}, waiting for it to end (at most {quiet:g} s after the last arrival)",) + notes,
            quiet_deadline,
        )

    if quiet_over:
        extra = (f"nothing arrived for {quiet:g} s",)
        if open_assocs:
            extra += (f"{assoc_text}",)
        return Decision(CONVERT_INCOMPLETE, completeness.reasons + extra + notes, None)
    return Decision(
        WAIT,
        (f"incomplete; waiting up to {quiet:g} s after the last arrival",) + completeness.reasons + notes,
        quiet_deadline,
    )
