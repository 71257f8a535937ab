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
RULES: Final = ("converted", "commitment", "structure", "association-end", "quiet-period")


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
    rule: str = ""
    """Which rule decided (RULES): converted, commitment, structure, association-end, quiet-period."""
    waiting_for: str = ""
    """While waiting: what the node waits for, in words (empty when converting)."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS} (got {self.action!r})")


def decide(
    completeness: Completeness,
    activity: SeriesActivity,
    now: float,
    settle: float = DEFAULT_SETTLE_S,
    quiet: float = DEFAULT_QUIET_S,
    association_end_completes: bool = True,
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

    Completion signals (the sender saying "that was everything"), checked before the rules above:

    * Commitment: a storage commitment request referenced every instance received, all committed,
      and nothing arrived after it (``committed_at >= last_arrival``): if every level received is
      complete (the small-level rule aside), convert now, without settle or quiet period.
    * Association end (``association_end_completes``, the sender's profile): no association open,
      at least one that delivered instances has ended, and every level received is complete:
      convert ``settle`` seconds after the last arrival, whatever the smallest level. With a level
      still incomplete this rule does not apply: the quiet period decides.

    Deadlines are compared as ``now >= last_arrival + delay`` (not ``now - last_arrival >= delay``),
    so a wake-up at exactly ``next_check`` sees the new decision despite float rounding. ``settle``
    is capped at ``quiet``, which is by definition the longest wait.
    """
    if not (settle >= 0 and quiet >= 0):
        raise ValueError(f"settle and quiet must be >= 0 seconds (got settle={settle}, quiet={quiet})")
    last = activity.last_arrival
    if activity.converted_at is not None and activity.converted_at >= last:
        return Decision(WAIT, ("converted; no instance arrived since",), None, "converted", "a new instance of the series")
    notes: tuple[str, ...] = ()
    if activity.converted_at is not None:
        notes = ("re-opened: instances arrived after the last conversion",)
    open_assocs = activity.open_associations
    settle_deadline = last + min(settle, quiet)
    quiet_deadline = last + quiet
    quiet_over = now >= quiet_deadline
    assoc_text = f"{open_assocs} association{'s' if open_assocs != 1 else ''} still open"
    levels_ok = completeness.received_levels_complete

    committed = activity.committed_at is not None and activity.committed_at >= last
    if committed and levels_ok:
        return Decision(CONVERT, ("the sender requested storage commitment of every instance received, all committed",)
                        + notes, None, "commitment")

    if completeness.complete:
        if open_assocs == 0:
            if now >= settle_deadline:
                return Decision(CONVERT, (f"complete; nothing new for {settle:g} s and no association open",) + notes, None,
                                "structure")
            return Decision(WAIT, (f"complete; settling until {settle:g} s after the last arrival",) + notes, settle_deadline,
                            "structure", f"the settle time ({settle:g} s after the last arrival)")
        if quiet_over:
            return Decision(CONVERT, (f"complete; {assoc_text} but nothing arrived for {quiet:g} s",) + notes, None,
                            "quiet-period")
        return Decision(
            WAIT,
            (f"complete; {assoc_text}, waiting for it to end (at most {quiet:g} s after the last arrival)",) + notes,
            quiet_deadline, "structure", "the sending association to end",
        )

    if association_end_completes and levels_ok and open_assocs == 0 and activity.associations_ended > 0:
        if now >= settle_deadline or quiet_over:
            return Decision(CONVERT, ("every level received is complete and the association that sent it has ended",)
                            + notes, None, "association-end")
        return Decision(WAIT, (f"levels complete, association ended; settling until {settle:g} s after the last arrival",)
                        + notes, settle_deadline, "association-end", f"the settle time ({settle:g} s after the last arrival)")

    if quiet_over:
        extra = (f"nothing arrived for {quiet:g} s",)
        if open_assocs:
            extra += (f"{assoc_text}",)
        return Decision(CONVERT_INCOMPLETE, completeness.reasons + extra + notes, None, "quiet-period")
    if levels_ok:
        waiting = ("the sending association to end, or " if open_assocs else "") + \
            f"a smaller level, a storage commitment request, or the quiet period ({quiet:g} s after the last arrival)"
    else:
        waiting = f"the missing frames or parts, or the quiet period ({quiet:g} s after the last arrival)"
    return Decision(
        WAIT,
        (f"incomplete; waiting up to {quiet:g} s after the last arrival",) + completeness.reasons + notes,
        quiet_deadline, "quiet-period" if not levels_ok else "structure", waiting,
    )
