"""converter.tiff.relocate: a TIFF structure moved behind other bytes reads back the same in tifffile,
classic and BigTIFF, both byte orders, tiled and stripped pages with out-of-line tags; offsets that
would pass 4 GiB in classic TIFF and offset tags it does not understand are refused before writing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from converter.tiff.ifd import TiffStructureError
from converter.tiff.relocate import move_structure, patches


def _structure(path, bigtiff=False, byteorder="<", **extra):
    rng = np.random.default_rng(3)
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder=byteorder) as tw:
        tw.write(rng.integers(0, 255, (300, 260, 3), np.uint8), tile=(64, 64), compression="jpeg", photometric="rgb",
                 description="level 0\nwith an out-of-line description", resolution=(1000.0, 1000.0), **extra)
        tw.write(rng.integers(0, 255, (150, 130, 3), np.uint8), tile=(64, 64), compression="zlib", subfiletype=1)
        tw.write(rng.integers(0, 255, (90, 70), np.uint8), compression="lzw", rowsperstrip=16, description="label")
    return path


def _pages(path):
    with tifffile.TiffFile(path) as tif:
        return tif.is_bigtiff, [(p.description, p.shape, p.resolution, p.asarray()) for p in tif.pages]


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_moved_structure_reads_back_the_same(tmp_path, bigtiff, byteorder):
    src = _structure(tmp_path / "s.tif", bigtiff, byteorder)
    want = _pages(src)
    out = tmp_path / "out.tif"
    junk = np.random.default_rng(1).integers(0, 255, 1_234_567, np.uint8).tobytes()
    out.write_bytes(bytes(16) + junk)  # the pixel data that would lie before the structure
    fd = os.open(out, os.O_RDWR)
    try:
        move_structure(src, fd, 16 + len(junk))
    finally:
        os.close(fd)
    got = _pages(out)
    assert got[0] == want[0]
    for (d1, s1, r1, a1), (d2, s2, r2, a2) in zip(got[1], want[1]):
        assert (d1, s1, r1) == (d2, s2, r2)
        assert np.array_equal(a1, a2)
    assert out.read_bytes()[16 : 16 + len(junk)] == junk  # the bytes before it untouched
    with tifffile.TiffFile(out) as tif:
        assert min(p.offset for p in tif.pages) >= 16 + len(junk)


def test_classic_offsets_past_4_gib_are_refused_before_anything_is_written(tmp_path):
    src = _structure(tmp_path / "s.tif")
    with pytest.raises(OverflowError, match="BigTIFF"):
        patches(src, (1 << 32) - 100)
    out = tmp_path / "out.tif"
    out.write_bytes(b"")
    fd = os.open(out, os.O_RDWR)
    try:
        with pytest.raises(OverflowError):
            move_structure(src, fd, (1 << 32) - 100)
    finally:
        os.close(fd)
    assert out.stat().st_size == 0
    assert patches(_structure(tmp_path / "b.tif", bigtiff=True), 5 << 32)  # BigTIFF takes it


def test_offsets_it_does_not_understand_are_refused(tmp_path):
    src = tmp_path / "sub.tif"
    with tifffile.TiffWriter(src) as tw:
        tw.write(np.zeros((64, 64), np.uint8), subifds=1)
        tw.write(np.zeros((32, 32), np.uint8), subfiletype=1)
    with pytest.raises(TiffStructureError, match="SubIFDs"):
        patches(src, 4096)
