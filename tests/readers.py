"""Opening outputs the way tile servers do: OpenSlide and large_image's TIFF source."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def openslide_region(path: Path, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return np.asarray(slide.read_region((x, y), level, (w, h)).convert("RGB"))


def open_openslide(path: Path):
    import openslide

    return openslide.OpenSlide(str(path))


def open_large_image(path: Path):
    """large_image's TIFF source itself, not a fallback source: it raises if the file is not a tiled pyramid it accepts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import large_image
        import large_image_source_tiff

        # large_image otherwise hands back the source it opened earlier for the same path,
        # even after the file was atomically replaced.
        large_image.cache_util.cachesClear()
        from large_image.cache_util.cache import LruCacheMetaclass

        for cache, lock in LruCacheMetaclass.classCaches.values():
            with lock:
                cache.clear()
        large_image_source_tiff._cached_read_tiff.cache_clear()  # tifftools' parse, cached by path
        return large_image_source_tiff.TiffFileTileSource(str(path))


def large_image_region(source, x: int, y: int, w: int, h: int) -> np.ndarray:
    import large_image

    region, _ = source.getRegion(
        region={"left": x, "top": y, "width": w, "height": h},
        format=large_image.constants.TILE_FORMAT_NUMPY,
    )
    return np.asarray(region)[..., :3]


def mad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per channel."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(-1, a.shape[-1]).mean(axis=0)
