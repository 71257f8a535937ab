"""Re-encoded tiles go once, straight into the temporary TIFF, its structure behind them (converter.conversion.convert)."""

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


def test_reencoded_tiles_are_written_once_before_the_structure(tmp_path):
    report, out = convert(tmp_path, SPEC, mode="reencode", tile_size=256)
    assert report.ok, report.error
    pages, bigtiff = _tiles(out)
    assert not bigtiff
    total = sum(n for _d, _s, n in pages[: len(report.levels)])
    with tifffile.TiffFile(out) as tif:
        spans = sorted((o, n) for page in tif.pages[: len(report.levels)] for o, n in zip(page.dataoffsets, page.databytecounts))
        ifds = [page.offset for page in tif.pages]
    # Every level's tiles lie back to back from byte 16 on, each once (no second copy of any tile),
    # and the structure (every IFD) behind them (converter.tiff.relocate).
    assert spans[0][0] == 16
    assert all(a + n == b for (a, n), (b, _m) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] == 16 + total
    assert min(ifds) >= 16 + total
    assert [lv.bytes for lv in report.levels] == [n for _d, _s, n in pages[: len(report.levels)]]
    assert not list(out.parent.glob(".*"))  # no work folder, no spool left behind
    check_readers(out, SPEC, report, tolerance=6.0)


def test_classic_tiff_overflowing_gets_a_bigtiff_structure_and_the_tiles_stay(tmp_path, monkeypatch):
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

