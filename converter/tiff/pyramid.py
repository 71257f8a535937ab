"""Strip cascade, 2x2 halving and the tile spool shared by both pyramids.

A chain starts at a level backed by source pixels and continues through the
generated levels below it. The strip cascade feeds it full-width strips: each
level encodes full tile rows as soon as it has them and hands its rows, halved,
to the next level. Its memory grows with the width, so DICOM levels go through
the block-wise pyramid (converter.tiff.blocks); the cascade remains for readers
that only give strips (libvips over a plain TIFF). Encoded tiles are spooled to
a temporary file, ready for the TIFF writer in raster order.
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
