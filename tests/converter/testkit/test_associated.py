"""Tests of converter/testkit/associated.py: label, overview and thumbnail instances.

The generator is the ground truth for the converter's tests, so these tests check it against
independent readers (see tests/converter/testkit/helpers.py) rather than against its own helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from converter.testkit import SlideSpec, render_label, render_region
from tests.converter.testkit.helpers import SMALL, by_name, decode, write


def test_associated_images(out_dir: Path) -> None:
    spec = SlideSpec(**SMALL, transfer_syntax="explicit", label=True, overview=True, thumbnail=True)
    paths = by_name(write(spec, out_dir))
    label, overview, thumb = (pydicom.dcmread(paths[n]) for n in ("label", "overview", "thumbnail"))
    assert list(label.ImageType) == ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    assert list(overview.ImageType) == ["ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"]
    assert list(thumb.ImageType) == ["DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED"]
    assert label.BurnedInAnnotation == "YES" and label.SpecimenLabelInImage == "YES"
    assert pydicom.dcmread(paths["level-0"]).BurnedInAnnotation == "NO"
    for ds in (label, overview, thumb):
        assert int(ds.NumberOfFrames) == 1
        assert (ds.Rows, ds.Columns) == (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns)
    pixels = decode(label.PixelData, label)
    assert np.array_equal(pixels, render_label(spec))
    assert (pixels[:20].mean((0, 1)) == [40, 90, 200]).all()  # blue stripe: a colour label
    assert (pixels < 60).mean() > 0.05  # dark text and barcode
    # Thumbnail covers the whole slide: its spacing times its size is the imaged extent.
    measures = thumb.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.PixelSpacing]
    assert thumb.TotalPixelMatrixColumns * spacing[1] == pytest.approx(thumb.ImagedVolumeWidth, rel=0.01)
    assert thumb.TotalPixelMatrixRows * spacing[0] == pytest.approx(thumb.ImagedVolumeHeight, rel=0.01)
    thumb_px = decode(thumb.PixelData, thumb).astype(float)
    level0 = render_region(spec, 0, 0, 600, 440).astype(float)
    assert abs(thumb_px.mean() - level0.mean()) < 2
