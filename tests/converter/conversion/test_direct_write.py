"""Re-encoded tiles go once, straight into the temporary TIFF behind its structure (converter.conversion.convert)."""

from __future__ import annotations

import hashlib

import tifffile

from converter.conversion import convert as convert_module
from converter.testkit import SlideSpec
from tests.converter.conversion.test_convert import check_readers, convert

SPEC = SlideSpec(width=1500, height=1100)


def _tiles(path):
    """Per IFD: digest of its tiles' bytes in raster order, and where its tiles lie."""
    out = []
    with tifffile.TiffFile(path) as tif:
        fh = tif.filehandle
        for page in tif.pages:
            h = hashlib.sha1()
            for off, n in zip(page.dataoffsets, page.databytecounts):
                fh.seek(off)
                h.update(fh.read(n))
            out.append((h.hexdigest(), min(page.dataoffsets), sum(page.databytecounts)))
        return out, tif.is_bigtiff


def test_reencoded_tiles_are_written_once_after_the_structure(tmp_path):
    report, out = convert(tmp_path, SPEC, mode="reencode", tile_size=256)
    assert report.ok, report.error
    pages, bigtiff = _tiles(out)
    assert not bigtiff
    tiles = pages[: len(report.levels)]
    structure_end = min(start for _d, start, _n in tiles)
    # Every level's tiles lie behind the whole structure, back to back, each once: the file is
    # the structure plus the tiles and nothing else (no second copy of any tile).
    assert out.stat().st_size == structure_end + sum(n for _d, _s, n in tiles)
    assert [lv.bytes for lv in report.levels] == [n for _d, _s, n in tiles]
    assert not list(out.parent.glob(".*"))  # no work folder, no spool left behind
    check_readers(out, SPEC, report, tolerance=6.0)


def test_classic_tiff_overflowing_is_moved_behind_a_bigtiff_structure(tmp_path, monkeypatch):
    classic, out = convert(tmp_path / "a", SPEC, mode="reencode", tile_size=256)
    assert classic.ok
    want, _ = _tiles(out)
    # A limit the tiles cross, as 4 GiB would be crossed by a slide whose estimate said classic.
    monkeypatch.setattr(convert_module, "CLASSIC_LIMIT", 200_000)
    report, big_out = convert(tmp_path / "b", SPEC, mode="reencode", tile_size=256)
    assert report.ok, report.error
    assert "output exceeded 4 GB; written as BigTIFF" in report.notes
    got, bigtiff = _tiles(big_out)
    assert bigtiff
    assert [d for d, _s, _n in got] == [d for d, _s, _n in want]  # the same tiles, moved as they were
    assert not list(big_out.parent.glob(".*"))
    check_readers(big_out, SPEC, report, tolerance=6.0)

