"""Is the series structurally complete? :func:`assess` and the per-level progress it reports.

Structural completeness:

* there is at least one VOLUME level;
* every VOLUME level has all its frames: TILED_FULL levels need tiles across x tiles down x focal
  planes x optical paths frames; TILED_SPARSE levels (and any instance with explicit per-frame
  positions) need the frames their instances declare;
* every concatenation has all its parts;
* the pyramid reaches a small level (:data:`SMALL_LEVEL_PX`, :func:`reaches_small_level`);
* the ORIGINAL level has arrived, when the instances say which one it is: if every VOLUME instance
  received declares ImageType value 1 and all say DERIVED (PS3.3 C.8.12.4.1.1: the scanned level is
  ORIGINAL, resampled levels DERIVED), level 0 is still on its way (senders that send the pyramid
  smallest level first, or re-send a level 0 that failed). Instances that do not declare it never
  hold a series back.

The verdict (:class:`Completeness`) carries, per problem, a reason an operator can act on. Pure:
no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from converter.inbox.completeness.facts import InstanceFacts

SMALL_LEVEL_PX: Final = 1024
"""A level at most this many pixels on its longer side is "small" (see :func:`reaches_small_level`)."""


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
    levels_complete: bool | None = None
    """Every level received has all its frames and parts, and the ORIGINAL level is there: complete but
    for the small-level rule (the pyramid's end). None: not assessed (then it follows `complete`)."""

    @property
    def received_levels_complete(self) -> bool:
        """Nothing is missing structurally from the levels that arrived (the end of the pyramid aside)."""
        return self.complete if self.levels_complete is None else self.levels_complete or self.complete


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
    if all(f.is_derived for f in volumes):
        largest = sizes[0]
        reasons.append(
            f"no ORIGINAL level yet: every VOLUME instance received is DERIVED (largest {largest[0]}x{largest[1]} px);"
            " the full-resolution level 0 (ImageType ORIGINAL, PS3.3 C.8.12.4.1.1) has not arrived"
        )
    levels_complete = not reasons
    smallest = sizes[-1]
    if not reaches_small_level(by_size[smallest], small_level_px):
        reasons.append(
            f"smallest level {smallest[0]}x{smallest[1]} px: the pyramid does not reach a small level"
            f" (one tile, or at most {small_level_px} px on the longer side)"
        )
    return Completeness(not reasons, tuple(reasons), tuple(levels), levels_complete)
