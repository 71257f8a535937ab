"""Issue 14: copied levels are appended by the kernel and the TIFF's tiles pointed at them.

Every tile of every copied level must be the source frame byte for byte (fragment padding
included, PS3.5 A.4), the output must open in tifffile, OpenSlide and large_image at every
level, missing TILED_SPARSE tiles must show the fill tile, and the per-frame checks (EOI,
same colour space and sampling) must give the same outcome as when every frame was parsed.
Real generated series, real files; no mocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.source.frame_index import build_frame_index
from converter.source.instance import read_instance
from converter.source.level_reader import LevelReader
from converter.source.series import build_series
from converter.testkit import SlideSpec, write_series
from converter.testkit.encode import _encoder_for
from tests.readers import open_large_image, open_openslide

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from gen_big import big_spec, tile_pool, write_big_series  # noqa: E402


def _convert(src: Path, out: Path, mode: str = "copy"):
    (_uid, instances), = discover([src]).series.items()
    return convert_series(instances, out, ConversionOptions(mode=mode, threads=1, verify_samples=4)), instances


def _tiles_equal_frames(out: Path, instances) -> tuple[int, set[bytes]]:
    """Compare every tile of every copied level with its frame; return the tiles compared and the fill tiles seen."""
    series = build_series(instances)
    compared, fills = 0, set()
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff or out.stat().st_size < 1 << 32
        for i, level in enumerate(series.levels):
            page = tif.pages[i]
            assert (page.imagewidth, page.imagelength) == (level.width, level.height)
            across = level.tile_index.tiles_across
            with LevelReader(level) as reader, open(out, "rb") as fh:
                for k, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                    fh.seek(offset)
                    raw = fh.read(count)
                    frame = reader.frame_bytes(k % across, k // across)
                    if frame is None:
                        fills.add(raw)
                    else:
                        assert raw == frame, f"level {i} tile {k} differs from its frame"
                    compared += 1
            page.asarray()  # tifffile decodes the whole level from the spliced tiles
    return compared, fills


def test_spliced_levels_are_the_source_frames_and_open_everywhere(tmp_path):
    src = tmp_path / "in"
    write_big_series(big_spec(5000, 3700), src, pool_size=9)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert all(lv.action == "copy" for lv in report.levels) and "splice" in report.timings
    compared, fills = _tiles_equal_frames(tmp_path / "out.tiff", instances)
    assert compared == sum(i.number_of_frames for i in instances) and not fills
    with open_openslide(tmp_path / "out.tiff") as slide, tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        assert slide.level_count == len(instances)
        for lv, (w, h) in enumerate(slide.level_dimensions):
            w, h = min(w, 300), min(h, 300)
            region = np.asarray(slide.read_region((0, 0), lv, (w, h)).convert("RGB")).astype(int)
            assert np.abs(region - tif.pages[lv].asarray()[:h, :w]).mean() < 1  # the same pixels as tifffile's
    source = open_large_image(tmp_path / "out.tiff")
    assert source.getMetadata()["levels"] == len(instances)
    for z in range(source.getMetadata()["levels"]):
        assert source.getTile(0, 0, z)


def test_odd_length_frames_keep_their_padding_byte(tmp_path):
    """An odd-length JPEG frame is stored with one pad byte (PS3.5 A.4); the tile is the fragment, as before."""
    spec = big_spec(2048, 1536)
    pool = tile_pool(spec, 6)
    assert any(len(t) % 2 for t in pool), "the pool has an odd-length frame"
    src = tmp_path / "in"
    write_big_series(spec, src, pool=pool)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    _tiles_equal_frames(tmp_path / "out.tiff", instances)
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif, open(tmp_path / "out.tiff", "rb") as fh:
        page = tif.pages[0]
        padded = 0
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            fh.seek(offset + count - 3)
            padded += fh.read(3) == b"\xff\xd9\x00"
        assert padded > 0


def test_sparse_series_with_holes_points_missing_tiles_at_one_fill_tile(tmp_path):
    src = tmp_path / "in"
    write_series(SlideSpec(width=2000, height=1500, sparse=True, missing_tiles=0.2, shuffle_frames=True), src)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    _compared, fills = _tiles_equal_frames(tmp_path / "out.tiff", instances)
    assert len(fills) == 1
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        page = tif.pages[0]
        level0 = build_series(instances).levels[0]
        missing = [k for k in range(len(page.dataoffsets))
                   if (k % level0.tile_index.tiles_across, k // level0.tile_index.tiles_across) not in level0.tile_index.frames]
        assert missing and len({page.dataoffsets[k] for k in missing}) == 1  # written once


def _pool_with(spec, odd_spec, n: int = 6) -> list[bytes]:
    """The spec's rendered frames, the last one replaced by a frame encoded as `odd_spec` says."""
    pool = tile_pool(spec, n)
    rgb = np.full((spec.tile_size, spec.tile_size, 3), 200, np.uint8)
    rgb[::7, :, 0] = 90
    pool[-1] = _encoder_for(odd_spec)(rgb)
    return pool


def test_frame_with_other_quantisation_tables_still_copies(tmp_path):
    spec = big_spec(2048, 1536)
    pool = _pool_with(spec, big_spec(2048, 1536, quality=60))
    src = tmp_path / "in"
    write_big_series(spec, src, pool=pool)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert all(lv.action == "copy" for lv in report.levels)
    _tiles_equal_frames(tmp_path / "out.tiff", instances)


def test_frame_with_other_subsampling_is_a_mismatch(tmp_path):
    spec = big_spec(2048, 1536)
    odd = SlideSpec(width=2048, height=1536, tile_size=256, quality=90, subsampling="444")
    src = tmp_path / "in"
    write_big_series(spec, src, pool=_pool_with(spec, odd))
    report, _ = _convert(src, tmp_path / "copy.tiff", mode="copy")
    assert not report.ok and "frames differ in colour space or sampling" in report.error
    assert "(1, 1)" in report.error and not (tmp_path / "copy.tiff").exists()
    report, instances = _convert(src, tmp_path / "auto.tiff", mode="auto")
    assert report.ok, report.error
    assert report.levels[0].action == "reencode"
    assert any("re-encoded instead" in n for n in report.notes)


def test_truncated_frame_is_a_decode_error_and_nothing_is_published(tmp_path):
    src = tmp_path / "in"
    write_big_series(big_spec(2048, 1536), src, pool_size=4)
    inst = read_instance(src / "level-0.dcm")
    with open(inst.path, "r+b") as fp:
        index = build_frame_index(inst, fp)
        (offset, length), = index.ranges[5]
        fp.seek(offset + length - 4)
        fp.write(b"\0\0\0\0")  # the EOI marker (and pad) gone: the frame is cut
    report, _ = _convert(src, tmp_path / "out.tiff")
    assert not report.ok
    assert "level-0.dcm: frame 6 is not a complete JPEG bitstream (no end-of-image marker)" in report.error
    assert not (tmp_path / "out.tiff").exists() and not list(tmp_path.glob(".out.tiff.*"))


def test_frames_in_several_fragments_are_copied_joined_by_the_writer(tmp_path):
    """Item headers would sit inside such tiles: the level is not spliced but written from the joined bytes."""
    src = tmp_path / "in"
    write_series(SlideSpec(width=1500, height=1100, fragments_per_frame=3), src)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert report.levels[0].action == "copy" and "splice" not in report.timings
    _tiles_equal_frames(tmp_path / "out.tiff", instances)
