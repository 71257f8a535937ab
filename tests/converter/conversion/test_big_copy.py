"""Issue 14: the big-series generator's output is a valid WSI series, and copy mode keeps its frames byte for byte.

A small series from bench/gen_big.py (the same code that writes the 4 GB benchmark input):
every instance passes the node's validation (read_instance), and `wsi-node convert --mode copy`
writes a TIFF whose level 0 tiles are the source frames, readable by OpenSlide and large_image.
"""

from __future__ import annotations

import sys
from pathlib import Path

from converter.source.instance import read_instance
from scp.cli import main as wsi_node

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from gen_big import big_spec, check_copy, write_big_series  # noqa: E402


def test_generated_big_series_is_valid_and_copies_byte_identical(tmp_path):
    src = tmp_path / "in"
    paths = write_big_series(big_spec(5000, 3700), src, pool_size=9)
    insts = [read_instance(p) for p in paths]  # raises InstanceRefused if the node would refuse it
    assert [i.image_width for i in insts] == [5000, 2500, 1250, 625, 313, 157]
    assert all(i.pixel_data.extended_offsets and len(i.pixel_data.extended_offsets) == i.number_of_frames for i in insts)
    out = tmp_path / "out" / "slide.tiff"
    assert wsi_node(["convert", str(src), "-o", str(out), "--mode", "copy", "-c", "1"]) == 0
    result = check_copy(src, out, samples=400)
    assert result["levels"] == 6 and result["tiles_checked"] >= 200
