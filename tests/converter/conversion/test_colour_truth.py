"""Colour truth end to end: series of every colour variant -> convert_series -> three readers vs ground truth.

The generator (converter.testkit) writes each codec with RGB or YCbCr samples, with the codec's
own transform on or off, and truthful or wrong labels; the converted TIFF is read by OpenSlide,
large_image's TIFF source and tifffile, and compared with the generator's ground-truth pixels
(render_region). A YCbCr/RGB mix-up is off by tens per channel; correct colours are within a few.
Then the colour rule is forced wrong (monkeypatched): the plausibility check must fail the
conversion and publish nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile

from config.settings import ConversionOptions
from converter.codecs import colour
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.testkit import SlideSpec, render_region, write_series
from tests.readers import large_image_region, mad, open_large_image, open_openslide

W, H = 1024, 768
REGION = (100, 80, 600, 500)  # glass and tissue, across tile borders

CASES = {
    # name: (transfer syntax, sample_colour, label override)
    "j2k-rgb-mct-off-labelled-rgb": ("jpeg2000-lossless", "rgb", None),
    "j2k-rgb-mct-off-labelled-ybr-full-422": ("jpeg2000-lossless", "rgb", "YBR_FULL_422"),
    "j2k-lossy-rgb-mct-off-labelled-ybr-full-422": ("jpeg2000", "rgb", "YBR_FULL_422"),
    "j2k-lossy-rgb-mct-off-labelled-rgb": ("jpeg2000", "rgb", None),
    "j2k-ycbcr-mct-off-labelled-ybr-full": ("jpeg2000-lossless", "ybr_full", None),
    "j2k-rct-labelled-ybr-rct": ("jpeg2000-lossless", "mct", None),
    "j2k-ict-labelled-ybr-ict": ("jpeg2000", "mct", None),
    "j2k-rgb-mct-off-labelled-ybr-ict": ("jpeg2000", "rgb", "YBR_ICT"),
    "htj2k-rct": ("htj2k", "mct", None),
    "htj2k-rgb-mct-off-labelled-ybr-full-422": ("htj2k", "rgb", "YBR_FULL_422"),
    "jpegls-rgb": ("jpegls", "rgb", None),
    "jpegls-ybr-full": ("jpegls", "ybr_full", None),
    "jpeg-lossless-rgb": ("jpeg-lossless", "rgb", None),
    "jpeg-lossless-ybr-full": ("jpeg-lossless", "ybr_full", None),
    "native-ybr-full": ("explicit", "ybr_full", None),
}


def _convert(tmp_path, spec: SlideSpec, **options):
    src = tmp_path / "in"
    write_series(spec, src)
    (uid, instances), = discover([src]).series.items()
    out = tmp_path / "out" / "slide.tiff"
    out.parent.mkdir()
    return convert_series(instances, out, ConversionOptions(**options)), out


def _tifffile_region(out, x, y, w, h) -> np.ndarray:
    with tifffile.TiffFile(out) as tif:
        return tif.pages[0].asarray()[y : y + h, x : x + w, :3]


@pytest.mark.parametrize("name", list(CASES))
def test_converted_colours_match_the_ground_truth(tmp_path, name):
    ts, samples, label = CASES[name]
    spec = SlideSpec(width=W, height=H, transfer_syntax=ts, sample_colour=samples, photometric=label)
    report, out = _convert(tmp_path, spec)
    assert report.ok, report.error
    x, y, w, h = REGION
    truth = render_region(spec, x, y, w, h)
    # Source loss (lossy J2K ~ 43 dB, YCbCr rounding) plus JPEG q85 re-encoding; a mix-up is off by > 30.
    tolerance = 5.0
    with open_openslide(out) as slide:
        got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
    assert mad(got, truth).max() <= tolerance, ("openslide", mad(got, truth))
    got = large_image_region(open_large_image(out), x, y, w, h)
    assert mad(got, truth).max() <= tolerance, ("large_image", mad(got, truth))
    got = _tifffile_region(out, x, y, w, h)
    assert mad(got, truth).max() <= tolerance, ("tifffile", mad(got, truth))
    assert all(c.passed for c in report.colour_checks) and len(report.colour_checks) == len(report.levels)
    level0 = report.levels[0].colour
    assert level0["label"] == (label or level0["label"]) and level0["decided"] and level0["why"] and level0["bitstream"]


def test_report_says_why_an_invalid_label_was_overruled(tmp_path):
    spec = SlideSpec(width=W, height=H, transfer_syntax="jpeg2000-lossless", sample_colour="rgb", photometric="YBR_FULL_422")
    report, out = _convert(tmp_path, spec)
    assert report.ok, report.error
    c = report.to_dict()["levels"][0]["colour"]
    assert c["label"] == "YBR_FULL_422" and c["decided"] == "RGB"
    assert "not valid for JPEG 2000" in c["why"] and "COD multiple component transformation 0" in c["bitstream"]


def _swap(real):
    def wrong(*args, **kwargs):
        d = real(*args, **kwargs)
        flipped = {colour.RGB: colour.YBR, colour.YBR: colour.RGB}.get(d.decided, d.decided)
        return dataclasses.replace(d, decided=flipped, why="forced wrong by the test")
    return wrong


@pytest.mark.parametrize("ts, samples, mode", [
    ("jpeg2000-lossless", "rgb", "auto"),
    ("jpeg2000", "mct", "auto"),
    ("jpegls", "ybr_full", "auto"),
    ("jpeg", None, "reencode"),
])
def test_wrong_colour_decision_is_caught_and_nothing_is_published(tmp_path, monkeypatch, ts, samples, mode):
    spec = SlideSpec(width=W, height=H, transfer_syntax=ts, sample_colour=samples)
    monkeypatch.setattr(colour, "decide", _swap(colour.decide))
    report, out = _convert(tmp_path, spec, mode=mode)
    assert not report.ok
    assert "wrong colours" in report.error and "nothing was published" in report.error
    assert "near-neutral" in report.error
    # verify.py alone shares the conversion's decoding, so it passed: only the plausibility check caught it.
    assert report.checks and all(c.passed for c in report.checks)
    assert any(not c.passed for c in report.colour_checks)
    assert list(out.parent.iterdir()) == []


def test_dark_background_is_noted_not_failed(tmp_path):
    from converter.tiff.plausibility import colour_clusters, judge

    rng = np.random.default_rng(1)
    dark = np.clip(rng.normal(12, 4, (256, 256, 3)), 0, 255).astype(np.uint8)  # fluorescence-like
    dark[100:140, 100:140] = (40, 220, 60)  # a bright green signal
    check = judge(0, 1, colour_clusters(dark))
    assert check.passed and "no bright background" in check.detail


def test_real_sample_passes_and_its_swap_fails(gcp_sample, tmp_path, monkeypatch):
    (uid, instances), = discover([gcp_sample]).series.items()
    out = tmp_path / "ok" / "slide.tiff"
    out.parent.mkdir()
    report = convert_series(instances, out, ConversionOptions())
    assert report.ok, report.error
    assert all(c.passed for c in report.colour_checks)
    monkeypatch.setattr(colour, "decide", _swap(colour.decide))
    bad = tmp_path / "bad" / "slide.tiff"
    bad.parent.mkdir()
    report = convert_series(instances, bad, ConversionOptions())
    assert not report.ok and "wrong colours" in report.error
    assert list(bad.parent.iterdir()) == []
