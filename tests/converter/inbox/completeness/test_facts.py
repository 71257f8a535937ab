"""Tests of converter/inbox/completeness/facts.py: InstanceFacts' derived properties and validation.

(SeriesActivity's validation is tested with decide, in test_decision.py.)
"""

from __future__ import annotations

import dataclasses

import pytest

from converter.inbox.completeness import InstanceFacts
from tests.converter.inbox.completeness.builders import vol


def test_facts_properties_and_sparse_rule() -> None:
    f = vol("a", 1000, 700, 256, focal_planes=3, optical_paths=2)
    assert (f.tiles_across, f.tiles_down) == (4, 3)
    assert f.full_frames == 4 * 3 * 3 * 2
    assert not f.is_sparse
    assert vol("b", 10, 10, dimension_organization=None).is_sparse is False  # None = TILED_FULL
    assert vol("c", 10, 10, dimension_organization=None, has_positions=True).is_sparse  # positions declare frames
    assert vol("d", 10, 10, dimension_organization="TILED_SPARSE").is_sparse
    assert vol("e", 10, 10, dimension_organization="TILED_FULL", has_positions=True).is_sparse
    assert InstanceFacts("f", "volume", 10, 10, 10, 10, 1).is_volume  # case-insensitive


@pytest.mark.parametrize(
    "change",
    [
        dict(sop_instance_uid=""),
        dict(image_width=0),
        dict(tile_height=0),
        dict(number_of_frames=0),
        dict(focal_planes=0),
        dict(optical_paths=0),
        dict(in_concatenation_number=0),
        dict(in_concatenation_total=0),
        dict(concatenation_frame_offset=-1),
    ],
)
def test_facts_reject_impossible_headers(change: dict) -> None:
    with pytest.raises(ValueError, match="must be|empty"):
        dataclasses.replace(vol("a", 100, 100), **change)
