"""Tests of the generator's colour variants (SlideSpec.sample_colour, "jpeg-lossless").

Each variant's frames are checked against the raw bitstream (COD's multi-component
transformation byte, JPEG markers and component ids) and decoded with imagecodecs alone; the
YCbCr variants are turned back into RGB with the PS3.3 C.7.6.3.1.2 YBR_FULL equations written
out here, not with the converter's code. Older specs must keep their series UIDs.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest

from converter.testkit import SlideSpec, level_geometries, series_uids
from tests.converter.testkit.helpers import SMALL, expected_tile, frames_of, j2k_segments, jpeg_segments, tiled_full_position, write


def _ybr_full_to_rgb(a: np.ndarray) -> np.ndarray:
    y, cb, cr = (a[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack((y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)), -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _truth_and_frames(spec: SlideSpec, out_dir: Path):
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    geo = level_geometries(spec)[0]
    frames = frames_of(ds)
    truths = [expected_tile(spec, geo, *tiled_full_position(k, geo, 1)[:2], None, 0) for k in range(len(frames))]
    return ds, frames, truths


J2K_CASES = [
    # (transfer syntax, sample_colour, label override, expected label, COD MCT byte)
    ("jpeg2000-lossless", "rgb", None, "RGB", 0),
    ("jpeg2000-lossless", "rgb", "YBR_FULL_422", "YBR_FULL_422", 0),
    ("jpeg2000", "rgb", "YBR_FULL_422", "YBR_FULL_422", 0),
    ("jpeg2000-lossless", "ybr_full", None, "YBR_FULL", 0),
    ("jpeg2000-lossless", "mct", None, "YBR_RCT", 1),
    ("jpeg2000", "mct", None, "YBR_ICT", 1),
    ("htj2k", "rgb", None, "RGB", 0),
]


@pytest.mark.parametrize("ts, colour, override, label, mct", J2K_CASES)
def test_j2k_variants_have_the_transform_and_label_asked_for(out_dir: Path, ts, colour, override, label, mct) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax=ts, sample_colour=colour, photometric=override)
    ds, frames, truths = _truth_and_frames(spec, out_dir)
    assert ds.PhotometricInterpretation == label
    seg = j2k_segments(frames[0])
    # COD payload (ISO 15444-1 A.6.1): Scod, then SGcod = progression (1), layers (2), MCT (1).
    assert seg[0xFF52][4] == mct, seg[0xFF52].hex()
    lossless = ts != "jpeg2000"
    for data, truth in zip(frames[:4], truths):
        got = imagecodecs.jpeg2k_decode(data)
        if colour == "ybr_full":
            got = _ybr_full_to_rgb(got)
        err = np.abs(got.astype(int) - truth.astype(int)).mean()
        assert err <= (1.0 if lossless else 3.0), err


@pytest.mark.parametrize("ts", ["jpegls", "jpeg-lossless"])
@pytest.mark.parametrize("colour", ["rgb", "ybr_full"])
def test_lossless_jpeg_family_in_rgb_and_ybr_full(out_dir: Path, ts, colour) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax=ts, sample_colour=colour)
    ds, frames, truths = _truth_and_frames(spec, out_dir)
    assert ds.PhotometricInterpretation == ("RGB" if colour == "rgb" else "YBR_FULL")
    assert ds.LossyImageCompression == "00"
    segments = jpeg_segments(frames[0])
    markers = [m for m, _ in segments]
    if ts == "jpeg-lossless":
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
        sof = next(p for m, p in segments if m == 0xC3)  # SOF3: lossless, Huffman
        ids = [sof[6 + 3 * i] for i in range(3)]
        if colour == "rgb":
            assert 0xEE in markers and ids == [ord("R"), ord("G"), ord("B")]  # Adobe APP14
        else:
            assert 0xE0 in markers and ids == [1, 2, 3]  # JFIF
        decode = imagecodecs.ljpeg_decode
    else:
        assert markers[0] == 0xF7  # SOF55, no SPIFF header
        decode = imagecodecs.jpegls_decode
    for data, truth in zip(frames[:4], truths):
        got = decode(data)
        if colour == "ybr_full":
            assert not np.array_equal(got, truth)  # the samples really are YCbCr
            got = _ybr_full_to_rgb(got)
            assert np.abs(got.astype(int) - truth.astype(int)).max() <= 2
        else:
            assert np.array_equal(got, truth)


def test_new_field_keeps_the_series_of_older_specs() -> None:
    # UIDs computed by the generator before sample_colour existed: adding the field kept them.
    study = "2.25.289822587398337639702512191961058416790"
    assert series_uids(SlideSpec(**SMALL, transfer_syntax="jpeg2000")) == (study, "2.25.16066772798620605769609016864183583492")
    assert series_uids(SlideSpec()) == (study, "2.25.189427242749179489205421356470985849906")
    # A non-default value is a different series.
    assert series_uids(SlideSpec(**SMALL, transfer_syntax="jpeg2000", sample_colour="mct"))[1] != "2.25.16066772798620605769609016864183583492"


def test_impossible_sample_colour_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_colour 'mct' cannot be written as 'jpegls'"):
        SlideSpec(**SMALL, transfer_syntax="jpegls", sample_colour="mct")
    with pytest.raises(ValueError, match="sample_colour"):
        SlideSpec(**SMALL, transfer_syntax="jpeg", sample_colour="rgb")
