"""Checking a written TIFF against the source pixels before it is published.

Output tiles are decoded the way a TIFF reader does, honouring the TIFF's
own Photometric tag (tifffile forces libjpeg's colour space from it), while
source frames are decoded by their bitstream. A mislabelled colour space
therefore shows up here as a large difference instead of reaching a
pathologist's screen.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import imagecodecs
import numpy as np
import tifffile

from converter.codecs.frames import mad_per_channel
from converter.tiff.ifd import (COMPRESSION, IMAGE_LENGTH, IMAGE_WIDTH, PHOTOMETRIC, SAMPLES_PER_PIXEL, TILE_BYTE_COUNTS,
                                TILE_LENGTH, TILE_OFFSETS, TILE_WIDTH, TiffStructure, TiffStructureError)
from converter.tiff.layout import LayoutPlan, OutputLevel
from converter.source.level_reader import LevelReader
from converter.tiff.pyramid import downsample2
from converter.conversion.report import LevelCheck

MAX_SOURCE_HALVINGS = 3  # deeper generated levels are checked against the level above


def _sample_tiles(across: int, down: int, n: int, seed: int) -> list[tuple[int, int]]:
    picks = [(0, 0), (across - 1, down - 1), (across // 2, down // 2)]
    rng = random.Random(seed)
    while len(picks) < n + 3 and len(set(picks)) < across * down:
        picks.append((rng.randrange(across), rng.randrange(down)))
    seen: list[tuple[int, int]] = []
    for p in picks:
        if p not in seen:
            seen.append(p)
    return seen[: max(n, 1)]


_TAG_COLORSPACE = {1: "GRAY", 2: "RGB", 6: "YCBCR"}


def decode_jpeg_tile(raw: bytes, photometric: int) -> np.ndarray:
    """Decode a JPEG tile the strict way: the JPEG colour space is whatever the Photometric tag says.

    Lenient readers (tifffile, Pillow) let a JFIF marker override an RGB tag;
    strict ones do not, so a mislabelled tile must fail here.
    """
    colorspace = _TAG_COLORSPACE.get(int(photometric))
    if colorspace == "GRAY":
        a = imagecodecs.jpeg8_decode(raw, colorspace="GRAY", outcolorspace="GRAY")
    else:
        a = imagecodecs.jpeg8_decode(raw, colorspace=colorspace, outcolorspace="RGB")
    return a if a.ndim == 3 else a[..., np.newaxis]


class TiffTiles:
    """The tiles of one page as tifffile reads its structure (the verification's independent reader)."""

    def __init__(self, tif: tifffile.TiffFile, page_index: int) -> None:
        self.page = tif.pages[page_index]
        self.fh = tif.filehandle
        self.across = -(-self.page.imagewidth // self.page.tilewidth)

    def raw(self, col: int, row: int) -> bytes:
        i = row * self.across + col
        self.fh.seek(self.page.dataoffsets[i])
        return self.fh.read(self.page.databytecounts[i])

    def decoded(self, col: int, row: int) -> np.ndarray:
        """The tile's pixels, (h, w, samples); JPEG strictly by the Photometric tag (decode_jpeg_tile)."""
        raw = self.raw(col, row)
        if self.page.compression == 7:
            return decode_jpeg_tile(raw, self.page.photometric)
        i = row * self.across + col
        data, _, _ = self.page.decode(raw, i, jpegtables=self.page.jpegtables)
        a = np.asarray(data)[0]
        return a if a.ndim == 3 else a[..., np.newaxis]


class IfdTiles:
    """The tiles of one IFD read entry by entry (converter.tiff.ifd): only the sampled tiles' offsets are read.

    For checks that sample a few tiles of each level (the colour check): tifffile would read every
    tile's offset and byte count of the page first (~275,000 of each at 150,000 px).
    """

    def __init__(self, tiff: TiffStructure, index: int, path: Path) -> None:
        self.ifd = tiff.ifd(index)
        self.fd, self.index, self.path = tiff.fd, index, path
        ifd = self.ifd
        self.width, self.height = ifd.value(IMAGE_WIDTH), ifd.value(IMAGE_LENGTH)
        self.tile_width, self.tile_height = ifd.value(TILE_WIDTH), ifd.value(TILE_LENGTH)
        self.samples = ifd.value(SAMPLES_PER_PIXEL, 1)
        self.compression, self.photometric = ifd.value(COMPRESSION, 1), ifd.value(PHOTOMETRIC, 2)
        self.across = -(-self.width // self.tile_width)

    def raw(self, col: int, row: int) -> bytes:
        i = row * self.across + col
        offset, count = self.ifd.item(TILE_OFFSETS, i), self.ifd.item(TILE_BYTE_COUNTS, i)
        data = os.pread(self.fd, count, offset)
        if len(data) != count:
            raise TiffStructureError(f"tile {i} of IFD {self.index} runs past the end of the file")
        return data

    def decoded(self, col: int, row: int) -> np.ndarray:
        """As TiffTiles.decoded; a compression other than JPEG (never written for pyramid levels) through tifffile."""
        if self.compression == 7:
            return decode_jpeg_tile(self.raw(col, row), self.photometric)
        with tifffile.TiffFile(self.path) as tif:
            return TiffTiles(tif, self.index).decoded(col, row)


def verify_tiff(
    path: Path,
    pages: dict[str, int],
    plan: LayoutPlan,
    readers: dict[int, LevelReader],
    fill_tiles: dict[int, bytes],
    samples: int,
    max_mad: float,
) -> list[LevelCheck]:
    checks: list[LevelCheck] = []
    with tifffile.TiffFile(path) as tif:
        heads: dict[int, OutputLevel] = {}
        for chain in plan.chains():
            for lv in chain:
                heads[lv.index] = chain[0]
        for lv in plan.levels:
            out = TiffTiles(tif, pages[f"level-{lv.index}"])
            page = out.page
            if (page.imagewidth, page.imagelength) != (lv.width, lv.height):
                checks.append(LevelCheck(lv.index, lv.action, 0, None, 0.0, False, f"size {page.imagewidth}x{page.imagelength} != {lv.width}x{lv.height}"))
                continue
            tw, th = page.tilewidth, page.tilelength
            down = -(-lv.height // th)
            tiles = _sample_tiles(out.across, down, samples, seed=lv.index)
            if lv.action == "copy":
                checks.append(_check_copy(lv, out, readers[lv.source], tiles, fill_tiles.get(lv.index)))
                continue
            head = heads[lv.index]
            halvings = lv.index - head.index
            reference: Callable[[int, int], np.ndarray]
            if halvings <= MAX_SOURCE_HALVINGS:
                reader = readers[head.source]
                scale = 2**halvings

                def reference(col: int, row: int, reader=reader, scale=scale) -> np.ndarray:
                    x, y = col * tw * scale, row * th * scale
                    w = min(tw * scale, reader.level.width - x)
                    h = min(th * scale, reader.level.height - y)
                    a = reader.region(x, y, w, h)
                    for _ in range(halvings):
                        a = downsample2(a)
                    return a
            else:
                parent = TiffTiles(tif, pages[f"level-{lv.index - 1}"])
                pw, ph = plan.levels[lv.index - 1].width, plan.levels[lv.index - 1].height

                def reference(col: int, row: int, parent=parent, pw=pw, ph=ph) -> np.ndarray:
                    parts = []
                    for dy in (0, 1):
                        r = row * 2 + dy
                        if r * th >= ph:
                            continue
                        cols = [parent.decoded(c, r) for c in (col * 2, col * 2 + 1) if c * tw < pw]
                        parts.append(np.concatenate(cols, axis=1))
                    a = np.concatenate(parts, axis=0)
                    a = a[: min(2 * th, ph - row * 2 * th), : min(2 * tw, pw - col * 2 * tw)]
                    return downsample2(a)

            worst = 0.0
            for col, row in tiles:
                ref = reference(col, row)
                got = out.decoded(col, row)[: ref.shape[0], : ref.shape[1]]
                if got.shape != ref.shape:
                    checks.append(LevelCheck(lv.index, lv.action, len(tiles), None, 0.0, False, f"tile ({col},{row}) shape {got.shape} != {ref.shape}"))
                    break
                worst = max(worst, mad_per_channel(got, ref))
            else:
                passed = worst <= max_mad
                detail = "" if passed else f"mean absolute difference {worst:.2f} exceeds {max_mad}"
                checks.append(LevelCheck(lv.index, lv.action, len(tiles), None, round(worst, 3), passed, detail))
    return checks


def _check_copy(lv: OutputLevel, out: TiffTiles, reader: LevelReader, tiles: list[tuple[int, int]], fill: bytes | None) -> LevelCheck:
    worst = 0.0
    for col, row in tiles:
        src = reader.frame_bytes(col, row)
        expected = src if src is not None else fill
        raw = out.raw(col, row)
        if raw != expected:
            return LevelCheck(lv.index, "copy", len(tiles), False, 0.0, False, f"tile ({col},{row}) bytes differ from the source frame")
        got = out.decoded(col, row)
        ref = reader.tile(col, row)
        if got.shape != ref.shape:
            return LevelCheck(lv.index, "copy", len(tiles), False, 0.0, False, f"tile ({col},{row}) shape {got.shape} != {ref.shape}")
        worst = max(worst, float(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max()))
    passed = worst == 0.0
    detail = "" if passed else f"decoded with the TIFF's tags, tiles differ from the source by up to {worst:.0f}: colour space mislabelled"
    return LevelCheck(lv.index, "copy", len(tiles), passed, worst, passed, detail)
