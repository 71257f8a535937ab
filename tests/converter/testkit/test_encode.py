"""Tests of converter/testkit/encode.py: every transfer syntax's frames are what the header says.

The generator is the ground truth for the converter's tests, so these tests check it against
independent readers (see tests/converter/testkit/helpers.py) rather than against its own helpers.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless

from converter.testkit import SlideSpec, available_transfer_syntaxes, level_geometries, render_region
from tests.converter.testkit.helpers import (
    LOSSLESS,
    SMALL,
    decode,
    expected_tile,
    frames_of,
    j2k_segments,
    jpeg_segments,
    mae,
    tiled_full_position,
    write,
)


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_syntaxes_decode_exactly(out_dir: Path, name: str) -> None:
    if name not in available_transfer_syntaxes():
        pytest.skip(f"imagecodecs cannot encode {name}")
    spec = SlideSpec(**SMALL, transfer_syntax=name)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.LossyImageCompression == "00" and "LossyImageCompressionRatio" not in ds
    geo = level_geometries(spec)[0]
    for k, data in enumerate(frames_of(ds)):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        assert np.array_equal(decode(data, ds), expected_tile(spec, geo, col, row, None, 0))


def test_native_encodings_are_what_the_meta_says(out_dir: Path) -> None:
    implicit = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="implicit"), out_dir)[0])
    explicit = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="explicit"), out_dir)[0])
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert implicit.original_encoding == (True, True)
    assert explicit.original_encoding == (False, True)
    assert explicit["PixelData"].VR == "OB"
    assert len(implicit.PixelData) == 20 * 128 * 128 * 3
    # pydicom's native decoder agrees with the ground truth (frame 7 = column 2, row 1).
    from pydicom.pixels import pixel_array

    spec = SlideSpec(**SMALL, transfer_syntax="implicit")
    frame = pixel_array(implicit, index=7)
    assert np.array_equal(frame, render_region(spec, 256, 128, 128, 128))


@pytest.mark.parametrize(
    "name, subsampling, photometric, sampling",
    [
        ("jpeg", "420", "YBR_FULL_422", [0x22, 0x11, 0x11]),
        ("jpeg", "422", "YBR_FULL_422", [0x21, 0x11, 0x11]),
        ("jpeg", "444", "YBR_FULL", [0x11, 0x11, 0x11]),
        ("jpeg-rgb", "420", "RGB", [0x11, 0x11, 0x11]),
    ],
)
def test_jpeg_bitstream_matches_label(
    out_dir: Path, name: str, subsampling: str, photometric: str, sampling: list[int]
) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax=name, subsampling=subsampling)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.PhotometricInterpretation == photometric
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    frames = frames_of(ds)
    segments = jpeg_segments(frames[0])
    markers = [m for m, _ in segments]
    sof = next(p for m, p in segments if m == 0xC0)  # baseline SOF0 only
    assert not {0xC1, 0xC2, 0xC3} & set(markers)
    assert sof[5] == 3 and [sof[7 + 3 * i] for i in range(3)] == sampling
    if name == "jpeg":
        assert any(m == 0xE0 and p.startswith(b"JFIF\0") for m, p in segments)
        assert 0xEE not in markers
    else:
        adobe = [p for m, p in segments if m == 0xEE]
        assert adobe and adobe[0].startswith(b"Adobe") and adobe[0][11] == 0  # transform 0 = RGB
        assert 0xE0 not in markers
        assert [sof[6 + 3 * i] for i in range(3)] == list(b"RGB")
    # Decoded frames are close to the truth; reading the samples with the wrong colour model
    # is far off, so a converter that swaps YCbCr and RGB cannot pass a tolerance test.
    geo = level_geometries(spec)[0]
    errors, swapped = [], []
    for k, data in enumerate(frames):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        truth = expected_tile(spec, geo, col, row, None, 0)
        errors.append(mae(imagecodecs.jpeg8_decode(data), truth))
        if name == "jpeg":
            raw = imagecodecs.jpeg8_decode(data, outcolorspace="YCBCR")  # YCbCr read as RGB
        else:
            ycc = imagecodecs.jpeg8_decode(data).astype(float)  # RGB read as YCbCr
            y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
            raw = np.stack([y + 1.402 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.772 * cb], -1)
            raw = np.clip(raw, 0, 255)
        swapped.append(mae(raw, truth))
    assert max(errors) < 4.0 and np.mean(errors) < 2.5
    assert min(swapped) > 25


def test_photometric_override_reproduces_wsi2dcm_mislabel(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, photometric="RGB")
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    assert ds.PhotometricInterpretation == "RGB"
    segments = jpeg_segments(frames_of(ds)[0])
    assert any(m == 0xE0 and p.startswith(b"JFIF\0") for m, p in segments)  # still YCbCr
    sof = next(p for m, p in segments if m == 0xC0)
    assert sof[7] == 0x22  # and still 4:2:0
    truthful = pydicom.dcmread(write(SlideSpec(**SMALL), out_dir)[0])
    assert frames_of(ds) == frames_of(truthful)  # only the label differs


def test_jpeg2000_codestreams(out_dir: Path) -> None:
    lossy = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="jpeg2000"), out_dir)[0])
    lossless = pydicom.dcmread(
        write(SlideSpec(**SMALL, transfer_syntax="jpeg2000-lossless"), out_dir)[0]
    )
    assert lossy.file_meta.TransferSyntaxUID == JPEG2000
    assert lossless.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert lossy.PhotometricInterpretation == "YBR_ICT"
    assert lossless.PhotometricInterpretation == "YBR_RCT"
    assert lossy.LossyImageCompression == "01" and lossy.LossyImageCompressionMethod == "ISO_15444_1"
    cod_lossy = j2k_segments(frames_of(lossy)[0])[0xFF52]
    cod_lossless = j2k_segments(frames_of(lossless)[0])[0xFF52]
    # SGcod byte 4: multiple component transform; SPcod byte 9: 0 = 9/7 irreversible, 1 = 5/3
    assert (cod_lossy[4], cod_lossy[9]) == (1, 0)
    assert (cod_lossless[4], cod_lossless[9]) == (1, 1)
    spec = SlideSpec(**SMALL, transfer_syntax="jpeg2000")
    geo = level_geometries(spec)[0]
    for k, data in enumerate(frames_of(lossy)):
        col, row, _, _ = tiled_full_position(k, geo, 1)
        assert mae(imagecodecs.jpeg2k_decode(data), expected_tile(spec, geo, col, row, None, 0)) < 3


def test_htj2k_and_jpegls_streams(out_dir: Path) -> None:
    available = available_transfer_syntaxes()
    if "htj2k" in available:
        ds = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="htj2k"), out_dir)[0])
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"
        seg = j2k_segments(frames_of(ds)[0])
        assert 0xFF50 in seg  # CAP marker: Part 15 (high-throughput) codestream
        assert seg[0xFF52][9] == 1 and ds.PhotometricInterpretation == "YBR_RCT"
    if "jpegls" in available:
        ds = pydicom.dcmread(write(SlideSpec(**SMALL, transfer_syntax="jpegls"), out_dir)[0])
        data = frames_of(ds)[0]
        assert data[:4] == b"\xff\xd8\xff\xf7"  # SOI then SOF55: no SPIFF header
        sos = next(p for m, p in jpeg_segments(data) if m == 0xDA)
        assert sos[0] == 3 and sos[-3] == 0  # three components, NEAR = 0 (lossless)
        assert ds.PhotometricInterpretation == "RGB"
