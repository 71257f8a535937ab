"""Tests of converter/testkit/dataset.py: UIDs, common attributes, optional attributes, grayscale.

The generator is the ground truth for the converter's tests, so these tests check it against
independent readers (see tests/converter/testkit/helpers.py) rather than against its own helpers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGBaseline8Bit, VLWholeSlideMicroscopyImageStorage

from converter.testkit import SlideSpec, render_region, series_uids, srgb_icc_profile
from tests.converter.testkit.helpers import SMALL, decode, frames_of, jpeg_segments, mae, write


def test_series_uids_and_common_attributes(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, label=True, overview=True, thumbnail=True)
    paths = write(spec, out_dir)
    study, series = series_uids(spec)
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [p.name for p in paths] == [
        "level-0.dcm", "level-1.dcm", "level-2.dcm", "level-3.dcm",
        "label.dcm", "overview.dcm", "thumbnail.dcm",
    ]
    assert {d.StudyInstanceUID for d in datasets} == {study}
    assert {d.SeriesInstanceUID for d in datasets} == {series}
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    assert len({d.InstanceNumber for d in datasets}) == len(datasets)
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1
    for d in datasets:
        assert d.SOPClassUID == VLWholeSlideMicroscopyImageStorage
        assert d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert d.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert d.Modality == "SM" and d.PatientID == "SYN-0"
        assert str(d.PatientName) == "Synthetic^Slide"
        assert d.Manufacturer == "wsi-node synthetic"
        assert d.ContainerIdentifier == "SYN-0-SLIDE"
        assert d.OpticalPathSequence[0].OpticalPathIdentifier == "1"
        assert d.OpticalPathSequence[0].ICCProfile == srgb_icc_profile()
        assert d.LossyImageCompression == "01" and float(d.LossyImageCompressionRatio) > 2
        assert d["PixelData"].VR == "OB" and d["PixelData"].is_undefined_length
    # Same seed, other spec: same study (same patient), different series.
    other = series_uids(dataclasses.replace(spec, quality=80))
    assert other[0] == study and other[1] != series


def test_optional_attributes_can_be_omitted(out_dir: Path) -> None:
    spec = SlideSpec(
        **SMALL, image_type=False, dimension_organization=False, frame_of_reference_per_level=True,
        icc_profile=False,
    )
    datasets = [pydicom.dcmread(p) for p in write(spec, out_dir)]
    for ds in datasets:
        assert "ImageType" not in ds and "DimensionOrganizationType" not in ds
        assert "ICCProfile" not in ds.OpticalPathSequence[0]
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == len(datasets)


def test_grayscale_series(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, samples_per_pixel=1, label=True)
    paths = write(spec, out_dir)
    ds = pydicom.dcmread(paths[0])
    assert ds.SamplesPerPixel == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert "PlanarConfiguration" not in ds and "ICCProfile" not in ds.OpticalPathSequence[0]
    assert ds.PresentationLUTShape == "IDENTITY"
    data = frames_of(ds)[0]
    sof = next(p for m, p in jpeg_segments(data) if m == 0xC0)
    assert sof[5] == 1
    tile = decode(data, ds)
    assert tile.ndim == 2 and mae(tile, render_region(spec, 0, 0, 128, 128)) < 3
    lossless = SlideSpec(**SMALL, samples_per_pixel=1, transfer_syntax="jpeg2000-lossless")
    ds = pydicom.dcmread(write(lossless, out_dir)[0])
    assert np.array_equal(decode(frames_of(ds)[6], ds), render_region(lossless, 128, 128, 128, 128))
