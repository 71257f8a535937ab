"""Block-wise pyramid: a chain of levels made from bounded square blocks of its first level.

Why blocks and not full-width strips: a strip costs memory in proportion to the slide's width
(about 3 MB per 1000 px), and handing one tile row at a time to the thread pool spent much of
the time in hand-offs. A block of the first level that is tile * 2**k px on a side yields whole
tiles at that level and at each of the k levels below it (every halving keeps the tile grid
aligned, and only blocks at the image's right or bottom edge have odd sizes, which
downsample2 pairs with themselves exactly as a whole-image halving does), so one block is one
task for a worker thread: decode its frames, encode its tiles, halve, encode, and so on.
Peak memory is a few blocks in flight, whatever the width or height.

Chains deeper than the halvings one block allows continue from the deepest level reached,
whose pixels are kept as raw tiles in the conversion's work folder (RawTiles; deleted with
it). Tiles go to each level's spool by tile number, so the writer still reads them in raster
order.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from converter.codecs.frames import encode_checked
from converter.tiff.pyramid import TileSpool, downsample2

MAX_BLOCK = 2048
"""Side of a first-level block in px (12.6 MB of RGB); a few are in flight at once."""

BARRIER = None
"""In a task stream: wait for every task before it (a pass that reads what earlier ones wrote)."""

Fetch = Callable[[], np.ndarray]
Task = tuple[Callable[[], object], Callable[[object], None]]


@dataclass
class _Geometry:
    width: int
    height: int


class RawTiles:
    """Uncompressed tiles of one level in a file, one fixed-size record per tile.

    The restart point of a chain deeper than one block's halvings; read and written with
    pread/pwrite so worker threads share it without a lock (records never overlap).
    """

    def __init__(self, path: str, width: int, height: int, tile_w: int, tile_h: int, samples: int) -> None:
        self.path = path
        self.level = _Geometry(width, height)
        self.tile_w, self.tile_h, self.samples = tile_w, tile_h, samples
        self.across = -(-width // tile_w)
        self._record = tile_w * tile_h * samples
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def put_block(self, x: int, y: int, pixels: np.ndarray) -> None:
        """Store a tile-aligned block (x, y multiples of the tile size), padding partial tiles."""
        tw, th = self.tile_w, self.tile_h
        h, w = pixels.shape[:2]
        for ty in range(0, h, th):
            for tx in range(0, w, tw):
                part = pixels[ty : ty + th, tx : tx + tw]
                if part.shape[:2] != (th, tw):
                    full = np.zeros((th, tw, self.samples), np.uint8)
                    full[: part.shape[0], : part.shape[1]] = part
                    part = full
                index = ((y + ty) // th) * self.across + (x + tx) // tw
                os.pwrite(self._fd, np.ascontiguousarray(part).data, index * self._record)

    def read_block(self, x: int, y: int, w: int, h: int) -> Fetch:
        return lambda: self._region(x, y, w, h)

    def _region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        tw, th = self.tile_w, self.tile_h
        out = np.empty((h, w, self.samples), np.uint8)
        for row in range(y // th, -(-(y + h) // th)):
            for col in range(x // tw, -(-(x + w) // tw)):
                data = os.pread(self._fd, self._record, (row * self.across + col) * self._record)
                if len(data) != self._record:
                    raise RuntimeError(f"raw tile ({col},{row}) of {self.path} is missing")
                tile = np.frombuffer(data, np.uint8).reshape(th, tw, self.samples)
                x0, y0 = max(x, col * tw), max(y, row * th)
                x1, y1 = min(x + w, (col + 1) * tw), min(y + h, (row + 1) * th)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - row * th : y1 - row * th, x0 - col * tw : x1 - col * tw]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass
class BlockStage:
    width: int
    height: int
    spool: TileSpool | None
    raised_quality: int = 0
    max_quality: int = 0


def halvings_per_block(tile_w: int, tile_h: int, depth: int) -> int:
    """How many halvings one block feeds: as many as the chain has, within MAX_BLOCK."""
    if depth == 0:
        return 0
    k = 1  # at least one, or a deep chain would never move on
    while k < depth and max(tile_w, tile_h) << (k + 1) <= MAX_BLOCK:
        k += 1
    return k


class BlockPyramid:
    """One chain: its first level read in blocks, every level's tiles encoded by worker threads."""

    def __init__(
        self,
        stages: list[tuple[int, int, TileSpool | None]],
        tile_w: int,
        tile_h: int,
        quality: int,
        max_mad: float | None,
        samples: int,
        scratch: str,
        background: int = 255,
    ) -> None:
        self.stages = [BlockStage(w, h, spool) for w, h, spool in stages]
        self.tile_w, self.tile_h = tile_w, tile_h
        self.quality, self.max_mad = quality, max_mad
        self.samples, self.scratch, self.background = samples, scratch, background
        self._raws: list[RawTiles] = []

    def tasks(self, source) -> Iterator[Task | None]:
        """The chain's tasks in order; `source.read_block(x, y, w, h)` runs here (its I/O), its result in a worker."""
        first = 0
        while True:
            depth = len(self.stages) - 1 - first
            k = halvings_per_block(self.tile_w, self.tile_h, depth)
            raw = None
            if first + k < len(self.stages) - 1:
                st = self.stages[first + k]
                raw = RawTiles(f"{self.scratch}-{first + k}.raw", st.width, st.height, self.tile_w, self.tile_h, self.samples)
                self._raws.append(raw)
            yield from self._pass(source, first, k, raw)
            if raw is None:
                return
            yield BARRIER
            source, first = raw, first + k

    def _pass(self, source, first: int, k: int, raw: RawTiles | None) -> Iterator[Task]:
        head = self.stages[first]
        unit_w, unit_h = self.tile_w << k, self.tile_h << k
        bw = unit_w * max(1, MAX_BLOCK // unit_w)
        bh = unit_h * max(1, MAX_BLOCK // unit_h)
        # The first stage of a later pass was encoded by the pass that made its raw tiles.
        skip_head = first > 0
        # A level encoded on its own whose frames are the output's tiles: each frame is encoded
        # as it is decoded, without assembling the block and cutting it up again (two copies of
        # every pixel); the tiles, their order and their bytes are the same.
        whole_tiles = k == 0 and raw is None and not skip_head and hasattr(source, "read_tiles")
        for by in range(0, head.height, bh):
            for bx in range(0, head.width, bw):
                w, h = min(bw, head.width - bx), min(bh, head.height - by)
                tiles = source.read_tiles(bx, by, w, h, self.tile_w, self.tile_h, self.background) if whole_tiles else None
                if tiles is not None:
                    yield (lambda f=tiles: self._work_tiles(f, first)), self._done
                    continue
                fetch = source.read_block(bx, by, w, h)
                yield (lambda f=fetch, x=bx, y=by: self._work(f, x, y, first, k, raw, skip_head)), self._done

    def _work_tiles(self, fetch: Callable[[], list[tuple[int, int, np.ndarray]]], j: int):
        st = self.stages[j]
        across = -(-st.width // self.tile_w)
        out: list[tuple[int, int, bytes, int]] = []
        for col, row, tile in fetch():
            data, q = encode_checked(tile, self.quality, self.max_mad)
            out.append((j, row * across + col, data, q))
        return out

    def _work(self, fetch: Fetch, x: int, y: int, first: int, k: int, raw: RawTiles | None, skip_head: bool):
        pixels = fetch()
        out: list[tuple[int, int, bytes, int]] = []
        for j in range(first, first + k + 1):
            if j > first:
                pixels, x, y = downsample2(pixels), x // 2, y // 2
            st = self.stages[j]
            if st.spool is not None and not (skip_head and j == first):
                out.extend(self._encode(j, st, pixels, x, y))
        if raw is not None:
            raw.put_block(x, y, pixels)
        return out

    def _encode(self, j: int, st: BlockStage, pixels: np.ndarray, x: int, y: int) -> Iterator[tuple[int, int, bytes, int]]:
        tw, th = self.tile_w, self.tile_h
        across = -(-st.width // tw)
        h, w, c = pixels.shape
        for ty in range(0, h, th):
            for tx in range(0, w, tw):
                part = pixels[ty : ty + th, tx : tx + tw]
                if part.shape[:2] != (th, tw):
                    tile = np.full((th, tw, c), self.background, np.uint8)
                    tile[: part.shape[0], : part.shape[1]] = part
                else:
                    tile = np.ascontiguousarray(part)
                data, q = encode_checked(tile, self.quality, self.max_mad)
                yield j, ((y + ty) // th) * across + (x + tx) // tw, data, q

    def _done(self, out) -> None:
        for j, index, data, q in out:
            st = self.stages[j]
            st.spool.put(index, data)  # type: ignore[union-attr]
            if q != self.quality:
                st.raised_quality += 1
                st.max_quality = max(st.max_quality, q)

    def close(self) -> None:
        """Delete the raw restart files (the spools belong to the caller)."""
        for raw in self._raws:
            raw.close()
        self._raws = []

    def check(self) -> None:
        """Every stage that encodes has all its tiles."""
        for j, st in enumerate(self.stages):
            if st.spool is None:
                continue
            want = -(-st.width // self.tile_w) * -(-st.height // self.tile_h)
            if st.spool.count != want:
                raise RuntimeError(f"pyramid stage {j} has {st.spool.count} tiles, expected {want}")


def run_tasks(tasks: Iterable[Task | None], pool: Executor | None, window: int) -> None:
    """Run (work, done) tasks: work in the pool, at most `window` in flight, done in order here.

    In-order completion keeps memory bounded by the window and the spools' writes sequential;
    BARRIER drains the window first.
    """
    pending: deque[tuple[Future, Callable[[object], None]]] = deque()

    def drain_one() -> None:
        fut, done = pending.popleft()
        done(fut.result())

    try:
        for task in tasks:
            if task is BARRIER:
                while pending:
                    drain_one()
                continue
            work, done = task
            if pool is None:
                done(work())
                continue
            pending.append((pool.submit(work), done))
            while len(pending) >= window:
                drain_one()
        while pending:
            drain_one()
    finally:
        for fut, _ in pending:
            fut.cancel()
        for fut, _ in pending:
            if not fut.cancelled():
                try:
                    fut.result()
                except BaseException:
                    pass
