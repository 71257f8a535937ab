"""LevelReader.read_block: frames read now, decoded later, equal to region() wherever the rectangle lies."""

import numpy as np

from converter.source.discover import discover
from converter.source.level_reader import LevelReader
from converter.source.series import build_series
from converter.testkit import SlideSpec, write_series


def test_read_block_equals_region_across_frame_borders_and_edges(tmp_path):
    # 200 px frames against 256 px blocks: blocks straddle frames; the last ones pass the image edge.
    write_series(SlideSpec(width=700, height=450, tile_size=200, downsamples=(1,)), tmp_path / "in")
    (_, instances), = discover([tmp_path / "in"]).series.items()
    level = build_series(instances).levels[0]
    with LevelReader(level) as reader:
        for x, y, w, h in [(0, 0, 256, 256), (256, 0, 256, 256), (512, 256, 256, 256), (600, 400, 300, 90), (0, 0, 700, 450)]:
            fetch = reader.read_block(x, y, w, h)
            assert np.array_equal(fetch(), reader.region(x, y, w, h)), (x, y, w, h)



def test_repeated_small_frames_are_decoded_once_and_shared_read_only(tmp_path):
    from converter.codecs.frames import decode_frame, encode_tile

    write_series(SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,)), tmp_path / "in")
    (_, instances), = discover([tmp_path / "in"]).series.items()
    level = build_series(instances).levels[0]
    inst = level.instances[0]
    blank = encode_tile(np.full((256, 256, 3), 245, np.uint8), 90)  # what a blank frame looks like
    assert len(blank) <= 4096
    with LevelReader(level) as reader:
        a, b = reader._decode(0, 0, blank), reader._decode(1, 1, blank)  # the same bytes at two places
        assert a is b and not a.flags.writeable  # one decode, shared, nobody can change it
        assert np.array_equal(a, decode_frame(blank, inst))
        # Other frames (tissue: larger) are decoded each time, and every frame is what the codec gives.
        for pos in level.tile_index.frames:
            data = reader.frame_bytes(*pos)
            got = reader.tile(*pos)
            assert np.array_equal(got, decode_frame(data, inst))
            if len(data) > 4096:
                assert got.flags.writeable and reader.tile(*pos) is not got
