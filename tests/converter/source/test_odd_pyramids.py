"""Real-world pyramid structures (PS3.3 A.32.8): factor-4 levels, levels with different tile sizes,
frames in several fragments, a level missing in the middle, level 0 last in file order.

Inputs come from converter.testkit.write_series; odd structures are made by dropping or mutating
its files with pydicom (the testkit itself stays as it is). Outputs are opened with OpenSlide and
large_image, the way tile servers open them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.source.instance import read_instance
from converter.source.series import build_series, pyramid_gaps
from converter.testkit import SlideSpec, render_region, write_series
from tests.readers import large_image_region, mad, open_large_image, open_openslide, openslide_region


def _instances(folder: Path):
    (uid, instances), = discover([folder]).series.items()
    return instances


def _convert(tmp_path: Path, folder: Path):
    out = tmp_path / "out" / "slide.tiff"
    out.parent.mkdir(exist_ok=True)
    report = convert_series(_instances(folder), out, ConversionOptions())
    assert report.ok, report.error
    return out, report


def _check_readers(out: Path, spec: SlideSpec) -> None:
    """OpenSlide and large_image see a power-of-two pyramid whose pixels match the slide's rendering."""
    with open_openslide(out) as slide:
        ds = slide.level_downsamples
        assert slide.dimensions == (spec.width, spec.height)
        assert all(abs(d - 2**k) / 2**k < 0.02 for k, d in enumerate(ds)), ds
        n = slide.level_count
    src = open_large_image(out)
    meta = src.getMetadata()
    assert (meta["sizeX"], meta["sizeY"]) == (spec.width, spec.height) and meta["levels"] == n
    x, y = spec.width // 3, spec.height // 3
    want = render_region(spec, x, y, 256, 256)[..., :3]
    assert mad(openslide_region(out, x, y, 256, 256), want).max() < 8
    assert mad(large_image_region(src, x, y, 256, 256), want).max() < 8
    with open_openslide(out) as slide:  # a lower level too, scaled back to level 0 coordinates
        level = min(2, slide.level_count - 1)
        region = np.asarray(slide.read_region((0, 0), level, (64, 64)).convert("RGB"))
        assert region.std() > 1  # tissue texture, not an empty fill


def test_factor_four_pyramid_converts_and_readers_see_every_level(tmp_path: Path) -> None:
    spec = SlideSpec(width=3000, height=2000, downsamples=(1, 4, 16))
    files = write_series(spec, tmp_path / "in")
    series = build_series(_instances(tmp_path / "in"))
    assert [lv.width for lv in series.levels] == [3000, 750, 188]
    assert not any("missing level" in n for n in series.notes)  # factor 4 is a pyramid's own step, not a gap
    out, report = _convert(tmp_path, tmp_path / "in")
    by_index = {lv.index: lv for lv in report.levels}
    assert by_index[2].source_level == 1 and by_index[2].action == "copy"  # downsample 4 copied from source level 1
    assert by_index[4].source_level == 2  # downsample 16
    assert by_index[1].action == "generate" and by_index[3].action == "generate"
    _check_readers(out, spec)
    assert len(files) == 3


def _rewrite(path: Path, **values: str) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_levels_with_different_tile_sizes_form_one_pyramid(tmp_path: Path) -> None:
    a = SlideSpec(width=2000, height=1500, tile_size=256)
    b = SlideSpec(width=2000, height=1500, tile_size=512)  # same seed: the same rendering
    files_a = write_series(a, tmp_path / "a")
    files_b = write_series(b, tmp_path / "b")
    head = read_instance(files_a[0])
    combined = tmp_path / "in"
    combined.mkdir()
    for f in files_a:
        if read_instance(f).image_width == 2000:
            f.rename(combined / f"a-{f.name}")
    for f in files_b:
        inst = read_instance(f)
        if inst.image_width != 2000 and inst.flavor == "VOLUME":
            target = combined / f"b-{f.name}"
            f.rename(target)
            _rewrite(target, StudyInstanceUID=head.study_uid, SeriesInstanceUID=head.series_uid,
                     FrameOfReferenceUID=head.frame_of_reference_uid or "1.2.3")
    series = build_series(_instances(combined))
    assert [(lv.width, lv.tile_width) for lv in series.levels][:2] == [(2000, 256), (1000, 512)]
    out, report = _convert(tmp_path, combined)
    by_index = {lv.index: lv for lv in report.levels}
    assert by_index[0].action == "copy"
    assert by_index[1].source_level == 1 and by_index[1].action == "reencode" and "512x512" in by_index[1].reason
    _check_readers(out, a)


