"""converter.tiff.ifd against tifffile: the same tags and tile tables from classic TIFF and BigTIFF,
both byte orders; in-place writes that tifffile reads back; damaged structures refused."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import tifffile

from converter.tiff.ifd import (COMPRESSION, IMAGE_LENGTH, IMAGE_WIDTH, SAMPLES_PER_PIXEL, TILE_BYTE_COUNTS, TILE_LENGTH,
                                TILE_OFFSETS, TILE_WIDTH, TiffStructure, TiffStructureError)
from converter.tiff.splice import point_tiles


def _write(path, bigtiff, byteorder, sizes=((600, 520), (300, 260), (40, 30))):
    rng = np.random.default_rng(7)
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder=byteorder) as tw:
        for h, w in sizes:
            tw.write(rng.integers(0, 255, (h, w, 3), np.uint8), tile=(64, 64), compression="zlib", photometric="rgb")


@pytest.fixture
def fd_of():
    opened = []

    def open_(path, flags=os.O_RDONLY):
        opened.append(os.open(path, flags))
        return opened[-1]

    yield open_
    for fd in opened:
        os.close(fd)


@pytest.mark.parametrize("bigtiff", [False, True], ids=["classic", "bigtiff"])
@pytest.mark.parametrize("byteorder", ["<", ">"], ids=["II", "MM"])
def test_tags_and_tile_tables_as_tifffile_reads_them(tmp_path, fd_of, bigtiff, byteorder):
    path = tmp_path / "t.tif"
    _write(path, bigtiff, byteorder)
    tiff = TiffStructure(fd_of(path))
    assert tiff.big is bigtiff
    with tifffile.TiffFile(path) as tif:
        for i, page in enumerate(tif.pages):
            ifd = tiff.ifd(i)
            assert (ifd.value(IMAGE_WIDTH), ifd.value(IMAGE_LENGTH)) == (page.imagewidth, page.imagelength)
            assert (ifd.value(TILE_WIDTH), ifd.value(TILE_LENGTH)) == (page.tilewidth, page.tilelength)
            assert ifd.value(SAMPLES_PER_PIXEL) == 3 and ifd.value(COMPRESSION) == page.compression
            assert ifd.array(TILE_OFFSETS).tolist() == list(page.dataoffsets)
            assert ifd.array(TILE_BYTE_COUNTS).tolist() == list(page.databytecounts)
            last = len(page.dataoffsets) - 1
            assert ifd.item(TILE_OFFSETS, last) == page.dataoffsets[last]
            assert ifd.item(TILE_BYTE_COUNTS, 0) == page.databytecounts[0]
        with pytest.raises(TiffStructureError, match="no IFD 3"):
            tiff.ifd(len(tif.pages))
        with pytest.raises(TiffStructureError):
            tiff.ifd(0).item(TILE_OFFSETS, len(tif.pages[0].dataoffsets))


@pytest.mark.parametrize("bigtiff", [False, True], ids=["classic", "bigtiff"])
def test_point_tiles_writes_what_tifffile_then_reads(tmp_path, bigtiff):
    path = tmp_path / "t.tif"
    _write(path, bigtiff, "<")
    with tifffile.TiffFile(path) as tif:
        n = len(tif.pages[1].dataoffsets)
        offsets, counts = np.array(tif.pages[1].dataoffsets, np.uint64), np.array(tif.pages[1].databytecounts, np.uint64)
        untouched = list(tif.pages[0].dataoffsets)
    # The same tiles named in the reverse order: tifffile must decode the page mirrored tile-wise.
    point_tiles(path, {1: (offsets[::-1].copy(), counts[::-1].copy())})
    with tifffile.TiffFile(path) as tif:
        assert list(tif.pages[1].dataoffsets) == offsets[::-1].tolist()
        assert list(tif.pages[1].databytecounts) == counts[::-1].tolist()
        assert list(tif.pages[0].dataoffsets) == untouched
    with pytest.raises(ValueError, match=f"TileOffsets has {n} values, {n - 1} given"):
        point_tiles(path, {1: (offsets[1:], counts[1:])})


def test_a_value_too_large_for_classic_tiff_is_refused(tmp_path):
    path = tmp_path / "t.tif"
    _write(path, False, "<")
    with tifffile.TiffFile(path) as tif:
        n = len(tif.pages[0].dataoffsets)
    with pytest.raises(ValueError, match="BigTIFF"):
        point_tiles(path, {0: (np.full(n, 1 << 33, np.uint64), np.ones(n, np.uint64))})


def test_damaged_structures_are_refused(tmp_path, fd_of):
    (tmp_path / "not.tif").write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(TiffStructureError, match="not a TIFF"):
        TiffStructure(fd_of(tmp_path / "not.tif"))
    # An IFD whose next-IFD pointer names itself: the chain is a loop.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", IMAGE_WIDTH, 4, 1, 5) + struct.pack("<I", 8)
    (tmp_path / "loop.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    tiff = TiffStructure(fd_of(tmp_path / "loop.tif"))
    assert tiff.ifd(0).value(IMAGE_WIDTH) == 5
    with pytest.raises(TiffStructureError, match="loop"):
        tiff.ifd(20_000)
    # A tile table pointing past the end of the file.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", TILE_OFFSETS, 4, 100, 10_000) + struct.pack("<I", 0)
    (tmp_path / "cut.tif").write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd)
    with pytest.raises(TiffStructureError, match="past the end"):
        TiffStructure(fd_of(tmp_path / "cut.tif")).ifd(0)


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_ifd_tiles_decode_as_the_tifffile_reader_does(tmp_path, fd_of, compression):
    from converter.tiff.verify import IfdTiles, TiffTiles

    path = tmp_path / "t.tif"
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (200, 300, 3), np.uint8)
    tifffile.imwrite(path, image, tile=(64, 64), compression=compression, photometric="rgb")
    tiles = IfdTiles(TiffStructure(fd_of(path)), 0, path)
    assert (tiles.width, tiles.height, tiles.tile_width, tiles.tile_height, tiles.samples) == (300, 200, 64, 64, 3)
    with tifffile.TiffFile(path) as tif:
        reference = TiffTiles(tif, 0)
        for row in range(4):
            for col in range(5):
                assert tiles.raw(col, row) == reference.raw(col, row)
                assert np.array_equal(tiles.decoded(col, row), reference.decoded(col, row))
