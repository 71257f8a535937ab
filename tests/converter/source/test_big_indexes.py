"""Issue 14: the frame and tile indexes of big slides are flat arrays and arithmetic, with the old behaviour.

The TILED_FULL tile index is computed instead of stored; these tests compare it, frame by frame,
with the explicit rule (the dict the index used to build) on series with concatenations, focal
planes and optical paths, and check that frames read in runs are the frames read one by one.
Real files from the generator; no mocks.
"""

from __future__ import annotations

import sys
import tracemalloc

import pytest

from converter.source.discover import discover
from converter.source.frame_index import build_frame_index
from converter.source.level_reader import LevelReader
from converter.source.series import build_series
from converter.testkit import SlideSpec, write_series


def _base(tmp_path, spec):
    write_series(spec, tmp_path / "in")
    (_uid, instances), = discover([tmp_path / "in"]).series.items()
    return build_series(instances).base


def _reference(instances, plane: int, planes: int) -> dict:
    """The rule as it was written before: every frame number, first instance wins."""
    first = instances[0]
    across, down = first.tiles_across, first.tiles_down
    per_plane = across * down
    out = {}
    for idx, inst in enumerate(instances):
        for frame in range(inst.number_of_frames):
            path, rest = divmod(inst.concatenation_frame_offset + frame, per_plane * planes)
            p, tile = divmod(rest, per_plane)
            if path == 0 and p == plane:
                row, col = divmod(tile, across)
                out.setdefault((col, row), (idx, frame))
    return out


@pytest.mark.parametrize("spec", [
    SlideSpec(width=1500, height=1100, concatenation_parts=3),
    SlideSpec(width=1100, height=900, focal_planes=3, optical_paths=2, concatenation_parts=2),
], ids=["concatenation", "planes-paths-concatenation"])
def test_computed_tiled_full_index_equals_the_explicit_rule(tmp_path, spec):
    base = _base(tmp_path, spec)
    ti = base.tile_index
    planes = base.first.focal_planes
    ref = _reference(base.instances, planes // 2 if planes > 1 else 0, planes)
    got = {k: (r.instance, r.frame) for k, r in ti.frames.items()}
    assert got == ref
    assert len(ti.frames) == len(ref) == ti.expected and ti.missing == 0
    assert (ti.tiles_across, ti.tiles_down) not in ti.frames and (-1, 0) not in ti.frames
    assert ti.frames.get((ti.tiles_across, 0)) is None


@pytest.mark.parametrize("offset_table", ["basic", "extended", "empty"])
def test_frames_read_in_runs_equal_frames_read_one_by_one(tmp_path, offset_table):
    base = _base(tmp_path, SlideSpec(width=1500, height=1100, offset_table=offset_table, concatenation_parts=2))
    with LevelReader(base) as reader:
        for row in range(base.tile_index.tiles_down):
            assert reader.row_frames(row) == [reader.frame_bytes(c, row) for c in range(base.tile_index.tiles_across)]
        assert reader.frame_sizes() == sum(len(reader.frame_bytes(c, r)) for c, r in base.tile_index.frames)


def test_multi_fragment_frames_keep_their_fragments(tmp_path):
    base = _base(tmp_path, SlideSpec(width=800, height=600, fragments_per_frame=3))
    inst = base.first
    with open(inst.path, "rb") as fp:
        index = build_frame_index(inst, fp)
        assert len(index) == inst.number_of_frames
        assert all(len(index.ranges[f]) == 3 for f in range(len(index)))
        data = list(index.read_run(fp, list(range(len(index)))))
        assert data == [index.read(fp, f) for f in range(len(index))]
        assert all(d.startswith(b"\xff\xd8") and d.rstrip(b"\0").endswith(b"\xff\xd9") for d in data)


def test_index_memory_is_a_few_bytes_per_frame(tmp_path):
    """~16,000 frames: the frame and tile index together stay under 40 bytes a frame (was ~380)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "bench"))
    from gen_big import big_spec, write_big_series

    write_big_series(big_spec(32768, 32768), tmp_path / "big", pool_size=4)
    (_uid, instances), = discover([tmp_path / "big"]).series.items()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        base = build_series(instances).base
        with LevelReader(base) as reader:
            used = tracemalloc.get_traced_memory()[0] - before
            frames = base.first.number_of_frames
            assert frames == 128 * 128 and len(base.tile_index.frames) == frames
            assert reader.frame_bytes(127, 127) is not None
    finally:
        tracemalloc.stop()
    assert used / frames < 40, f"{used / frames:.0f} bytes a frame"


def test_discovered_instance_keeps_its_offset_table_in_a_few_bytes_per_frame(tmp_path):
    """The header scan's result (Extended Offset Table, its lengths, the fragments) as array('Q'), not tuples.

    Held by every discovered instance in the CLI's parent and the node: ~275,000 frames at 150,000 px
    took ~73 MB as tuples of ints. Now: 16 bytes a frame kept (offsets and lengths), and the scan's
    transient peak stays small too (the fragments are checked against the table in bulk).
    """
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "bench"))
    from gen_big import big_spec, write_big_series

    from converter.source.instance import read_instance

    paths = write_big_series(big_spec(32768, 32768), tmp_path / "big", pool_size=4)
    read_instance(paths[0])  # imports and caches warmed
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        inst = read_instance(paths[0])
        kept, peak = (m - before for m in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    frames = inst.number_of_frames
    assert frames == 128 * 128 and len(inst.pixel_data.extended_offsets) == frames
    assert kept / frames < 24, f"{kept / frames:.0f} bytes a frame kept"
    # The bulk check gathers item headers 8,192 at a time: a fixed ~0.6 MB, whatever the frame count.
    assert (peak - (1 << 20)) / frames < 40, f"{peak / frames:.0f} bytes a frame at the peak"
