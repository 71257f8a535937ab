"""The real wsi2dcm sample: JFIF YCbCr frames labelled RGB, 500x500 tiles, 12 levels, one FrameOfReferenceUID per level."""

import io
import json

import numpy as np
import pydicom
from PIL import Image

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from tests.readers import large_image_region, mad, open_large_image, open_openslide


def _first_frame_pillow(path):
    """Decode level 0's first frame with Pillow, a decoder independent of ours, which follows the JFIF marker."""
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    return np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))


def test_sample_converts_with_right_colours_and_all_levels(gcp_sample, tmp_path):
    found = discover([gcp_sample])
    assert len(found.series) == 1
    (uid, instances), = found.series.items()
    assert len(instances) == 12
    out = tmp_path / "cmu.tiff"
    report = convert_series(instances, out, ConversionOptions())
    assert report.ok, report.error
    # Every one of the 12 source levels is accounted for: used, or named in a note.
    used = {lv.source_level for lv in report.levels if lv.source_level is not None}
    noted = {i for i in range(12) if any(f"source level {i} " in n for n in report.notes)}
    assert used | noted == set(range(12))
    # 500 px frames cannot be TIFF tiles: re-encoded, and the report says why.
    assert report.levels[0].action == "reencode" and "multiple of 16" in report.levels[0].reason
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["series_uid"] == uid and sidecar["status"] == "published"

    reference = _first_frame_pillow(gcp_sample / "level-0-frames-0-30.dcm")
    with open_openslide(out) as slide:
        assert slide.level_dimensions[0] == (2220, 2967)
        assert slide.level_count == len(report.levels) >= 5
        assert abs(float(slide.properties["openslide.mpp-x"]) - 0.499) < 1e-3
        assert abs(float(slide.properties["openslide.mpp-y"]) - 0.499) < 1e-3
        got = np.asarray(slide.read_region((0, 0), 0, (500, 500)).convert("RGB"))
    assert mad(got, reference).max() <= 3.0
    # A salmon (YCbCr read as RGB) rendering would differ by tens of grey levels.
    source = open_large_image(out)
    assert source.getMetadata()["levels"] == len(report.levels)
    assert mad(large_image_region(source, 0, 0, 500, 500), reference).max() <= 3.0
