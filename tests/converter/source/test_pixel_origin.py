"""ImageType -> ORIGINAL/DERIVED of a level (PS3.3 C.8.12.4.1.1), as the tracker sees it over the network."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from converter.inbox.completeness import InstanceFacts
from converter.source.instance import _pixel_origin, read_instance
from converter.testkit import SlideSpec, write_series

SAMPLE = Path(__file__).resolve().parents[3].parent / "shared" / "testdata" / "gcp-cmu-1-small-region"


@pytest.mark.parametrize("image_type,origin", [
    (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], "ORIGINAL"),
    (["DERIVED", "PRIMARY", "VOLUME", "NONE"], "ORIGINAL"),      # converted from another format, not resampled
    (["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"], "DERIVED"),
    (["ORIGINAL", "PRIMARY", "VOLUME", "RESAMPLED"], "DERIVED"),  # value 4 says how the pixels were made
    (["ORIGINAL", "PRIMARY", "LABEL"], "ORIGINAL"),
    (["DERIVED", "PRIMARY"], None),                              # cannot tell: never holds a series back
    (None, None),
])
def test_origin_from_image_type(image_type, origin):
    ds = Dataset()
    if image_type is not None:
        ds.ImageType = image_type
    assert _pixel_origin(ds) == origin


def test_generated_series_and_its_facts(tmp_path):
    files = write_series(SlideSpec(width=800, height=600), tmp_path)
    by_width = {read_instance(f).image_width: read_instance(f) for f in files}
    assert by_width[800].pixel_origin == "ORIGINAL" and by_width[400].pixel_origin == "DERIVED"
    assert InstanceFacts.from_instance(by_width[800]).pixel_origin == "ORIGINAL"


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"the real wsi2dcm sample is not at {SAMPLE}")
def test_real_wsi2dcm_level_0_counts_as_original():
    levels = sorted((read_instance(f) for f in SAMPLE.glob("*.dcm")), key=lambda i: -i.image_width)
    assert levels[0].pixel_origin == "ORIGINAL"  # labelled DERIVED/.../NONE by its writer
    assert {i.pixel_origin for i in levels[1:]} == {"DERIVED"}