def test_frames_split_over_several_fragments(tmp_path: Path) -> None:
    spec = SlideSpec(width=1500, height=1100, fragments_per_frame=3)
    write_series(spec, tmp_path / "in")
    out, report = _convert(tmp_path, tmp_path / "in")
    assert report.levels[0].action == "copy"
    _check_readers(out, spec)


def test_missing_middle_level_is_detected_noted_and_generated(tmp_path: Path) -> None:
    spec = SlideSpec(width=3000, height=2000)  # levels at downsample 1, 2, 4, 8, 16
    files = write_series(spec, tmp_path / "in")
    gone = next(f for f in files if read_instance(f).image_width == 750)  # downsample 4
    gone.unlink()
    series = build_series(_instances(tmp_path / "in"))
    gaps = [n for n in series.notes if n.startswith("missing level")]
    assert len(gaps) == 1 and "no level at downsample 4" in gaps[0], series.notes
    out, report = _convert(tmp_path, tmp_path / "in")
    assert any("no level at downsample 4" in n for n in report.notes)
    by_index = {lv.index: lv for lv in report.levels}
    assert by_index[2].action == "generate" and (by_index[2].width, by_index[2].height) == (750, 500)
    assert by_index[3].source_level == 2  # the levels below the gap are still used
    _check_readers(out, spec)


def test_pixel_spacing_that_contradicts_the_size_is_noted(tmp_path: Path) -> None:
    files = write_series(SlideSpec(width=1500, height=1100), tmp_path / "in")
    lower = next(f for f in files if read_instance(f).image_width == 750)
    ds = pydicom.dcmread(lower)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [float(v) * 3 for v in measures.PixelSpacing]  # says downsample 6, size says 2
    ds.save_as(lower)
    series = build_series(_instances(tmp_path / "in"))
    assert any("PixelSpacing says downsample 6.00" in n and "the size is used" in n for n in series.notes), series.notes


@pytest.mark.parametrize("downsamples,expected", [
    ([1, 2, 4, 8], 0), ([1, 4, 16], 0), ([1, 2, 8], 1), ([1, 4, 64], 1), ([1, 2, 4, 32], 1), ([1, 3, 9], 0), ([1], 0),
])
def test_pyramid_gaps_rule(downsamples, expected) -> None:
    assert len(pyramid_gaps([float(d) for d in downsamples])) == expected


def test_level_zero_last_in_file_order(tmp_path: Path) -> None:
    spec = SlideSpec(width=1500, height=1100, label=True)
    files = write_series(spec, tmp_path / "in")
    for f in files:  # level 0 sorts last, the label first
        inst = read_instance(f)
        prefix = "zz" if inst.image_width == 1500 and inst.flavor == "VOLUME" else "aa"
        f.rename(f.with_name(f"{prefix}-{f.name}"))
    instances = _instances(tmp_path / "in")
    assert instances[-1].image_width == 1500 or any(i.image_width == 1500 for i in instances)
    series = build_series(list(reversed(instances)))
    assert series.levels[0].width == 1500 and "label" in series.associated
    out, report = _convert(tmp_path, tmp_path / "in")
    assert report.levels[0].source_level == 0 and report.levels[0].action == "copy"
    _check_readers(out, spec)
