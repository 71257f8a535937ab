"""End to end: generated series of many shapes -> convert_series -> opened by OpenSlide and large_image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.testkit import SlideSpec, render_region, write_series
from tests.readers import large_image_region, mad, open_large_image, open_openslide

W, H = 1500, 1100
# Regions that cross tile borders, with tissue in them.
REGIONS = [(200, 150, 400, 300), (1000, 700, 480, 390)]


def convert(tmp_path, spec: SlideSpec, **options):
    src = tmp_path / "in"
    write_series(spec, src)
    found = discover([src])
    assert not found.rejected
    (uid, instances), = found.series.items()
    out = tmp_path / "out" / "slide.tiff"
    out.parent.mkdir()
    report = convert_series(instances, out, ConversionOptions(**options))
    return report, out


def check_readers(out, spec: SlideSpec, report, tolerance: float, svs: bool = False):
    """Open with OpenSlide and large_image's TIFF source; compare pixels with the generator's ground truth."""
    gray = spec.samples_per_pixel == 1
    with open_openslide(out) as slide:
        assert slide.level_dimensions[0] == (spec.width, spec.height)
        assert slide.level_count == len(report.levels)
        for lv, dims in zip(report.levels, slide.level_dimensions):
            assert dims == (lv.width, lv.height)
        row_mm, col_mm = spec.pixel_spacing_mm
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(col_mm * 1000, rel=1e-4)
        if not svs:  # Aperio's description has one MPP (the column spacing) for both axes
            assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(row_mm * 1000, rel=1e-4)
        for x, y, w, h in REGIONS:
            got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
            truth = render_region(spec, x, y, w, h)
            if gray:
                truth = np.repeat(truth[..., None], 3, axis=2)
            assert mad(got, truth).max() <= tolerance, (x, y)
        # A lower level, too.
        level = min(2, slide.level_count - 1)
        ds = round(slide.level_downsamples[level])
        got = np.asarray(slide.read_region((0, 0), level, (200, 200)).convert("RGB"))
        truth = render_region(spec, 0, 0, 200, 200, downsample=ds)
        if gray:
            truth = np.repeat(truth[..., None], 3, axis=2)
        assert mad(got, truth).max() <= tolerance + 4
    source = open_large_image(out)
    meta = source.getMetadata()
    assert (meta["sizeX"], meta["sizeY"]) == (spec.width, spec.height)
    assert meta["levels"] == len(report.levels)
    x, y, w, h = REGIONS[0]
    got = large_image_region(source, x, y, w, h)
    truth = render_region(spec, x, y, w, h)
    if gray:
        got = got[..., :1]
        truth = truth[..., None]
    assert mad(got, truth).max() <= tolerance


CASES = {
    "jpeg-420": (SlideSpec(width=W, height=H), "copy"),
    "jpeg-422": (SlideSpec(width=W, height=H, subsampling="422"), "copy"),
    "jpeg-444": (SlideSpec(width=W, height=H, subsampling="444"), "copy"),
    "jpeg-adobe-rgb": (SlideSpec(width=W, height=H, transfer_syntax="jpeg-rgb"), "copy"),
    "jpeg-labelled-rgb": (SlideSpec(width=W, height=H, photometric="RGB"), "copy"),
    "jpeg2000": (SlideSpec(width=W, height=H, transfer_syntax="jpeg2000"), "reencode"),
    "jpeg2000-lossless": (SlideSpec(width=W, height=H, transfer_syntax="jpeg2000-lossless"), "reencode"),
    "htj2k": (SlideSpec(width=W, height=H, transfer_syntax="htj2k"), "reencode"),
    "jpegls": (SlideSpec(width=W, height=H, transfer_syntax="jpegls"), "reencode"),
    "explicit": (SlideSpec(width=W, height=H, transfer_syntax="explicit"), "reencode"),
    "implicit": (SlideSpec(width=W, height=H, transfer_syntax="implicit"), "reencode"),
    "sparse-shuffled": (SlideSpec(width=W, height=H, sparse=True, missing_tiles=0.15, shuffle_frames=True), "copy"),
    "concatenated-extended-offsets": (SlideSpec(width=W, height=H, concatenation_parts=3, offset_table="extended"), "copy"),
    "empty-offset-table": (SlideSpec(width=W, height=H, offset_table="empty"), "copy"),
    "multi-fragment-frames": (SlideSpec(width=W, height=H, fragments_per_frame=3), "copy"),
    "grayscale": (SlideSpec(width=W, height=H, samples_per_pixel=1), "copy"),
    "tile-240": (SlideSpec(width=W, height=H, tile_size=240), "copy"),
    "tile-500": (SlideSpec(width=W, height=H, tile_size=500), "reencode"),
    "no-image-type": (SlideSpec(width=W, height=H, image_type=False, dimension_organization=False, frame_of_reference_per_level=True), "copy"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_series_shapes(tmp_path, name):
    spec, level0_action = CASES[name]
    report, out = convert(tmp_path, spec)
    assert report.ok, report.error
    assert report.levels[0].action == level0_action
    assert all(c.passed for c in report.checks)
    assert {c.level for c in report.checks} == {lv.index for lv in report.levels}
    if spec.sparse and spec.missing_tiles:
        assert any("absent" in n for n in report.notes)
    lossless = spec.transfer_syntax in ("jpeg2000-lossless", "jpegls", "explicit", "implicit")
    # Source loss (JPEG q90 frames) plus re-encoding; a YCbCr/RGB mix-up is off by tens.
    check_readers(out, spec, report, tolerance=4.0 if lossless else 6.0)


def test_copy_mode_is_byte_identical_and_tagged_from_the_bitstream(tmp_path):
    import tifffile

    from converter.source.instance import read_instance
    from converter.source.level import Level
    from converter.source.level_reader import LevelReader

    spec = SlideSpec(width=W, height=H, photometric="RGB")  # JFIF YCbCr frames labelled RGB
    report, out = convert(tmp_path, spec, mode="copy")
    assert report.ok, report.error
    assert [lv.action for lv in report.levels] == ["copy"] * len(report.levels)
    level0 = [i for i in (read_instance(p) for p in (tmp_path / "in").iterdir()) if i.image_width == W]
    with LevelReader(Level(level0)) as reader, tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
        assert tuple(page.tags["YCbCrSubSampling"].value) == (2, 2)
        across = -(-W // page.tilewidth)
        for i, (off, n) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            tif.filehandle.seek(off)
            assert tif.filehandle.read(n) == reader.frame_bytes(i % across, i // across)


def test_factor_four_pyramid_generates_missing_levels(tmp_path):
    spec = SlideSpec(width=3000, height=2200, downsamples=(1, 4, 16))
    report, out = convert(tmp_path, spec)
    assert report.ok, report.error
    assert [lv.action for lv in report.levels] == ["copy", "generate", "copy", "generate", "copy"]
    check_readers(out, spec, report, tolerance=6.0)


def test_reencode_mode_uses_quality_and_tile_size(tmp_path):
    import tifffile

    from converter.codecs.jpeg import parse_jpeg

    spec = SlideSpec(width=W, height=H)
    report, out = convert(tmp_path, spec, mode="reencode", quality=80, tile_size=128)
    assert report.ok, report.error
    assert {lv.action for lv in report.levels} <= {"reencode", "generate"}
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert (page.tilewidth, page.tilelength) == (128, 128)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        tif.filehandle.seek(page.dataoffsets[5])
        info = parse_jpeg(tif.filehandle.read(page.databytecounts[5]))
        assert info.colorspace == "RGB" and info.subsampling == (1, 1)
    check_readers(out, spec, report, tolerance=6.0)


@pytest.mark.parametrize("quality", [50, 85])
def test_reencoded_tiles_are_true_rgb_at_low_quality(tmp_path, quality):
    """libvips' rgbjpeg writes YCbCr 4:2:0 tagged RGB below Q90; our tiles must decode right in every reader."""
    spec = SlideSpec(width=W, height=H, transfer_syntax="jpeg2000-lossless")
    report, out = convert(tmp_path, spec, quality=quality)
    assert report.ok, report.error
    assert all(c.max_mad <= 3.0 for c in report.checks)
    check_readers(out, spec, report, tolerance=4.0)


