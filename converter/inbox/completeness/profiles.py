"""Per-sender completeness rules: a profile per calling AE title, and the default one. Pure.

Senders tell the end of a slide in different ways, so the timing rules are per sender
(:class:`SenderProfile`): the quiet period, the settle time, the small-level threshold of the
structural rule, and whether the end of the association completes the slide (many scanners send
one slide per association: once it is released and every level received is complete, the series
is complete whatever its smallest level, e.g. a factor-4 pyramid ending at 1,562 px).
:func:`profile_for` picks the profile of a series from the AE titles that sent it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from converter.inbox.completeness.structure import SMALL_LEVEL_PX

DEFAULT_PROFILE_NAME = "default"


@dataclass(frozen=True)
class SenderProfile:
    name: str = DEFAULT_PROFILE_NAME
    """The calling AE title it is for, or "default"."""
    settle: float = 2.0
    """Seconds after the last arrival before a complete series is converted."""
    quiet: float = 60.0
    """Seconds without a new instance after which the series is converted whatever it looks like."""
    small_level_px: int = SMALL_LEVEL_PX
    """The structural rule's "small level" (a level this small, or of one tile, ends a pyramid)."""
    association_end_completes: bool = True
    """The end of the association that delivered it completes a series whose levels are all complete."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.settle) and math.isfinite(self.quiet) and self.settle >= 0 and self.quiet >= 0):
            raise ValueError(f"profile {self.name}: settle and quiet must be finite seconds >= 0 "
                             f"(got settle={self.settle}, quiet={self.quiet})")
        if self.small_level_px < 1:
            raise ValueError(f"profile {self.name}: small_level_px must be >= 1 (got {self.small_level_px})")


def profile_for(senders: Iterable[str], profiles: Mapping[str, SenderProfile], default: SenderProfile) -> SenderProfile:
    """The profile of a series sent by `senders` (calling AE titles): the profile of the first of them
    (in sorted order, so the choice does not depend on arrival order) that has one, else `default`."""
    for aet in sorted(set(senders)):
        if aet in profiles:
            return profiles[aet]
    return default


_KEYS = {"settle": float, "quiet": float, "small_level_px": int, "association_end": bool}


def parse_profile(entry: str, default: SenderProfile) -> SenderProfile:
    """`AET=key:value,...` (keys settle, quiet, small_level_px, association_end; unset keys from `default`)
    -> a profile; ValueError naming what is wrong. Example: `SCANNER1=quiet:30,association_end:false`."""
    aet, _, spec = entry.partition("=")
    aet = aet.strip()
    if not aet or len(aet) > 16:
        raise ValueError(f"{entry!r}: {aet!r} is not a calling AE title (1-16 characters)")
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, text = part.partition(":")
        key = key.strip()
        if key not in _KEYS:
            raise ValueError(f"{entry!r}: unknown key {key!r} (use {', '.join(_KEYS)})")
        kind = _KEYS[key]
        text = text.strip()
        if kind is bool:
            if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(f"{entry!r}: {key} must be true or false")
            values["association_end_completes"] = text.lower() in ("true", "yes", "1")
        else:
            try:
                values[key] = kind(text)
            except ValueError:
                raise ValueError(f"{entry!r}: {key} must be a number (got {text!r})") from None
    base = {f: getattr(default, f) for f in ("settle", "quiet", "small_level_px", "association_end_completes")}
    base.update(values)
    return SenderProfile(aet, **base)  # type: ignore[arg-type]
