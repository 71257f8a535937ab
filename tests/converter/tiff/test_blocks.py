"""The block-wise pyramid against the strip cascade: same tiles, byte for byte, in raster order."""

import numpy as np
import pytest

from converter.tiff import blocks
from converter.tiff.blocks import BlockPyramid, RawTiles, run_tasks
from converter.tiff.pyramid import Cascade, TileSpool


class ArraySource:
    """A level held in memory, with the read_block interface of LevelReader."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.samples = image.shape[2]

    def read_block(self, x, y, w, h):
        return lambda: self.image[y : y + h, x : x + w].copy()


def _sizes(width, height, tile):
    sizes = [(width, height)]
    while sizes[-1][0] > tile or sizes[-1][1] > tile:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def _both(tmp_path, image, tile, encode, pool=None):
    h, w = image.shape[:2]
    sizes = _sizes(w, h, tile)
    strip_spools = [TileSpool(str(tmp_path / f"s{i}")) if encode(i) else None for i in range(len(sizes))]
    block_spools = [TileSpool(str(tmp_path / f"b{i}")) if encode(i) else None for i in range(len(sizes))]
    cascade = Cascade([(a, b, s) for (a, b), s in zip(sizes, strip_spools)], tile, tile, quality=80)
    for y in range(0, h, 37):
        cascade.push(image[y : y + 37])
    cascade.finish()
    pyramid = BlockPyramid([(a, b, s) for (a, b), s in zip(sizes, block_spools)], tile, tile, 80, None, image.shape[2], str(tmp_path / "raw"))
    try:
        run_tasks(pyramid.tasks(ArraySource(image)), pool, 3)
    finally:
        pyramid.close()
    pyramid.check()
    assert not list(tmp_path.glob("raw*")), "raw restart files are deleted"
    return sizes, strip_spools, block_spools


@pytest.mark.parametrize("max_block", [64, 128, 2048])
def test_blocks_give_the_cascades_tiles_byte_for_byte(tmp_path, monkeypatch, max_block):
    # 64 and 128 px blocks force restarts from raw tiles (one or two halvings per pass);
    # odd sizes exercise the edge pairing at every level.
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(blocks, "MAX_BLOCK", max_block)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (301, 999, 3), dtype=np.uint8)
    with ThreadPoolExecutor(2) as pool:
        sizes, strip_spools, block_spools = _both(tmp_path, image, 32, lambda i: True, pool)
    assert len(sizes) > 4
    for (w, h), s, b in zip(sizes, strip_spools, block_spools):
        assert b.count == -(-w // 32) * -(-h // 32)
        assert list(b) == list(s)


def test_levels_without_spool_are_halved_but_not_encoded(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "MAX_BLOCK", 64)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (200, 130, 1), dtype=np.uint8)
    sizes, strip_spools, block_spools = _both(tmp_path, image, 16, lambda i: i % 2 == 1)
    for s, b in zip(strip_spools, block_spools):
        assert (s is None) == (b is None)
        if b is not None:
            assert list(b) == list(s)


def test_spool_refuses_a_missing_or_doubled_tile(tmp_path):
    spool = TileSpool(str(tmp_path / "x"))
    spool.put(1, b"b")
    with pytest.raises(RuntimeError, match="spooled twice"):
        spool.put(1, b"c")
    with pytest.raises(RuntimeError, match="never spooled"):
        list(spool)
    spool.put(0, b"a")
    assert list(spool) == [b"a", b"b"]
    spool.close()


def test_raw_tiles_round_trip_partial_edges(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    raw = RawTiles(str(tmp_path / "r"), 70, 50, 32, 32, 3)
    raw.put_block(0, 0, image[:32, :64])
    raw.put_block(64, 0, image[:32, 64:])
    raw.put_block(0, 32, image[32:])
    assert np.array_equal(raw.read_block(0, 0, 70, 50)(), image)
    assert np.array_equal(raw.read_block(32, 32, 38, 18)(), image[32:, 32:])
    raw.close()
    assert not (tmp_path / "r").exists()


class BlocksOnly:
    """A LevelReader seen through read_block only (the path that assembles blocks)."""

    def __init__(self, reader) -> None:
        self._reader, self.samples = reader, reader.samples

    def read_block(self, x, y, w, h):
        return self._reader.read_block(x, y, w, h)


@pytest.mark.parametrize("spec_args", [
    dict(width=1500, height=1100),  # cut tiles at the right and bottom edges
    dict(width=1300, height=700, sparse=True, missing_tiles=0.3),  # frames missing: background tiles
    dict(width=600, height=500, samples_per_pixel=1),
])
def test_frames_as_tiles_give_the_assembled_blocks_tiles_byte_for_byte(tmp_path, spec_args):
    from converter.source.discover import discover
    from converter.source.level_reader import LevelReader
    from converter.source.series import build_series
    from converter.testkit import SlideSpec, write_series

    write_series(SlideSpec(tile_size=256, **spec_args), tmp_path / "in")
    (_uid, instances), = discover([tmp_path / "in"]).series.items()
    level = build_series(instances).levels[0]
    got = {}
    with LevelReader(level) as reader:
        assert reader.read_tiles(0, 0, 512, 512, 256, 256, 255) is not None
        assert reader.read_tiles(0, 0, 512, 512, 128, 128, 255) is None  # frames are not the tiles
        for name, source in (("tiles", reader), ("blocks", BlocksOnly(reader))):
            spool = TileSpool(str(tmp_path / name))
            pyramid = BlockPyramid([(level.width, level.height, spool)], 256, 256, 80, 3.0, reader.samples, str(tmp_path / "raw"))
            run_tasks(pyramid.tasks(source), None, 2)
            pyramid.check()
            got[name] = list(spool)
            spool.close()
    assert len(got["tiles"]) == -(-level.width // 256) * -(-level.height // 256)
    assert got["tiles"] == got["blocks"]
