"""Tests of converter/testkit/write.py: byte-identical series, non-WSI instances, and readers.

write_series must give byte-identical files for the same spec whatever the thread count;
write_non_wsi valid Part 10 instances; and independent readers (wsidicom, openslide, when
installed) must read the series written.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage

from converter.testkit import (
    MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE,
    SlideSpec,
    render_region,
    series_uids,
    write_non_wsi,
    write_series,
)
from tests.converter.testkit.helpers import SMALL, mae, write


def test_write_series_is_byte_identical(tmp_path: Path) -> None:
    spec = SlideSpec(
        **SMALL, sparse=True, missing_tiles=0.2, shuffle_frames=True, label=True,
        overview=True, thumbnail=True, concatenation_parts=2,
    )
    first = write_series(spec, tmp_path / "a", workers=1)
    second = write_series(spec, tmp_path / "b", workers=3)  # thread count must not matter
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not list((tmp_path / "a").glob("*.tmp"))
    other = write_series(dataclasses.replace(spec, seed=1), tmp_path / "c")
    ds_a, ds_c = pydicom.dcmread(first[0]), pydicom.dcmread(other[0])
    assert ds_a.SOPInstanceUID != ds_c.SOPInstanceUID
    assert ds_a.PixelData != ds_c.PixelData


@pytest.mark.parametrize(
    "kind, sop_class, modality",
    [
        ("ct", CTImageStorage, "CT"),
        ("seg", SegmentationStorage, "SEG"),
        ("annotation", MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE, "ANN"),
    ],
)
def test_non_wsi_instances(tmp_path: Path, kind: str, sop_class: str, modality: str) -> None:
    study, series = series_uids(SlideSpec())
    path = write_non_wsi(kind, tmp_path, study, series, seed=4)
    ds = pydicom.dcmread(path)  # raises on a missing preamble / file meta
    assert ds.SOPClassUID == sop_class == ds.file_meta.MediaStorageSOPClassUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality) == (study, series, modality)
    assert ds.PatientID == "SYN-4"
    assert path.read_bytes() == write_non_wsi(kind, tmp_path / "again", study, series, seed=4).read_bytes()
    if kind == "ct":
        pixels = ds.pixel_array
        assert pixels.shape == (64, 64) and pixels.dtype == np.int16
        assert pixels.min() < -900 and pixels.max() > 20
    elif kind == "seg":
        assert ds.BitsAllocated == 1 and len(ds.PixelData) == 64 * 64 // 8
        assert ds.SegmentSequence[0].SegmentNumber == 1
    else:
        group = ds.AnnotationGroupSequence[0]
        assert group.GraphicType == "POINT"
        assert struct.unpack("<2f", group.PointCoordinatesData) == (100.0, 50.0)


def test_wsidicom_reads_series(out_dir: Path) -> None:
    wsidicom = pytest.importorskip("wsidicom")
    spec = SlideSpec(**SMALL, label=True, overview=True, sparse=True, missing_tiles=0.2,
                     shuffle_frames=True)
    folder = write(spec, out_dir)[0].parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with wsidicom.WsiDicom.open(folder) as slide:
            assert len(slide.levels) == 4
            region = np.asarray(slide.read_region((0, 0), 0, (600, 440)))[..., :3]
            assert mae(region, render_region(spec, 0, 0, 600, 440)) < 3
            assert np.asarray(slide.read_label()).shape[:2] == (320, 480)
            assert np.asarray(slide.read_overview()).shape[:2] == (250, 750)


def test_openslide_reads_level0(out_dir: Path) -> None:
    openslide = pytest.importorskip("openslide")
    spec = SlideSpec(**SMALL, transfer_syntax="jpeg-rgb", thumbnail=True)
    path = write(spec, out_dir)[0]
    slide = openslide.OpenSlide(str(path))
    assert slide.level_dimensions[0] == (600, 440) and slide.level_count == 4
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
    region = np.asarray(slide.read_region((0, 0), 0, (600, 440)))[..., :3]
    assert mae(region, render_region(spec, 0, 0, 600, 440)) < 3