def test_associated_images_generic_layout(tmp_path):
    spec = SlideSpec(width=W, height=H, label=True, overview=True, thumbnail=True)
    report, out = convert(tmp_path, spec)
    assert report.ok, report.error
    assert sorted(report.associated) == ["label", "macro", "thumbnail"]
    source = open_large_image(out)
    assert sorted(source.getAssociatedImagesList()) == ["label", "macro", "thumbnail"]
    label = np.asarray(source.getAssociatedImage("label", format="numpy")[0])
    assert label.shape[0] > 10 and label.shape[1] > 10


def test_no_label_drops_the_label(tmp_path):
    spec = SlideSpec(width=W, height=H, label=True, overview=True)
    report, out = convert(tmp_path, spec, include_label=False)
    assert report.ok, report.error
    assert "label" not in report.associated
    assert "label" not in open_large_image(out).getAssociatedImagesList()
    assert b"label" not in out.read_bytes()[-200000:] or "macro" in report.associated


def test_svs_layout_exposes_label_and_macro_in_openslide(tmp_path):
    spec = SlideSpec(width=W, height=H, label=True, overview=True)
    report, out = convert(tmp_path, spec, layout="svs")
    assert report.ok, report.error
    with open_openslide(out) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.level_count == len(report.levels)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(spec.pixel_spacing_mm[1] * 1000, rel=1e-4)
    check_readers(out, spec, report, tolerance=6.0, svs=True)


