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
