"""The per-tile fidelity check (converter.codecs.frames: tissue_of, mad_per_channel, encode_checked)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from converter.codecs.frames import (
    MIN_TISSUE_PIXELS,
    TISSUE_THRESHOLD,
    encode_checked,
    encode_tile,
    mad_per_channel,
    tissue_of,
)


def reference_mad(a: np.ndarray, b: np.ndarray) -> float:
    """The rule written plainly: mean |a - b| per channel over b's tissue pixels (all when too few); the worst channel."""
    a = a.astype(np.int64).reshape(-1, b.shape[-1])
    b = b.astype(np.int64).reshape(-1, b.shape[-1])
    tissue = b.min(axis=1) < TISSUE_THRESHOLD
    if tissue.sum() < MIN_TISSUE_PIXELS:
        tissue[:] = True
    diff = np.abs(a - b)[tissue]
    return float(diff.sum(axis=0).max()) / int(tissue.sum())


def _pair(rng, h, w, c, tissue_share):
    b = rng.integers(TISSUE_THRESHOLD, 256, (h, w, c), dtype=np.uint8)
    dark = rng.random((h, w)) < tissue_share
    channel = rng.integers(0, c, (h, w))  # tissue because of one channel only, any of them
    rows, cols = np.nonzero(dark)
    b[rows, cols, channel[rows, cols]] = rng.integers(0, TISSUE_THRESHOLD, rows.size, dtype=np.uint8)
    a = np.clip(b.astype(np.int16) + rng.integers(-40, 41, b.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("shape", [(256, 256, 3), (512, 512, 3), (240, 240, 3), (37, 53, 3), (256, 256, 1), (19, 7, 1), (64, 64, 4), (1, 1, 3)])
@pytest.mark.parametrize("share", [0.0, 0.0005, 0.3, 1.0])
def test_mad_is_the_plain_rule_exactly(shape, share):
    rng = np.random.default_rng(sum(shape) + int(share * 1000))
    a, b = _pair(rng, *shape, share)
    assert mad_per_channel(a, b) == pytest.approx(reference_mad(a, b), rel=1e-12, abs=0)
    assert mad_per_channel(a, b, tissue_of(b)) == mad_per_channel(a, b)


@pytest.mark.parametrize("count, counted", [(MIN_TISSUE_PIXELS - 1, "all"), (MIN_TISSUE_PIXELS, "tissue")])
def test_too_little_tissue_compares_the_whole_tile(count, counted):
    b = np.full((32, 32, 3), 250, np.uint8)
    b.reshape(-1, 3)[:count, 2] = 10  # only the last channel is dark
    a = b.copy()
    a.reshape(-1, 3)[:, 0] -= 8  # every pixel off by 8 in channel 0
    t = tissue_of(b)
    assert t.pixels == (1024 if counted == "all" else count)
    assert (t.keep is None) == (counted == "all")
    if t.keep is not None:  # every sample of a tissue pixel is kept, nothing else
        assert t.keep.reshape(-1, 3)[:count].all() and not t.keep.reshape(-1, 3)[count:].any()
    assert mad_per_channel(a, b) == 8.0


def test_alternating_sizes_reuse_no_stale_buffer():
    rng = np.random.default_rng(5)
    pairs = [_pair(rng, *s, 0.5) for s in ((256, 256, 3), (100, 30, 3), (256, 256, 1), (512, 512, 3))]
    want = [reference_mad(a, b) for a, b in pairs]
    for _ in range(2):
        assert [mad_per_channel(a, b) for a, b in pairs] == pytest.approx(want, rel=1e-12)


def test_encode_checked_raises_quality_only_where_needed():
    rng = np.random.default_rng(2)
    noisy = rng.integers(0, 200, (256, 256, 3), dtype=np.uint8)  # dense tissue-like noise: q50 loses a lot
    flat = np.full((256, 256, 3), 240, np.uint8)
    limit = 6.0
    for tile in (noisy, flat):
        data, q = encode_checked(tile, 50, limit)
        # The first quality (from 50 in steps of 5) whose decoded tile is within the limit, by the plain rule.
        want = 50
        while want < 100 and reference_mad(imagecodecs.jpeg8_decode(encode_tile(tile, want)), tile) > limit:
            want += 5
        assert q == want
        assert data == encode_tile(tile, q)
    assert encode_checked(noisy, 50, limit)[1] > 50 and encode_checked(flat, 50, limit)[1] == 50


def test_uniform_tiles_are_encoded_once_with_the_same_bytes_and_decision():
    from converter.codecs import frames

    frames._UNIFORM.clear()
    blank = np.full((256, 256, 3), (250, 248, 251), np.uint8)
    first = encode_checked(blank, 80, 3.0)
    assert first == (encode_tile(blank, 80), 80)
    assert len(frames._UNIFORM) == 1
    assert encode_checked(blank.copy(), 80, 3.0) == first  # from the cache, identical
    assert encode_checked(blank, 85, 3.0) == (encode_tile(blank, 85), 85)  # another quality: its own entry
    almost = blank.copy()
    almost[255, 255, 2] = 0  # one pixel differs (not where the probes look): not uniform
    assert encode_checked(almost, 80, 3.0) == (encode_tile(almost, 80), 80)
    assert len(frames._UNIFORM) == 2
    gray = np.full((64, 64, 1), 7, np.uint8)
    assert encode_checked(gray, 80, 3.0) == (encode_tile(gray, 80), 80)
