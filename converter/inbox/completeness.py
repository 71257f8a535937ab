"""When has a slide arrived? The pure rules of the series-completeness tracker.

Scanners push a slide (one DICOM series: VOLUME pyramid levels, perhaps LABEL, OVERVIEW and
THUMBNAIL) instance by instance, possibly over several associations, and nothing in DICOM
networking says "this was the last instance of the series". The node therefore judges from the
instances themselves whether the slide *looks* complete, and falls back on time.

This module holds only the rules: no I/O, no SQLite, no clock (time is passed in). The tracker
around it (association events, state database, wake-up timers) is the part that is hard to test;
keeping the rules pure lets them be tested exhaustively, including with randomized arrival orders.

Two steps:

* :func:`assess` looks at the instances received so far (their header facts,
  :class:`InstanceFacts`) and says whether the series is *structurally complete*, and if not, why,
  in words an operator can act on.
* :func:`decide` combines that with the series' activity (last arrival, open associations, last
  conversion) and the current time into an action: wait, convert, or convert although the slide
  looked incomplete, plus the time at which the answer could change (so the caller can schedule a
  wake-up instead of polling).

Structural completeness (see :func:`assess` for the details):

* there is at least one VOLUME level;
* every VOLUME level has all its frames: TILED_FULL levels need tiles across x tiles down x focal
  planes x optical paths frames; TILED_SPARSE levels (and any instance with explicit per-frame
  positions) need the frames their instances declare;
* every concatenation has all its parts;
* the pyramid reaches a small level (:data:`SMALL_LEVEL_PX`, :func:`reaches_small_level`).

What the rules cannot see: a level that has not arrived at all, unless it is the smallest one
(a missing level 0 while the lower levels are complete looks like a complete, smaller slide), and
a second optical path or focal plane sent as a separate instance that declares only its own path
or plane. Both end as an early conversion, which the re-opening rule repairs when the rest arrives.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # only for the type hint: keeps this module free of pydicom and file access
    from converter.source.instance import WsiInstance

SMALL_LEVEL_PX: Final = 1024
"""A level at most this many pixels on its longer side is "small" (see :func:`reaches_small_level`)."""

DEFAULT_SETTLE_S: Final = 2.0
"""Seconds after the last arrival before a complete series is converted (no association open)."""

DEFAULT_QUIET_S: Final = 60.0
"""Seconds without a new instance after which the series is converted whatever it looks like."""

WAIT: Final = "wait"
CONVERT: Final = "convert"
CONVERT_INCOMPLETE: Final = "convert-incomplete"
ACTIONS: Final = (WAIT, CONVERT, CONVERT_INCOMPLETE)


# --------------------------------------------------------------------------------------------
# Facts about one instance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceFacts:
    """What the completeness rules need to know about one received instance.

    A small, header-only, hashable subset of :class:`converter.source.instance.WsiInstance`, so that the
    tracker can keep it in its state database and re-assess a series without reading any file.
    """

    sop_instance_uid: str
    flavor: str
    """VOLUME / LABEL / OVERVIEW / THUMBNAIL (ImageType value 3, or inferred)."""
    image_width: int
    """TotalPixelMatrixColumns."""
    image_height: int
    """TotalPixelMatrixRows."""
    tile_width: int
    """Columns (of one frame)."""
    tile_height: int
    """Rows (of one frame)."""
    number_of_frames: int
    dimension_organization: str | None = None
    """TILED_FULL / TILED_SPARSE / None. None counts as TILED_FULL unless ``has_positions``."""
    has_positions: bool = False
    """Per-frame plane positions are present: the instance says where its frames are, so it is
    counted like TILED_SPARSE (it holds exactly the frames it declares)."""
    focal_planes: int = 1
    """TotalPixelMatrixFocalPlanes."""
    optical_paths: int = 1
    """Number of optical paths the instance declares (OpticalPathSequence items)."""
    concatenation_uid: str | None = None
    in_concatenation_number: int | None = None
    in_concatenation_total: int | None = None
    concatenation_frame_offset: int = 0
    """ConcatenationFrameOffsetNumber: frames of the concatenation held by earlier parts."""

    def __post_init__(self) -> None:
        """Reject impossible headers here, so the rules below never divide by zero or loop."""
        problems = []
        if not self.sop_instance_uid:
            problems.append("sop_instance_uid is empty")
        for name in ("image_width", "image_height", "tile_width", "tile_height", "number_of_frames", "focal_planes", "optical_paths"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("in_concatenation_number", "in_concatenation_total"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 or None (got {value})")
        if self.concatenation_frame_offset < 0:
            problems.append(f"concatenation_frame_offset must be >= 0 (got {self.concatenation_frame_offset})")
        if problems:
            raise ValueError(f"InstanceFacts {self.sop_instance_uid!r}: " + "; ".join(problems))

    @classmethod
    def from_instance(cls, inst: WsiInstance) -> InstanceFacts:
        """The facts of an instance read with :func:`converter.source.instance.read_instance`."""
        return cls(
            sop_instance_uid=inst.sop_instance_uid,
            flavor=inst.flavor,
            image_width=inst.image_width,
            image_height=inst.image_height,
            tile_width=inst.tile_width,
            tile_height=inst.tile_height,
            number_of_frames=inst.number_of_frames,
            dimension_organization=inst.dimension_organization,
            has_positions=inst.frame_positions is not None,
            focal_planes=inst.focal_planes,
            optical_paths=max(1, len(inst.optical_paths)),
            concatenation_uid=inst.concatenation_uid,
            in_concatenation_number=inst.in_concatenation_number,
            in_concatenation_total=inst.in_concatenation_total,
            concatenation_frame_offset=inst.concatenation_frame_offset,
        )

    @property
    def is_volume(self) -> bool:
        return self.flavor.strip().upper() == "VOLUME"

    @property
    def is_sparse(self) -> bool:
        """Frames counted as declared: TILED_SPARSE, or explicit per-frame positions."""
        return self.has_positions or (self.dimension_organization or "").strip().upper() == "TILED_SPARSE"

    @property
    def tiles_across(self) -> int:
        return -(-self.image_width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.image_height // self.tile_height)

    @property
    def full_frames(self) -> int:
        """Frames of the whole level if it is TILED_FULL: every tile of every plane and path."""
        return self.tiles_across * self.tiles_down * self.focal_planes * self.optical_paths

    @property
    def fits_one_tile(self) -> bool:
        return self.image_width <= self.tile_width and self.image_height <= self.tile_height


# --------------------------------------------------------------------------------------------
# Assessment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConcatenationProgress:
    """The parts of one concatenation received so far."""

    uid: str
    parts_total: int | None
    """InConcatenationTotalNumber (the largest any part declares); None if no part declares it."""
    parts_received: tuple[int, ...]
    """InConcatenationNumber of the parts received, ascending (parts without a number are not listed)."""
    parts_missing: tuple[int, ...]
    """1..parts_total not received; without parts_total, the gaps below the highest part received."""

    @property
    def complete(self) -> bool:
        return not self.parts_missing


@dataclass(frozen=True)
class LevelProgress:
    """One VOLUME level (one pixel matrix size) of the series, as far as it has arrived."""

    index: int
    """0 = the largest level received; the numbering shifts if a larger level arrives later."""
    width: int
    height: int
    sparse: bool
    """True when every instance of the level declares its frames (TILED_SPARSE or positions)."""
    instances: int
    """Distinct instances of this level counted (duplicates and re-sent parts once)."""
    frames_received: int
    """Frames counted toward the level (TILED_FULL: at most frames_expected)."""
    frames_expected: int | None
    """TILED_FULL: across x down x planes x paths. Sparse: the frames declared, or None while a
    concatenation part is missing (its declared frames are unknown)."""
    concatenations: tuple[ConcatenationProgress, ...] = ()

    @property
    def complete(self) -> bool:
        frames_ok = self.frames_expected is not None and self.frames_received >= self.frames_expected
        return frames_ok and all(c.complete for c in self.concatenations)


@dataclass(frozen=True)
class Completeness:
    """The structural verdict on the instances received so far."""

    complete: bool
    reasons: tuple[str, ...]
    """Why the series is not complete, one human-readable line per problem; empty when complete."""
    levels: tuple[LevelProgress, ...]
    """Per VOLUME level received, largest first."""


def _dedupe(instances: Iterable[InstanceFacts]) -> list[InstanceFacts]:
    """One fact per SOPInstanceUID, chosen independently of arrival order.

    A re-sent instance normally carries the same header; if two headers with the same UID differ,
    the one with the largest field values (as text) wins, so the verdict never depends on order.
    """
    chosen: dict[str, InstanceFacts] = {}
    for f in instances:
        old = chosen.get(f.sop_instance_uid)
        if old is None or _order_key(f) > _order_key(old):
            chosen[f.sop_instance_uid] = f
    return [chosen[k] for k in sorted(chosen)]


def _order_key(f: InstanceFacts) -> tuple[str, ...]:
    return tuple(repr(getattr(f, name)) for name in f.__dataclass_fields__)


def _union_size(ranges: list[tuple[int, int]]) -> tuple[int, bool]:
    """Size of the union of half-open ranges, and whether any two overlapped."""
    total, end, overlap = 0, None, False
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if end is None or a >= end:
            total += b - a
            end = b
        else:
            overlap = True
            if b > end:
                total += b - end
                end = b
    return total, overlap


def _concatenation_progress(uid: str, parts: list[InstanceFacts]) -> ConcatenationProgress:
    numbers = sorted({p.in_concatenation_number for p in parts if p.in_concatenation_number is not None})
    totals = [p.in_concatenation_total for p in parts if p.in_concatenation_total is not None]
    total = max(totals) if totals else None
    upto = total if total is not None else (numbers[-1] if numbers else 0)
    have = set(numbers)
    missing = tuple(n for n in range(1, upto + 1) if n not in have)
    return ConcatenationProgress(uid, total, tuple(numbers), missing)


def _distinct_parts(members: list[InstanceFacts]) -> list[InstanceFacts]:
    """One instance per concatenation part number.

    A part re-sent under a new SOPInstanceUID holds the same frames, so it must not count twice;
    the copy with more frames is kept (then the larger UID, for order independence).
    """
    by_part: dict[object, InstanceFacts] = {}
    for m in members:
        key = m.in_concatenation_number if m.in_concatenation_number is not None else ("uid", m.sop_instance_uid)
        old = by_part.get(key)
        if old is None or (m.number_of_frames, m.sop_instance_uid) > (old.number_of_frames, old.sop_instance_uid):
            by_part[key] = m
    return list(by_part.values())


def _source_frames(parts: list[InstanceFacts], expected: int | None) -> int:
    """Frames one frame source (a standalone instance or a concatenation) contributes.

    TILED_FULL parts hold frames [offset, offset + n) of the level's implicit frame order, so the
    frames received are the union of those ranges within the level: a missing part is a gap.
    Distinct parts of one concatenation cannot overlap; if they do, the writer did not fill in
    ConcatenationFrameOffsetNumber (left at 0), and the parts' frames are added instead, so such a
    series is not held back until the quiet time for a header slip. Sparse parts add the frames
    they declare.
    """
    full = [p for p in parts if not p.is_sparse]
    sparse = sum(p.number_of_frames for p in parts if p.is_sparse)
    if not full:
        return sparse
    limit = expected if expected is not None else max(p.concatenation_frame_offset + p.number_of_frames for p in full)
    ranges = [(min(p.concatenation_frame_offset, limit), min(p.concatenation_frame_offset + p.number_of_frames, limit)) for p in full]
    covered, overlap = _union_size(ranges)
    if overlap:
        covered = min(limit, sum(p.number_of_frames for p in full))
    return covered + sparse


def _level_progress(index: int, size: tuple[int, int], members: list[InstanceFacts]) -> LevelProgress:
    """Count one level's frames over all its frame sources.

    A level can arrive as one instance, as the parts of a concatenation (shared
    ConcatenationUID), or as several instances of the same size, e.g. one per optical path or
    focal plane. Every source's frames count toward the level's total; for TILED_FULL the total
    expected is the largest across x down x planes x paths any instance declares, and frames
    beyond it (the same level sent twice under different UIDs) do not count.
    """
    full = [m for m in members if not m.is_sparse]
    expected = max((m.full_frames for m in full), default=None)
    sources: dict[tuple[str, str], list[InstanceFacts]] = defaultdict(list)
    for m in members:
        key = ("concatenation", m.concatenation_uid) if m.concatenation_uid else ("instance", m.sop_instance_uid)
        sources[key].append(m)
    received = 0
    concatenations = []
    counted = 0
    for (kind, uid), group in sorted(sources.items()):
        parts = _distinct_parts(group) if kind == "concatenation" else group
        counted += len(parts)
        received += _source_frames(parts, expected)
        if kind == "concatenation":
            concatenations.append(_concatenation_progress(uid, parts))
    if expected is not None:
        received = min(received, expected)
    elif all(c.complete for c in concatenations):
        expected = received  # sparse: the instances declare their frames
    return LevelProgress(
        index=index,
        width=size[0],
        height=size[1],
        sparse=not full,
        instances=counted,
        frames_received=received,
        frames_expected=expected,
        concatenations=tuple(concatenations),
    )


def _parts_text(numbers: tuple[int, ...]) -> str:
    return ("part " if len(numbers) == 1 else "parts ") + ", ".join(map(str, numbers))


def _level_reasons(level: LevelProgress) -> list[str]:
    out = []
    name = f"level {level.index} ({level.width}x{level.height})"
    if level.frames_expected is not None and level.frames_received < level.frames_expected:
        out.append(f"{name}: {level.frames_received} of {level.frames_expected} frames")
    for c in level.concatenations:
        if c.complete:
            continue
        if c.parts_total is not None:
            out.append(f"concatenation {c.uid} of level {level.index}: {_parts_text(c.parts_missing)} of {c.parts_total} missing")
        else:
            out.append(
                f"concatenation {c.uid} of level {level.index}: {_parts_text(c.parts_missing)} missing"
                f" (parts up to {c.parts_received[-1]} received; InConcatenationTotalNumber not declared)"
            )
    return out


def reaches_small_level(members: Iterable[InstanceFacts], small_level_px: int = SMALL_LEVEL_PX) -> bool:
    """Whether a level (the instances of one size) ends a pyramid: it fits one tile, or it is at
    most ``small_level_px`` (1024) pixels on its longer side.

    Why this rule: scanners send the pyramid largest level first, so while the lower levels are
    still on their way the smallest level received is a big one; "the smallest level is small" is
    the only structural sign that the pyramid's end has arrived. The two conditions cover the two
    ways writers end a pyramid. Many halve until a level fits a single tile (a further level would
    add nothing; wsi2dcm and our synthetic series do this), which with 2048 px tiles may leave a
    level larger than 1024 px. Others stop at a thumbnail-sized level spanning a few small tiles
    (e.g. 1000 px in 240 px tiles). 1024 px is the size of a thumbnail or overview on a screen:
    a viewer needs nothing smaller, and the converter can derive smaller levels itself.

    A pyramid that legitimately ends at a larger level (or a slide sent without its lower levels)
    only costs the quiet time: the series is then converted as "looked incomplete". Accepting a
    larger level instead would convert pyramids in transit after the short settle time.
    """
    members = list(members)
    if not members:
        return False
    w, h = members[0].image_width, members[0].image_height
    return max(w, h) <= small_level_px or any(m.fits_one_tile for m in members)


def assess(instances: Iterable[InstanceFacts], *, small_level_px: int = SMALL_LEVEL_PX) -> Completeness:
    """Is the series structurally complete, judging by the instances received so far?

    Levels are the VOLUME instances grouped by pixel matrix size (TotalPixelMatrixColumns x
    TotalPixelMatrixRows), not by FrameOfReferenceUID, which some writers give each level
    separately (the converter combines levels by size too). LABEL, OVERVIEW and THUMBNAIL are
    optional: they never make a series incomplete. Duplicate SOPInstanceUIDs count once, and the
    verdict does not depend on the order of ``instances``.
    """
    unique = _dedupe(instances)
    volumes = [f for f in unique if f.is_volume]
    if not volumes:
        others = sorted({f.flavor.strip().upper() for f in unique})
        detail = f" (only {', '.join(others)} received)" if others else " (no instance received)"
        return Completeness(False, ("no VOLUME level" + detail,), ())
    by_size: dict[tuple[int, int], list[InstanceFacts]] = defaultdict(list)
    for f in volumes:
        by_size[(f.image_width, f.image_height)].append(f)
    sizes = sorted(by_size, key=lambda s: (-s[0] * s[1], -s[0], -s[1]))
    levels = []
    reasons: list[str] = []
    for index, size in enumerate(sizes):
        level = _level_progress(index, size, by_size[size])
        levels.append(level)
        reasons.extend(_level_reasons(level))
    smallest = sizes[-1]
    if not reaches_small_level(by_size[smallest], small_level_px):
        reasons.append(
            f"smallest level {smallest[0]}x{smallest[1]} px: the pyramid does not reach a small level"
            f" (one tile, or at most {small_level_px} px on the longer side)"
        )
    return Completeness(not reasons, tuple(reasons), tuple(levels))


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesActivity:
    """What the tracker knows about the series' traffic (times in seconds, any fixed epoch)."""

    last_arrival: float
    """Time of the newest instance."""
    open_associations: int
    """Associations currently sending instances of this series."""
    converted_at: float | None = None
    """When it was last converted (None: never)."""

    def __post_init__(self) -> None:
        """Reject NaN/infinite times and negative counts: they would silently disable the timers."""
        if not math.isfinite(self.last_arrival):
            raise ValueError(f"last_arrival must be a finite time (got {self.last_arrival})")
        if self.converted_at is not None and not math.isfinite(self.converted_at):
            raise ValueError(f"converted_at must be a finite time or None (got {self.converted_at})")
        if self.open_associations < 0:
            raise ValueError(f"open_associations must be >= 0 (got {self.open_associations})")


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
