"""A copied level: the checks on its frames, and where its tiles' bytes are in the source files.

Copying frames byte for byte into TIFF tiles is only right when every frame is a complete JPEG
bitstream that TIFF readers decode with the level's tags: the same colour space, chroma
sampling, size and baseline process as the first frame (the tags are written once per level),
and an end-of-image marker (a truncated frame would show as a grey band, never as an error).
These checks used to parse every frame in Python as it went through tifffile; here each frame's
header, up to the end of its start-of-scan segment, is compared as bytes with the first frame's
(scanners encode every frame of a level with the same tables), and its last bytes with the EOI
marker, reading the source through a 16 MiB mapped window. Only a frame that differs is parsed
(parse_jpeg), so differing quantisation tables with the same frame header still copy, and the
errors are the ones the per-frame path gives (`check_frame`).

plan_copy only locates the frames (numpy over the frame index); PlannedCopy.check runs the checks,
in the conversion while the kernel copies the bytes (a failed check stops the copy and nothing
is published). None when a frame spans several fragments: the item headers between them would
sit inside the tile, so that level is written by tifffile from the joined bytes instead.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from converter.codecs.jpeg import JpegInfo, parse_jpeg
from converter.errors import DecodeError
from converter.source.frame_index import build_frame_index
from converter.source.item_table import as_u64
from converter.source.level import Level
from converter.tiff.copier import Run
from converter.tiff.splice import LevelSplice

_WINDOW = 16 << 20
_GAP = 4096
"""Frames further apart than this start a new run (a gap is copied along, unreferenced)."""
_EOI, _EOI_PADDED = b"\xff\xd9", b"\xff\xd9\x00"


class CopyMismatch(Exception):
    """A frame cannot be copied under the level's tags (in auto mode: the level is re-encoded)."""

    def __init__(self, level: int, reason: str) -> None:
        super().__init__(reason)
        self.level = level
        self.reason = reason


def check_frame(data: bytes, info: JpegInfo, level: int, col: int, row: int, where: str, frame: int) -> None:
    """The full per-frame check: EOI present (else DecodeError), same JPEG facts as the level's first frame."""
    if not data.rstrip(b"\0").endswith(_EOI):
        raise DecodeError(
            f"{where}: frame {frame + 1} is not a complete JPEG bitstream (no end-of-image marker); the file is corrupt or truncated.",
            "Send or copy the file again; if it persists, re-export the slide from the scanner.",
        )
    try:
        got = parse_jpeg(data)
    except ValueError as exc:
        raise CopyMismatch(level, f"frame at tile ({col},{row}) is not a JPEG bitstream ({exc})") from exc
    if (got.colorspace, got.subsampling, got.width, got.height, got.baseline) != (
        info.colorspace, info.subsampling, info.width, info.height, True,
    ):
        raise CopyMismatch(level, f"frames differ in colour space or sampling (tile ({col},{row}) is {got.colorspace} {got.subsampling})")


def header_end(data: bytes) -> int | None:
    """Bytes from SOI to the end of the first start-of-scan segment (None: no such segment found)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xDA:
            return pos + 2 + length if pos + 2 + length <= n else None
        pos += 2 + length
    return None


def _check_all(fd: int, path: str, offs: np.ndarray, lens: np.ndarray, tiles: np.ndarray, frames: np.ndarray,
               across: int, info: JpegInfo, level: int) -> None:
    """check_frame's verdict for every frame (sorted by offset), parsing only frames whose header differs."""
    head: bytes | None = None
    size = 0
    starts, lengths = offs.tolist(), lens.tolist()
    gran = mmap.ALLOCATIONGRANULARITY
    i, n = 0, len(starts)
    while i < n:
        lo = starts[i] // gran * gran
        j = max(i + 1, int(np.searchsorted(offs, lo + _WINDOW, side="left")))
        hi = int((offs[i:j] + lens[i:j]).max())
        mm = mmap.mmap(fd, hi - lo, offset=lo, access=mmap.ACCESS_READ)
        try:
            for k in range(i, j):
                o = starts[k] - lo
                e = o + lengths[k]
                if head is not None and mm[o : o + size] == head and (mm[e - 2 : e] == _EOI or mm[e - 3 : e] == _EOI_PADDED):
                    continue
                t = int(tiles[k])
                data = mm[o:e]
                check_frame(data, info, level, t % across, t // across, path, int(frames[k]))
                if head is None:
                    end = header_end(data)
                    if end is not None:
                        head, size = data[:end], end
        finally:
            mm.close()
        i = j


@dataclass
class _Frames:
    """One instance's frames of the level, sorted by file offset, with the tile each fills."""

    path: str
    offsets: np.ndarray
    lengths: np.ndarray
    tiles: np.ndarray
    frames: np.ndarray


@dataclass
class PlannedCopy:
    """A copied level: where its tiles' bytes are (`splice`), and the frame checks still to run."""

    splice: LevelSplice
    level: int
    info: JpegInfo
    across: int
    parts: list[_Frames]

    def check(self) -> None:
        """Every frame's check (CopyMismatch, DecodeError); may run while the bytes are being copied."""
        for part in self.parts:
            with open(part.path, "rb") as fp:
                _check_all(fp.fileno(), part.path, part.offsets, part.lengths, part.tiles, part.frames,
                           self.across, self.info, self.level)


def plan_copy(index: int, level: Level, info: JpegInfo, fill: bytes) -> PlannedCopy | None:
    """Where each tile's bytes of source level `index` are (None: a frame spans fragments; not spliceable)."""
    inst_of, frame_of = level.tile_index.frame_table()
    count = len(inst_of)
    tile_run = np.full(count, -1, np.int64)
    tile_offset = np.zeros(count, np.uint64)
    counts = np.zeros(count, np.uint64)
    runs: list[Run] = []
    parts: list[_Frames] = []
    for idx, inst in enumerate(level.instances):
        tiles = np.flatnonzero(inst_of == idx)
        if not len(tiles):
            continue
        with open(inst.path, "rb") as fp:
            fi = build_frame_index(inst, fp)
        frames = frame_of[tiles]
        first = as_u64(fi.first)[frames].astype(np.intp)
        if not np.array_equal(as_u64(fi.end)[frames].astype(np.intp), first + 1):
            return None
        offs, lens = as_u64(fi.offsets)[first], as_u64(fi.lengths)[first]
        order = np.argsort(offs, kind="stable")
        tiles, frames, offs, lens = tiles[order], frames[order], offs[order], lens[order]
        parts.append(_Frames(inst.path, offs, lens, tiles, frames))
        reach = np.maximum.accumulate(offs + lens)
        bounds = [0, *(np.flatnonzero(offs[1:] > reach[:-1] + _GAP) + 1).tolist(), len(offs)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            start = int(offs[a])
            tile_run[tiles[a:b]] = len(runs)
            tile_offset[tiles[a:b]] = offs[a:b] - np.uint64(start)
            runs.append(Run(inst.path, start, int(reach[b - 1])))
        counts[tiles] = lens
    return PlannedCopy(LevelSplice(runs, tile_run, tile_offset, counts, fill), index, info, level.tile_index.tiles_across, parts)