@pytest.mark.parametrize("policy", ["strip", "keep"])
def test_icc_policy(tmp_path, policy):
    import tifffile

    spec = SlideSpec(width=W, height=H, icc_profile=True)
    report, out = convert(tmp_path, spec, icc=policy)
    assert report.ok, report.error
    with tifffile.TiffFile(out) as tif:
        tag = tif.pages[0].tags.get("InterColorProfile")
        if policy == "strip":
            assert tag is None
        else:
            assert tag is not None and bytes(tag.value)[36:40] == b"acsp"


def test_focal_planes_and_optical_paths_are_reported(tmp_path):
    spec = SlideSpec(width=W, height=H, focal_planes=3, optical_paths=2)
    report, out = convert(tmp_path, spec)
    assert report.ok, report.error
    assert any("focal plane" in n for n in report.notes)
    assert any("optical path" in n for n in report.notes)
    check_readers(out, spec, report, tolerance=6.0)


def test_sidecar_report(tmp_path):
    spec = SlideSpec(width=W, height=H, transfer_syntax="jpeg2000")
    report, out = convert(tmp_path, spec)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["status"] == "published"
    assert sidecar["levels"][0]["action"] == "reencode"
    assert "JPEG 2000" in sidecar["levels"][0]["reason"]
    assert sidecar["checks"] and all(c["passed"] for c in sidecar["checks"])
    assert {"plan", "pixels", "write", "verify", "total"} <= set(sidecar["timings"])
    import re

    import pydicom

    ds = pydicom.dcmread(next((tmp_path / "in").iterdir()), stop_before_pixels=True)
    name, pid = str(ds.PatientName), str(ds.PatientID)
    assert name and pid
    for text in (out.with_suffix(".json").read_text(), out.read_bytes().decode("latin-1")):
        assert name not in text
        assert not re.search(r"(?<![\w-])" + re.escape(pid) + r"(?![\w-])", text)  # the patient id as a whole token
