"""Reading a source level's frames and pixels: by block, by tile row, by region.

Re-encoding reads blocks (read_block: frames read in the caller's thread,
decoded in a worker's, because imagecodecs releases the GIL while decoding),
so memory is bounded by a few blocks whatever the slide's size.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import BinaryIO, Callable, Iterator

import numpy as np

from converter.codecs.colour import ColourDecision
from converter.codecs.frames import background_tile, decode_frame_colour, frame_colour
from converter.source.frame_index import FrameIndex, build_frame_index
from converter.source.level import Level


_REPEAT_MAX_BYTES = 4096
"""Frames up to this size (blank and near-blank tiles) are remembered decoded, in case they repeat."""
_REPEATS = 32


class LevelReader:
    def __init__(self, level: Level, pool: Executor | None = None, background: int = 255) -> None:
        self.level = level
        self.pool = pool
        self.background = background
        self._files: list[BinaryIO] = []
        self._indexes: list[FrameIndex] = []
        try:
            for inst in level.instances:
                fp = open(inst.path, "rb")
                self._files.append(fp)
                self._indexes.append(build_frame_index(inst, fp))
        except BaseException:
            self.close()
            raise
        self._row_cache: dict[int, np.ndarray] = {}
        self._repeats: dict[tuple[int, bytes], tuple[np.ndarray, ColourDecision | None]] = {}
        """Small frames decoded, by instance and bytes: blank frames repeat, byte for byte."""
        self.colours: dict[tuple[str, str], ColourDecision] = {}
        """Every distinct colour decision met while decoding (decided, why) -> decision."""

    def close(self) -> None:
        for fp in self._files:
            fp.close()
        self._files = []

    def __enter__(self) -> "LevelReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def samples(self) -> int:
        return 1 if self.level.samples_per_pixel == 1 else 3

    def frame_bytes(self, col: int, row: int) -> bytes | None:
        ref = self.level.tile_index.frames.get((col, row))
        if ref is None:
            return None
        return self._indexes[ref.instance].read(self._files[ref.instance], ref.frame)

    def row_frames(self, row: int) -> list[bytes | None]:
        """The encoded frames of one tile row (None: no frame), neighbours in a file read together.

        For copying: one read per run of frames that lie next to each other in the file
        (FrameIndex.read_run) instead of one seek and read per frame.
        """
        frames = self.level.tile_index.frames
        refs = [frames.get((col, row)) for col in range(self.level.tile_index.tiles_across)]
        out: list[bytes | None] = [None] * len(refs)
        by_instance: dict[int, list[int]] = {}
        for col, ref in enumerate(refs):
            if ref is not None:
                by_instance.setdefault(ref.instance, []).append(col)
        for inst, cols in by_instance.items():
            datas = self._indexes[inst].read_run(self._files[inst], [refs[c].frame for c in cols])  # type: ignore[union-attr]
            for col, data in zip(cols, datas):
                out[col] = data
        return out

    def frame_sizes(self) -> int:
        return sum(idx.total_bytes() for idx in self._indexes)

    def _decode(self, col: int, row: int, data: bytes | None) -> np.ndarray:
        lv = self.level
        if data is None:
            return background_tile(lv.tile_height, lv.tile_width, self.samples, self.background)
        ref = lv.tile_index.frames[(col, row)]
        key = (ref.instance, data) if len(data) <= _REPEAT_MAX_BYTES else None
        known = self._repeats.get(key) if key is not None else None
        if known is not None:
            pixels, decision = known
        else:
            pixels, decision = decode_frame_colour(data, lv.instances[ref.instance], ref.frame)
            if key is not None:
                pixels.flags.writeable = False  # shared by every frame with these bytes
                if len(self._repeats) >= _REPEATS:
                    self._repeats.clear()
                self._repeats[key] = (pixels, decision)
        if decision is not None and (decision.decided, decision.why) not in self.colours:
            self.colours[(decision.decided, decision.why)] = decision
        return pixels

    def colour(self) -> ColourDecision | None:
        """The colour decision of the level's first frame (frames are decided one by one when decoded)."""
        first = min(self.level.tile_index.frames, default=None)
        if first is None:
            return None
        data = self.frame_bytes(*first)
        ref = self.level.tile_index.frames[first]
        return frame_colour(data, self.level.instances[ref.instance], ref.frame) if data is not None else None

    def tile(self, col: int, row: int) -> np.ndarray:
        return self._decode(col, row, self.frame_bytes(col, row))

    def tile_row(self, row: int) -> np.ndarray:
        """All tiles of one tile row, decoded and cropped to the image width."""
        cached = self._row_cache.get(row)
        if cached is not None:
            return cached
        lv = self.level
        across = lv.tile_index.tiles_across
        datas = [self.frame_bytes(c, row) for c in range(across)]
        if self.pool is not None and across > 1:
            tiles = list(self.pool.map(self._decode, range(across), [row] * across, datas))
        else:
            tiles = [self._decode(c, row, d) for c, d in enumerate(datas)]
        strip = np.concatenate(tiles, axis=1)[:, : lv.width]
        if len(self._row_cache) >= 2:
            self._row_cache.pop(min(self._row_cache))
        self._row_cache[row] = strip
        return strip

    def read_block(self, x: int, y: int, w: int, h: int) -> Callable[[], np.ndarray]:
        """Read the frames under a rectangle now; the returned call decodes them into its pixels.

        The split lets the block-wise pyramid keep file reads in one thread (the files are
        shared) while worker threads decode (imagecodecs releases the GIL). Outside the image
        is background.
        """
        lv = self.level
        tw, th = lv.tile_width, lv.tile_height
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        frames = [
            (col, row, self.frame_bytes(col, row))
            for row in range(y // th, -(-y1 // th))
            for col in range(x // tw, -(-x1 // tw))
        ]

        def decode() -> np.ndarray:
            if x1 - x == w and y1 - y == h:
                out = np.empty((h, w, self.samples), np.uint8)
            else:
                out = np.full((h, w, self.samples), self.background, np.uint8)
            for col, row, data in frames:
                tile = self._decode(col, row, data)
                tx, ty = col * tw, row * th
                sx0, sy0 = max(x, tx), max(y, ty)
                sx1, sy1 = min(x1, tx + tw), min(y1, ty + th)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
            return out

        return decode

    def read_tiles(self, x: int, y: int, w: int, h: int, tile_w: int, tile_h: int,
                   background: int) -> Callable[[], list[tuple[int, int, np.ndarray]]] | None:
        """Like read_block, for a rectangle of whole output tiles that are this level's frames.

        Returns None unless the frames are `tile_w` x `tile_h` and the rectangle starts on a
        frame; the call returns (column, row, pixels) per frame in raster order, each a full
        tile whose part beyond the image is `background` (what the pyramid pads cut tiles with).
        """
        lv = self.level
        tw, th = lv.tile_width, lv.tile_height
        if (tw, th) != (tile_w, tile_h) or x % tw or y % th:
            return None
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        frames = [
            (col, row, self.frame_bytes(col, row))
            for row in range(y // th, -(-y1 // th))
            for col in range(x // tw, -(-x1 // tw))
        ]

        def decode() -> list[tuple[int, int, np.ndarray]]:
            out = []
            for col, row, data in frames:
                tile = self._decode(col, row, data)
                vw, vh = min(tw, lv.width - col * tw), min(th, lv.height - row * th)
                if (vw, vh) != (tw, th) or tile.shape != (th, tw, self.samples) or not tile.flags.c_contiguous:
                    full = np.full((th, tw, self.samples), background, np.uint8)
                    full[:vh, :vw] = tile[:vh, :vw]
                    tile = full
                out.append((col, row, tile))
            return out

        return decode

    def strips(self) -> Iterator[np.ndarray]:
        """The whole level, top to bottom, one tile row of pixels at a time (full width)."""
        lv = self.level
        for row in range(lv.tile_index.tiles_down):
            strip = self.tile_row(row)
            top = row * lv.tile_height
            yield strip[: min(lv.tile_height, lv.height - top)]
            self._row_cache.pop(row, None)

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels of a rectangle, clipped to the image; outside the image is background."""
        lv = self.level
        out = np.full((h, w, self.samples), self.background, np.uint8)
        th, tw = lv.tile_height, lv.tile_width
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        for row in range(max(0, y // th), -(-y1 // th)):
            for col in range(max(0, x // tw), -(-x1 // tw)):
                tile = self.tile(col, row)
                tx, ty = col * tw, row * th
                sx0, sy0 = max(x, tx), max(y, ty)
                sx1, sy1 = min(x1, tx + tw), min(y1, ty + th)
                if sx1 > sx0 and sy1 > sy0:
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out
