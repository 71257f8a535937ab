"""The kernel copy of a series' frames started before the series is planned, and its adoption by the plan.

Why: in copy mode the kernel copy of the frames is most of the time (about 1.9 of 3.4 s for a
4.3 GB series), and it used to start only after the series was assembled, every level's first
frame parsed, the layout planned and the TIFF structure written (~0.35 s more, with the disk
idle). Which bytes a copied level needs is nearly known from the headers alone: a pyramid level
(ImageType VOLUME) whose frames are encapsulated JPEG Baseline (PS3.5 A.4, 1.2.840.10008.1.2.4.50)
has its frames inside its Pixel Data value, so that value, to the end of the file, is copied
(converter.tiff.copier) while the plan is made. The plan then adopts the copy when each of its
copied ranges lies inside it and little of it goes unused (the Basic Offset Table, the item
headers and the sequence delimiter stay in the file unreferenced); otherwise the early copy is
stopped and the plan's own ranges are copied from scratch, so a wrong guess costs time, never
correctness or a bigger file than the allowance below. The frame checks and verification are
the same whichever copy placed the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from config.settings import ConversionOptions
from converter.inbox.receiving import Pace
from converter.source.pixel_probe import JPEG_BASELINE, iter_files, jpeg_volume_pixels
from converter.tiff.copier import HEADER, Copier, Run
from converter.tiff.forked_copier import ForkedCopier

if TYPE_CHECKING:  # this module is imported by the command line before pydicom is
    from converter.source.instance import WsiInstance

UNUSED_ALLOWANCE = 64 << 10
"""Bytes of an early-copied range before its first frame, beside 1 % of the range, the plan may leave
unreferenced (the Basic Offset Table and item headers: 4 + 8 bytes a frame at most, PS3.5 A.4)."""


def likely_copied(instances: list["WsiInstance"], options: ConversionOptions) -> list[Run]:
    """The Pixel Data values that a copy-mode plan will most likely copy, largest first."""
    if options.mode not in ("copy", "auto"):
        return []
    if options.layout == "svs" and not any(i.flavor == "THUMBNAIL" for i in instances):
        return []  # the svs thumbnail is made from the pyramid: that path spools, see convert._attempt_convert
    runs = []
    for inst in instances:
        px = inst.pixel_data
        if (inst.flavor != "VOLUME" or inst.transfer_syntax != JPEG_BASELINE or inst.bits_allocated != 8
                or inst.tile_width % 16 or inst.tile_height % 16 or px is None or not px.encapsulated):
            continue
        try:
            size = os.path.getsize(inst.path)
        except OSError:
            continue  # reported by the conversion itself
        if size > px.offset:
            runs.append(Run(inst.path, px.offset, size))
    return sorted(runs, key=lambda r: r.start - r.stop)


def start_early_copy(instances: list["WsiInstance"], tmp: Path, options: ConversionOptions) -> Copier | None:
    """Start copying what the plan will most likely copy into `tmp` (None: nothing to copy early)."""
    runs = likely_copied(instances, options)
    return Copier(tmp, runs, HEADER, pace_of(options)) if runs else None


def pace_of(options: ConversionOptions) -> Pace | None:
    """The receivers-first pace of a node's conversion (None: copy at full speed, as the command line does)."""
    return Pace(options.yield_to) if options.yield_to else None


def start_forked_early_copy(inputs: Iterable[str | Path], output: Path, options: ConversionOptions) -> ForkedCopier | None:
    """For `wsi-node convert ... -o X.tiff`: the copy started from the files' bytes alone, before any header is read.

    Only for one TIFF file as output (its name is known before the series is), in copy or auto
    mode with the generic layout (svs may need the spooling path). The output's folder is made
    here when missing, as the command makes it anyway once it finds a series.
    """
    if options.mode not in ("copy", "auto") or options.layout != "generic" or output.suffix.lower() not in (".tif", ".tiff"):
        return None
    runs = []
    for path in iter_files(inputs):
        found = jpeg_volume_pixels(path)
        if found is not None:
            runs.append(Run(str(path), *found))
    if not runs:
        return None
    runs.sort(key=lambda r: r.start - r.stop)
    output.parent.mkdir(parents=True, exist_ok=True)
    return ForkedCopier(output.parent / f".{output.name}.{os.getpid()}.early", runs, HEADER)


def adopt(early: Copier | ForkedCopier | None, runs: list[Run]) -> Copier | ForkedCopier | None:
    """`early` when it holds exactly what the plan copies, give or take item headers; else None (stopped).

    Every one of the plan's `runs` must lie inside an early range, every early range must hold one
    (a level the plan re-encodes, or a label it drops, must not sit unreferenced in the output:
    --no-label is a privacy choice), and little may go unused inside a range. What follows a
    range's last frame (the sequence delimiter, elements after the Pixel Data) is zeroed in the
    output when the copy ends (Copier.clear_after), so no bytes but frames and item headers remain.
    """
    if early is None:
        return None
    inside: list[list[Run]] = [[] for _ in early.places]
    for run in runs:
        k = next((k for k, p in enumerate(early.places)
                  if p.run.path == run.path and p.run.start <= run.start and run.stop <= p.run.stop), None)
        if k is None:
            early.cancel()
            return None
        inside[k].append(run)
    for p, mine in zip(early.places, inside):
        size = p.run.stop - p.run.start
        if not mine:
            early.cancel()
            return None
        tail = p.run.stop - max(r.stop for r in mine)
        unused = size - sum(r.stop - r.start for r in mine) - tail
        if unused > UNUSED_ALLOWANCE + size // 100 or tail > UNUSED_ALLOWANCE:
            early.cancel()
            return None
    early.clear_after({k: max(r.stop for r in mine) for k, mine in enumerate(inside)})
    return early
