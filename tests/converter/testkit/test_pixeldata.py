"""Tests of converter/testkit/pixeldata.py: offset table and fragment variants, streaming memory.

The generator is the ground truth for the converter's tests, so these tests check it against
independent readers (see tests/converter/testkit/helpers.py) rather than against its own helpers.
"""

from __future__ import annotations

import tracemalloc
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, encapsulate_extended, get_frame, parse_basic_offsets, parse_fragments

from converter.testkit import SlideSpec, write_series
from tests.converter.testkit.helpers import SMALL, frames_of, write


@pytest.mark.parametrize(
    "offset_table, fragments", [("basic", 1), ("extended", 1), ("empty", 1), ("basic", 3), ("empty", 3)]
)
def test_offset_table_variants(out_dir: Path, offset_table: str, fragments: int) -> None:
    spec = SlideSpec(**SMALL, offset_table=offset_table, fragments_per_frame=fragments)
    ds = pydicom.dcmread(write(spec, out_dir)[0])
    reference = pydicom.dcmread(write(SlideSpec(**SMALL), out_dir)[0])
    encoded = frames_of(reference)  # basic BOT, one fragment: the frames as encoded
    n = len(encoded)
    buffer = BytesIO(ds.PixelData)
    bot = parse_basic_offsets(buffer)
    nr_fragments, _ = parse_fragments(buffer)
    assert nr_fragments == n * fragments
    assert len(bot) == (n if offset_table == "basic" else 0)
    assert ("ExtendedOffsetTable" in ds) == (offset_table == "extended")
    if offset_table == "extended":
        assert len(ds.ExtendedOffsetTable) == 8 * n == len(ds.ExtendedOffsetTableLengths)
    # Whole-value identity with pydicom's own encapsulation of the same frames.
    if offset_table == "extended":
        pixel_data, offsets, lengths = encapsulate_extended(encoded)
        assert (ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) == (
            pixel_data, offsets, lengths)
    else:
        assert ds.PixelData == encapsulate(
            encoded, fragments_per_frame=fragments, has_bot=offset_table == "basic"
        )
    assert frames_of(ds) == encoded
    eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths) if offset_table == "extended" else None
    assert get_frame(ds.PixelData, n - 1, number_of_frames=n, extended_offsets=eot) == encoded[-1]


def test_streaming_memory_stays_flat(tmp_path: Path) -> None:
    # 3072 x 3072 native RGB: level 0 alone is 27 MiB of pixels.
    spec = SlideSpec(width=3072, height=3072, tile_size=256, transfer_syntax="explicit")
    tracemalloc.start()
    try:
        paths = write_series(spec, tmp_path, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert paths[0].stat().st_size > 3072 * 3072 * 3
    assert peak < 12 * 2**20, peak
