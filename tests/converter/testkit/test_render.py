"""Tests of converter/testkit/render.py (and the tissue model of tissue.py): the ground truth.

The pixels must look like H&E, be tile-independent and deterministic, downsample faithfully
between levels, differ between focal planes and optical paths, and be white where tiles are missing.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from converter.testkit import SlideSpec, focal_plane_offsets_um, focus_depth_um, missing_tiles, render_region
from tests.converter.testkit.helpers import SMALL, mae


def test_render_region_shape_determinism_and_edges() -> None:
    spec = SlideSpec()
    a = render_region(spec, 100, 50, 256, 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_region(spec, 100, 50, 256, 256))
    # Tile-independent: a sub-window of a larger render is identical (no seams between tiles).
    big = render_region(spec, 0, 0, 600, 400)
    assert np.array_equal(big[53:309, 61:317], render_region(spec, 61, 53, 256, 256)[:347, :539])
    # Outside the image is white; inside never is (glass is ~245).
    corner = render_region(spec, spec.width - 10, spec.height - 10, 20, 20)
    assert (corner[10:] == 255).all() and (corner[:, 10:] == 255).all()
    assert (corner[:10, :10] < 255).any()
    # Lower level: extent is ceil(width / downsample).
    lvl = render_region(SlideSpec(width=1001, height=999), 0, 0, 300, 300, downsample=4)
    assert (lvl[:, 251:] == 255).all() and (lvl[:250, :250] < 255).any()


def test_render_looks_like_h_and_e() -> None:
    fractions = []
    for seed in range(4):
        a = render_region(SlideSpec(seed=seed), 0, 0, 256, 192, downsample=8).astype(int)
        fractions.append((a.mean(-1) < 238).mean())
    assert all(0.35 <= f <= 0.65 for f in fractions), fractions
    assert len(set(np.round(fractions, 3))) == 4  # layout differs by seed

    a = render_region(SlideSpec(), 0, 0, 2048, 1536).astype(int)
    tissue = a.mean(-1) < 238
    background = ~tissue
    assert abs(a[background].mean() - 245) < 2.5
    pink = a[tissue]
    assert np.median(pink[:, 0] - pink[:, 1]) > 40  # eosin: red well above green
    nuclei = (a[..., 2] > a[..., 0]) & (a[..., 0] < 170)  # hematoxylin purple
    assert 0.03 < nuclei[tissue].mean() < 0.3
    assert nuclei[background].mean() < 0.001


def test_lower_levels_match_area_average_of_level0() -> None:
    spec = SlideSpec()
    level0 = render_region(spec, 0, 0, 2048, 1536).astype(float)
    for ds in (2, 4, 16):
        h, w = 1536 // ds, 2048 // ds
        mean = level0.reshape(h, ds, w, ds, 3).mean((1, 3))
        level = render_region(spec, 0, 0, w, h, ds).astype(float)
        assert np.abs(mean - level).mean() < 5, ds
        assert np.abs((mean - level).mean()) < 1.5, ds  # no colour bias between levels


def test_render_tile_is_fast() -> None:
    spec = SlideSpec(width=24000, height=18000)
    render_region(spec, 0, 0, 256, 256)
    start = time.perf_counter()
    for i in range(20):
        render_region(spec, 256 * i, 256 * i, 256, 256)
    assert (time.perf_counter() - start) / 20 < 0.015


def test_focal_planes_and_optical_paths_render_differently() -> None:
    spec = SlideSpec(focal_planes=3, optical_paths=2)
    assert focal_plane_offsets_um(spec) == (1.0, 2.0, 3.0)
    assert focus_depth_um(spec) == 2.0
    z = [render_region(spec, 512, 768, 256, 256, z_um=v) for v in (1.0, 2.0, 3.0)]
    assert np.array_equal(z[1], render_region(spec, 512, 768, 256, 256))
    assert mae(z[0], z[1]) > 0.5 and mae(z[2], z[1]) > 0.5 and mae(z[0], z[2]) > 0.5
    assert mae(render_region(spec, 512, 768, 256, 256, optical_path=1), z[1]) > 20


def test_grayscale_render_is_luma_of_colour() -> None:
    colour = render_region(SlideSpec(), 300, 300, 64, 64).astype(float)
    gray = render_region(SlideSpec(samples_per_pixel=1), 300, 300, 64, 64)
    assert gray.shape == (64, 64)
    luma = colour @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - luma).max() <= 1.01


def test_missing_tiles_render_white_at_every_level() -> None:
    spec = SlideSpec(**SMALL, sparse=True, missing_tiles=0.3, seed=5)
    missing = missing_tiles(spec)
    assert len(missing) == round(0.3 * 20)
    assert missing == missing_tiles(dataclasses.replace(spec))  # deterministic
    assert missing != missing_tiles(dataclasses.replace(spec, seed=6))
    c, r = sorted(missing)[0]
    assert (render_region(spec, c * 128, r * 128, 128, 128) == 255).all()
    assert (render_region(spec, c * 64 + 8, r * 64 + 8, 48, 48, downsample=2) == 255).all()
