"""Copied levels placed by the kernel: source byte ranges appended to the TIFF, tiles pointed at them.

Why: a copied level's frames are already complete JPEG bitstreams lying back to back in the
DICOM file (one fragment each, an 8-byte item header before each, PS3.5 A.4), and a TIFF's tile
offsets may point anywhere in its file (TIFF 6.0, TileOffsets). So tifffile writes the TIFF
structure with empty tiles for such levels (converter.tiff.writer, `placeholder`), then each run
of frames is appended here with `os.copy_file_range`, as `cp` does: the bytes never pass through
Python (a 4 GB level 0 through tifffile's per-tile writes took 3.3x `cp`). Last, the level's
TileOffsets and TileByteCounts are overwritten in place (converter.tiff.ifd) to
name each frame's place inside the copied ranges; the few item headers between frames stay in the
file unreferenced. A run is placed as the early copy places it (converter.tiff.copier.place: at
the source's place in a 4 KiB block, so that XFS or Btrfs may share blocks, and a large run in a
2 MiB span, so that the kernel copies whole page-cache folios).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.tiff.copier import Run, copy_range, max_padding, place, steps
from converter.tiff.ifd import TILE_BYTE_COUNTS, TILE_OFFSETS, TiffStructure

_BLOCK = 4096
_CHUNK = 256 << 20
"""Bytes copied per step (a failed frame check stops the copy between steps)."""


@dataclass
class LevelSplice:
    """Where every tile of one copied level comes from."""

    runs: list[Run]
    tile_run: np.ndarray
    """int64 per tile (raster order): index into `runs`; -1: no frame, the fill tile is used."""
    tile_offset: np.ndarray
    """uint64 per tile: offset of its frame from its run's start."""
    counts: np.ndarray
    """uint64 per tile: the frame's byte count (its fragment length, padding included, as copied before)."""
    fill: bytes
    """Tile written once for missing tiles (TILED_SPARSE holes)."""

    @property
    def has_holes(self) -> bool:
        """Whether some tile has no frame (the fill tile is then written once and shared)."""
        return bool((self.tile_run < 0).any())

    @property
    def max_bytes(self) -> int:
        """Upper bound of what splicing appends (runs, block alignment, fill)."""
        return sum(r.stop - r.start + max_padding(r) for r in self.runs) + len(self.fill) + _BLOCK


class Cancelled(Exception):
    """The copy was stopped because a frame check failed meanwhile."""


def _append(dst: int, pos: int, splice: LevelSplice, sources: dict[str, int],
            stop: threading.Event | None) -> tuple[int, np.ndarray, np.ndarray]:
    """Append one level's runs (and fill tile) at `pos`; its tile offsets and byte counts, and the new end."""
    run_at = np.zeros(max(1, len(splice.runs)), np.uint64)
    for r, run in enumerate(splice.runs):
        pos = place(run, pos)
        src = sources.get(run.path)
        if src is None:
            src = sources[run.path] = os.open(run.path, os.O_RDONLY)
        run_at[r] = pos
        for lo, n in steps(run.start, run.stop, _CHUNK):
            if stop is not None and stop.is_set():
                raise Cancelled()
            copy_range(src, dst, lo, n, pos, run.path)
            pos += n
    fill_at = 0
    if splice.has_holes:
        os.pwrite(dst, splice.fill, pos)
        fill_at, pos = pos, pos + len(splice.fill)
    return (pos, *tile_places(splice, run_at, fill_at))


def tile_places(splice: LevelSplice, run_at: np.ndarray, fill_at: int) -> tuple[np.ndarray, np.ndarray]:
    """TileOffsets and TileByteCounts of a level whose runs start at `run_at` and whose fill tile is at `fill_at`."""
    missing = splice.tile_run < 0
    offsets = np.where(missing, np.uint64(fill_at), run_at[np.maximum(splice.tile_run, 0)] + splice.tile_offset)
    counts = np.where(missing, np.uint64(len(splice.fill)), splice.counts)
    return offsets.astype(np.uint64), counts.astype(np.uint64)


Placed = dict[int, tuple[np.ndarray, np.ndarray]]


def append_levels(path: Path, levels: dict[int, LevelSplice], stop: threading.Event | None = None) -> Placed:
    """Append the copied levels' frames to the file at `path`; each IFD's tile offsets and byte counts.

    `levels` maps IFD index -> what to copy into it. Runs in a thread beside the frame checks
    (the kernel copies with the GIL released); `stop` set: raise Cancelled at the next chunk.
    """
    sources: dict[str, int] = {}
    placed: Placed = {}
    dst = os.open(path, os.O_RDWR)
    try:
        pos = os.fstat(dst).st_size
        for page, splice in levels.items():
            pos, offsets, counts = _append(dst, pos, splice, sources, stop)
            placed[page] = (offsets, counts)
    finally:
        os.close(dst)
        for fd in sources.values():
            os.close(fd)
    return placed


def point_tiles(path: Path, placed: Placed) -> None:
    """Overwrite TileOffsets and TileByteCounts of the IFDs in `placed` (same count, same type, in place).

    The two tags are found in the IFD's entries and written with one pwrite each
    (converter.tiff.ifd): their old values (the placeholders) are never read, so a 275,000-tile
    level costs two 2 MB writes, not tifffile's tuples of every value (~0.06 s, ~21 MB).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        tiff = TiffStructure(fd)
        for page, (offsets, counts) in placed.items():
            ifd = tiff.ifd(page)
            tiff.write_values(ifd, TILE_OFFSETS, offsets)
            tiff.write_values(ifd, TILE_BYTE_COUNTS, counts)
    finally:
        os.close(fd)
