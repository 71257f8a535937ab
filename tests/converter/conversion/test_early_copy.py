"""The copy started before the plan (converter.conversion.early_copy): adopted when it holds what the
plan copies, replaced by a fresh copy when not, stopped when the conversion fails; the output is the
same frames either way, with the structure behind them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import tifffile

from config.settings import ConversionOptions
from converter.conversion import convert as convert_module
from converter.conversion import early_copy
from converter.source.discover import discover
from converter.testkit import SlideSpec, write_series
from tests.converter.conversion.test_spliced_copy import _convert, _tiles_equal_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from gen_big import big_spec, write_big_series  # noqa: E402


class _Counting(convert_module.Copier):
    made: list = []

    def __init__(self, *args, **kwargs):
        _Counting.made.append(args)
        super().__init__(*args, **kwargs)


def _series(tmp_path):
    src = tmp_path / "in"
    write_big_series(big_spec(3000, 2200), src, pool_size=6)
    return src


def test_early_copy_is_adopted_and_the_tiles_are_the_frames(tmp_path, monkeypatch):
    src = _series(tmp_path)
    _Counting.made = []
    monkeypatch.setattr(convert_module, "Copier", _Counting)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert _Counting.made == []  # no second copy: the early one was adopted
    compared, _fills = _tiles_equal_frames(tmp_path / "out.tiff", instances)
    assert compared == sum(i.number_of_frames for i in instances)
    with tifffile.TiffFile(tmp_path / "out.tiff") as tif:
        frames_end = max(max(p.dataoffsets) + 1 for p in tif.pages[: len(instances)])
        assert min(p.offset for p in tif.pages) > frames_end  # the structure behind the copied bytes
    assert not list(tmp_path.glob(".out.tiff.*"))


def test_early_copy_not_matching_the_plan_is_replaced(tmp_path, monkeypatch):
    src = _series(tmp_path)
    adopted, _ = _convert(src, tmp_path / "adopted.tiff")
    _Counting.made = []
    monkeypatch.setattr(convert_module, "Copier", _Counting)
    monkeypatch.setattr(early_copy, "UNUSED_ALLOWANCE", -(1 << 40))  # no early copy is ever good enough
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert len(_Counting.made) == 1  # the plan's own ranges, copied afresh
    _tiles_equal_frames(tmp_path / "out.tiff", instances)
    # Only the plan's ranges are in the file: not the early copy's larger ones as well.
    assert (tmp_path / "out.tiff").stat().st_size <= (tmp_path / "adopted.tiff").stat().st_size
    assert not list(tmp_path.glob(".out.tiff.*"))


def test_early_copy_is_stopped_when_the_conversion_fails(tmp_path, monkeypatch):
    src = _series(tmp_path)

    def broken_plan(*args, **kwargs):
        raise RuntimeError("planning failed")

    monkeypatch.setattr(convert_module, "plan_layout", broken_plan)
    report, _ = _convert(src, tmp_path / "out.tiff")
    assert not report.ok and "planning failed" in report.error
    assert not [t for t in threading.enumerate() if t.name == "wsi-node-copy"]
    assert not (tmp_path / "out.tiff").exists() and not list(tmp_path.glob(".out.tiff.*"))


def test_only_jpeg_pyramid_levels_are_copied_early_largest_first(tmp_path):
    src = tmp_path / "in"
    write_series(SlideSpec(width=1500, height=1100), src)
    (_uid, instances), = discover([src]).series.items()
    runs = early_copy.likely_copied(instances, ConversionOptions(mode="auto"))
    volumes = {i.path for i in instances if i.flavor == "VOLUME"}
    assert runs and {r.path for r in runs} == volumes  # no label or overview
    assert [r.stop - r.start for r in runs] == sorted((r.stop - r.start for r in runs), reverse=True)
    assert early_copy.likely_copied(instances, ConversionOptions(mode="reencode")) == []
    has_thumbnail = any(i.flavor == "THUMBNAIL" for i in instances)
    assert bool(early_copy.likely_copied(instances, ConversionOptions(mode="copy", layout="svs"))) == has_thumbnail


def test_bytes_after_the_last_frame_are_not_left_in_the_output(tmp_path, monkeypatch):
    """Elements after the Pixel Data (here a trailing padding element with a marker) were copied early: zeroed."""
    src = _series(tmp_path)
    _Counting.made = []
    monkeypatch.setattr(convert_module, "Copier", _Counting)
    marker = b"NOT-A-FRAME-" * 100
    level0 = src / "level-0.dcm"
    with open(level0, "ab") as fp:  # (FFFC,FFFC) Data Set Trailing Padding, OB (PS3.10 7.2)
        fp.write(b"\xfc\xff\xfc\xffOB\x00\x00" + len(marker).to_bytes(4, "little") + marker)
    report, instances = _convert(src, tmp_path / "out.tiff")
    assert report.ok, report.error
    assert _Counting.made == []  # adopted: the early copy did carry the padding along
    _tiles_equal_frames(tmp_path / "out.tiff", instances)
    assert marker[:24] not in (tmp_path / "out.tiff").read_bytes()


def test_an_unused_early_range_is_never_adopted(tmp_path):
    src = _series(tmp_path)
    (_uid, instances), = discover([src]).series.items()
    options = ConversionOptions(mode="copy")
    early = early_copy.start_early_copy(instances, tmp_path / "t.tmp", options)
    runs = [p.run for p in early.places]
    assert early_copy.adopt(early, runs[:-1]) is None  # the last level's bytes would sit unreferenced
    assert not early._thread.is_alive()


def test_a_missing_output_folder_is_made_before_the_copy_starts(tmp_path):
    src = _series(tmp_path)
    report, instances = _convert(src, tmp_path / "new" / "deeper" / "out.tiff")
    assert report.ok, report.error
    assert report.source["copy_started"] == "before the plan"
    _tiles_equal_frames(tmp_path / "new" / "deeper" / "out.tiff", instances)
