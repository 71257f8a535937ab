"""Tests of converter/testkit/spec.py: SlideSpec rejects impossible combinations."""

from __future__ import annotations

import pytest

from converter.testkit import SlideSpec


def test_spec_validation() -> None:
    for bad in (
        dict(transfer_syntax="jpeg-xl"),
        dict(missing_tiles=0.2),  # needs sparse
        dict(shuffle_frames=True),
        dict(offset_table="nope"),
        dict(fragments_per_frame=2, transfer_syntax="explicit"),
        dict(downsamples=(2, 4)),
        dict(samples_per_pixel=2),
        dict(width=600, height=440, tile_size=128, concatenation_parts=21),
    ):
        with pytest.raises(ValueError):
            SlideSpec(**bad)


def test_extended_offset_table_with_fragments_is_rejected() -> None:
    with pytest.raises(ValueError, match="Extended Offset Table"):
        SlideSpec(offset_table="extended", fragments_per_frame=2)
