import numpy as np
import pytest

from converter.tiff.pyramid import Cascade, TileSpool, downsample2


def test_downsample2_averages_and_pairs_odd_edges_with_themselves():
    a = np.array([[0, 4, 8], [4, 8, 12], [100, 100, 50]], np.uint8)[..., None]
    out = downsample2(a)[..., 0]
    assert out.shape == (2, 2)
    assert out[0, 0] == 4  # (0+4+4+8)/4
    assert out[0, 1] == 10  # (8+8+12+12)/4: odd column paired with itself
    assert out[1, 0] == 100
    assert out[1, 1] == 50


@pytest.mark.parametrize("height, strip", [(1000, 256), (999, 37), (513, 512), (1, 1)])
def test_cascade_row_accounting_and_tile_counts(tmp_path, height, strip):
    width, tile = 700, 128
    sizes = [(width, height)]
    while sizes[-1][0] > tile or sizes[-1][1] > tile:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    spools = [TileSpool(str(tmp_path / f"{i}.spool")) for i in range(len(sizes))]
    cascade = Cascade([(w, h, s) for (w, h), s in zip(sizes, spools)], tile, tile, quality=80)
    rng = np.random.default_rng(0)
    for y in range(0, height, strip):
        rows = min(strip, height - y)
        cascade.push(rng.integers(0, 255, (rows, width, 3), dtype=np.uint8))
    cascade.finish()
    for (w, h), spool in zip(sizes, spools):
        assert len(spool.entries) == -(-w // tile) * -(-h // tile)
        spool.close()


def test_cascade_generated_level_matches_box_filter(tmp_path):
    import imagecodecs

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    spool = TileSpool(str(tmp_path / "l1.spool"))
    cascade = Cascade([(64, 64, None), (32, 32, spool)], 32, 32, quality=100)
    for y in range(0, 64, 10):
        cascade.push(image[y : y + 10])
    cascade.finish()
    got = imagecodecs.jpeg8_decode(spool.read(0))
    expected = downsample2(image)
    assert np.abs(got.astype(int) - expected).mean() < 1.5


def test_appender_writes_each_tile_once_behind_the_file_and_indexes_it(tmp_path):
    from converter.tiff.pyramid import TileAppender

    path = tmp_path / "t.tiff"
    path.write_bytes(b"HEADER")
    app = TileAppender(path, {0: 3, 2: 1})
    first, second = app.level(0), app.level(2)
    first.put(2, b"cc")
    second.append(b"z")
    first.put(0, b"a")
    first.put(1, b"bbb")
    with pytest.raises(RuntimeError, match="twice"):
        first.put(1, b"x")
    assert (first.count, second.count) == (3, 1)
    app.finish()
    data = path.read_bytes()
    assert data == b"HEADERcczabbb"  # in the order finished, nothing else
    placed = app.placed()
    for level, tiles in ((0, [b"a", b"bbb", b"cc"]), (2, [b"z"])):
        offsets, counts = placed[level]
        assert offsets.dtype == counts.dtype == np.uint64
        assert [data[o : o + n] for o, n in zip(offsets.tolist(), counts.tolist())] == tiles
    assert placed[0][0].tolist() == [9, 10, 6]
    assert app.placed(shift=100)[0][0].tolist() == [109, 110, 106]
    with pytest.raises(KeyError):
        app.level(1)


def test_appender_refuses_a_level_with_missing_tiles(tmp_path):
    from converter.tiff.pyramid import TileAppender

    path = tmp_path / "t.tiff"
    path.write_bytes(b"")
    app = TileAppender(path, {0: 2})
    app.level(0).put(1, b"x")
    app.finish()
    with pytest.raises(RuntimeError, match="1 of 2 tiles were never written"):
        app.placed()
