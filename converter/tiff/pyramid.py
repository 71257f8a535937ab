"""Strip cascade, 2x2 halving and the tile spool shared by both pyramids.

A chain starts at a level backed by source pixels and continues through the
generated levels below it. The strip cascade feeds it full-width strips: each
level encodes full tile rows as soon as it has them and hands its rows, halved,
to the next level. Its memory grows with the width, so DICOM levels go through
the block-wise pyramid (converter.tiff.blocks); the cascade remains for readers
that only give strips (libvips over a plain TIFF). Encoded tiles go either to a
spool file per level, read back by the TIFF writer in raster order (TileSpool), or
straight to the end of the temporary TIFF whose structure is already written
(TileAppender), which writes every tile's bytes once instead of twice.
"""

from __future__ import annotations

import os
from array import array
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np
import pyvips

from converter.codecs.frames import encode_checked


_APPEND_BUFFER = 8 << 20
"""Bytes gathered before one write(2): tiles are 10-60 kB, a syscall each cost more than the copy."""


def downsample2(rows: np.ndarray) -> np.ndarray:
    """2x2 box average (libvips shrink); an odd last row or column is paired with itself."""
    h, w = rows.shape[:2]
    if h % 2:
        rows = np.concatenate((rows, rows[-1:]), axis=0)
    if w % 2:
        rows = np.concatenate((rows, rows[:, -1:]), axis=1)
    rows = np.ascontiguousarray(rows)
    hh, ww, bands = rows.shape
    image = pyvips.Image.new_from_memory(rows.data, ww, hh, bands, "uchar")
    out = image.shrink(2, 2).write_to_memory()
    return np.frombuffer(out, np.uint8).reshape(hh // 2, ww // 2, bands)


class TileSpool:
    """Encoded tiles of one level in a temporary file, read back in raster order.

    Tiles may arrive in any order (put by tile number: the block-wise pyramid makes them a
    block at a time); the index is two arrays of 8-byte integers, so its memory is 16 bytes
    a tile rather than a Python tuple each.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fp: BinaryIO = open(path, "w+b")
        self._offsets = array("q")
        self._lengths = array("q")
        self.bytes = 0
        self.count = 0
        self._moved = False

    def append(self, data: bytes) -> None:
        self.put(len(self._offsets), data)

    def put(self, index: int, data: bytes) -> None:
        if index >= len(self._offsets):
            grow = index + 1 - len(self._offsets)
            self._offsets.extend([-1] * grow)
            self._lengths.extend([-1] * grow)
        if self._lengths[index] >= 0:
            raise RuntimeError(f"tile {index} of {self.path} was spooled twice")
        if self._moved:
            self._fp.seek(self.bytes)
            self._moved = False
        self._fp.write(data)
        self._offsets[index] = self.bytes
        self._lengths[index] = len(data)
        self.bytes += len(data)
        self.count += 1

    @property
    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self._offsets, self._lengths))

    def __iter__(self) -> Iterator[bytes]:
        self._fp.flush()
        for index in range(len(self._offsets)):
            yield self.read(index)

    def read(self, index: int) -> bytes:
        offset, length = self._offsets[index], self._lengths[index]
        if length < 0:
            raise RuntimeError(f"tile {index} of {self.path} was never spooled")
        self._moved = True
        self._fp.seek(offset)
        return self._fp.read(length)

    def close(self) -> None:
        self._fp.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class TileAppender:
    """Encoded tiles of every re-encoded level appended to the end of one file as they arrive.

    Why: spooling each level to its own file and then letting tifffile copy the spool into
    the TIFF wrote every tile's bytes twice, and on a VM whose first write into fresh page
    cache costs up to 4 s per GB that second copy was most of the "write" stage. Here the
    TIFF's structure (every IFD, its tags, the associated images) is written first with
    empty tiles (converter.tiff.writer, `placeholder`), the tiles are appended behind it in
    the order they are finished, and `placed()` gives each level's TileOffsets and
    TileByteCounts for converter.tiff.splice.point_tiles (TIFF 6.0 section 15: a tile's
    offset may point anywhere in the file). One appender serves every level, so writes stay
    sequential; it runs in the thread that completes the tasks (in order), so the file is the
    same from run to run. The index is one pair of 8-byte arrays per level (16 bytes a tile).
    """

    def __init__(self, path: str | os.PathLike, levels: dict[int, int], start: int | None = None) -> None:
        """`levels`: output level index -> its number of tiles; `start`: first byte (default: the end of the file)."""
        self.path = str(path)
        self._fp: BinaryIO = open(self.path, "r+b", buffering=_APPEND_BUFFER)
        self.start = self.end = self._fp.seek(0, os.SEEK_END) if start is None else self._fp.seek(start)
        self._offsets = {i: array("q", bytes(8 * n)) for i, n in levels.items()}
        self._lengths = {i: array("q", [-1]) * n for i, n in levels.items()}
        self._counts = dict.fromkeys(levels, 0)

    def level(self, index: int) -> "AppendedLevel":
        """The sink of one level (what a pyramid stage writes its tiles to)."""
        if index not in self._offsets:
            raise KeyError(f"level {index} was not announced to the appender")
        return AppendedLevel(self, index)

    def put(self, level: int, index: int, data: bytes) -> None:
        lengths = self._lengths[level]
        if lengths[index] >= 0:
            raise RuntimeError(f"tile {index} of level {level} was written twice")
        self._fp.write(data)
        self._offsets[level][index] = self.end
        lengths[index] = len(data)
        self.end += len(data)
        self._counts[level] += 1

    def count(self, level: int) -> int:
        return self._counts[level]

    def bytes(self, level: int) -> int:
        return int(sum(self._lengths[level])) if self._counts[level] else 0

    def placed(self, shift: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Output level -> (tile offsets, byte counts) as uint64 arrays; every tile must be there.

        `shift`: added to every offset (the tiles were moved as one range, see rebase).
        """
        out = {}
        for level, lengths in self._lengths.items():
            counts = np.frombuffer(lengths, np.int64)
            if self._counts[level] != len(counts):
                missing = int(np.count_nonzero(counts < 0))
                raise RuntimeError(f"level {level}: {missing} of {len(counts)} tiles were never written")
            offsets = np.frombuffer(self._offsets[level], np.int64) + shift
            out[level] = (offsets.astype(np.uint64), counts.astype(np.uint64))
        return out

    def finish(self) -> None:
        """Write out what is buffered (its error, e.g. ENOSPC, is raised here) and close."""
        fp = self._fp
        if not fp.closed:
            fp.close()

    def close(self) -> None:
        """Close without raising (after a failure: the file is removed by the caller)."""
        try:
            self.finish()
        except OSError:
            pass


class AppendedLevel:
    """One level's view of a TileAppender, with TileSpool's put/append/count."""

    def __init__(self, appender: TileAppender, level: int) -> None:
        self._appender, self._level = appender, level
        self._next = 0

    def put(self, index: int, data: bytes) -> None:
        self._appender.put(self._level, index, data)

    def append(self, data: bytes) -> None:
        self._appender.put(self._level, self._next, data)
        self._next += 1

    @property
    def count(self) -> int:
        return self._appender.count(self._level)

    def close(self) -> None:
        pass


@dataclass
class _Stage:
    width: int
    height: int
    tile_w: int
    tile_h: int
    spool: TileSpool | None
    pending: list[np.ndarray] = field(default_factory=list)
    pending_rows: int = 0
    odd_row: np.ndarray | None = None
    rows_in: int = 0
    raised_quality: int = 0
    max_quality: int = 0


class Cascade:
    """Feed strips of the chain's first level; every stage encodes and/or halves."""

    def __init__(
        self,
        stages: list[tuple[int, int, TileSpool | None]],
        tile_w: int,
        tile_h: int,
        quality: int,
        pool: Executor | None = None,
        background: int = 255,
        max_mad: float | None = None,
    ) -> None:
        self.stages = [_Stage(w, h, tile_w, tile_h, spool) for w, h, spool in stages]
        self.quality = quality
        self.max_mad = max_mad
        self.pool = pool
        self.background = background

    def push(self, rows: np.ndarray) -> None:
        self._push(0, rows)

    def finish(self) -> None:
        for k, st in enumerate(self.stages):
            if st.odd_row is not None and k + 1 < len(self.stages):
                self._push(k + 1, downsample2(st.odd_row))
                st.odd_row = None
            if st.spool is not None and st.pending_rows:
                self._encode_row(st, self._take(st, st.pending_rows))
            if st.rows_in != st.height:
                raise RuntimeError(f"pyramid stage {k} received {st.rows_in} rows, expected {st.height}")

    def _push(self, k: int, rows: np.ndarray) -> None:
        st = self.stages[k]
        st.rows_in += rows.shape[0]
        if st.spool is not None:
            st.pending.append(rows)
            st.pending_rows += rows.shape[0]
            while st.pending_rows >= st.tile_h:
                self._encode_row(st, self._take(st, st.tile_h))
        if k + 1 < len(self.stages):
            if st.odd_row is not None:
                rows = np.concatenate((st.odd_row, rows), axis=0)
                st.odd_row = None
            if rows.shape[0] % 2:
                st.odd_row = rows[-1:].copy()
                rows = rows[:-1]
            if rows.shape[0]:
                self._push(k + 1, downsample2(rows))

    @staticmethod
    def _take(st: _Stage, n: int) -> np.ndarray:
        buf = np.concatenate(st.pending, axis=0) if len(st.pending) > 1 else st.pending[0]
        out, rest = buf[:n], buf[n:]
        st.pending = [rest] if rest.shape[0] else []
        st.pending_rows = rest.shape[0]
        return out

    def _encode_row(self, st: _Stage, rows: np.ndarray) -> None:
        h, w, c = rows.shape
        across = -(-st.width // st.tile_w)
        padded = np.full((st.tile_h, across * st.tile_w, c), self.background, np.uint8)
        padded[:h, :w] = rows
        tiles = [padded[:, i * st.tile_w : (i + 1) * st.tile_w] for i in range(across)]
        quality, max_mad = self.quality, self.max_mad
        if self.pool is not None and across > 1:
            encoded = list(self.pool.map(lambda t: encode_checked(t, quality, max_mad), tiles))
        else:
            encoded = [encode_checked(t, quality, max_mad) for t in tiles]
        assert st.spool is not None
        for data, q in encoded:
            st.spool.append(data)
            if q != quality:
                st.raised_quality += 1
                st.max_quality = max(st.max_quality, q)
