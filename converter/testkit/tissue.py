"""The seeded model of the synthetic tissue: blob layout, boundary wobble, textures, nuclei.

Derived once per spec (:func:`_model`, cached) and cheap to evaluate: every field is a sum of
separable terms, so a whole tile is a couple of small matrix products (:func:`_tissue_factors`,
:func:`_wave_factors`), and nuclei are placed by a stateless integer hash of their cell
(:func:`_hash32`). :mod:`converter.testkit.render` turns the model into pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from converter.testkit.spec import SlideSpec, missing_tiles


@dataclass(frozen=True)
class _Model:
    """Seeded parameters of the synthetic tissue; derived once per spec (cheap to evaluate)."""

    # Tissue field T(s, t) = sum_k a_k(t) * b_k(s) in normalised coordinates s=u/W, t=v/H:
    # Gaussian blobs (separable) plus a boundary wobble (sin(A+B) = sinA cosB + cosA sinB).
    blobs: np.ndarray  # (K, 5): cx, cy, rx, ry, weight
    wobble: np.ndarray  # (M, 4): fs, ft, phase, amplitude (cycles per slide)
    threshold: float
    # Fine texture in level-0 pixel units: (J, 4) fx, fy (cycles/px), phase, amplitude
    texture: np.ndarray
    # Slow stain-intensity variation (cycles per slide): (J, 4)
    stain: np.ndarray
    # Slow variation of nuclear density (cycles per slide): (J, 4)
    density: np.ndarray
    hash_key: int
    missing: np.ndarray | None  # (tiles_y, tiles_x) bool at level 0


@functools.lru_cache(maxsize=64)
def _model(spec: SlideSpec) -> _Model:
    rng = np.random.default_rng([spec.seed, 0x5EED])
    k = 5
    blobs = np.column_stack(
        [
            rng.uniform(0.2, 0.8, k),
            rng.uniform(0.2, 0.8, k),
            rng.uniform(0.12, 0.24, k),
            rng.uniform(0.12, 0.24, k),
            rng.uniform(0.7, 1.0, k),
        ]
    )
    wobble = np.column_stack(
        [
            rng.uniform(2, 6, 3) * rng.choice([-1, 1], 3),
            rng.uniform(2, 6, 3) * rng.choice([-1, 1], 3),
            rng.uniform(0, 2 * np.pi, 3),
            np.array([0.12, 0.08, 0.05]),
        ]
    )

    def waves(n: int, fmin: float, fmax: float, amp: float) -> np.ndarray:
        f = rng.uniform(fmin, fmax, n)
        ang = rng.uniform(0, np.pi, n)
        return np.column_stack(
            [f * np.cos(ang), f * np.sin(ang), rng.uniform(0, 2 * np.pi, n), np.full(n, amp)]
        )

    texture = waves(4, 1 / 40.0, 1 / 7.0, 0.05)  # fibrous eosin texture, periods 7..40 px
    stain = waves(2, 1.0, 3.0, 0.10)
    density = waves(2, 1.5, 4.0, 0.18)
    hash_key = int(rng.integers(1, 2**31))
    # Coverage: pick the threshold as a quantile of the field on a coarse grid, so tissue covers
    # a seeded 40-60 % of the slide whatever the blob layout.
    s = (np.arange(96) + 0.5) / 96
    field = _tissue_field(blobs, wobble, s, s)
    coverage = rng.uniform(0.40, 0.60)
    threshold = float(np.quantile(field, 1.0 - coverage))
    miss = missing_tiles(spec)
    grid = None
    if miss:
        grid = np.zeros(
            (math.ceil(spec.height / spec.tile_size), math.ceil(spec.width / spec.tile_size)), bool
        )
        for c, r in miss:
            grid[r, c] = True
    return _Model(blobs, wobble, threshold, texture, stain, density, hash_key, grid)


def _tissue_factors(
    blobs: np.ndarray, wobble: np.ndarray, s: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Factors (len(t) x K), (K x len(s)) whose product is the tissue field T(t, s).

    Every term is separable: Gaussian blobs directly, the wobble via sin(A+B) = sinA cosB +
    cosA sinB. One small matrix product then evaluates the whole field.
    """
    cx, cy, rx, ry, wt = blobs.T
    a = [wt[:, None] * np.exp(-(((t[None, :] - cy[:, None]) / ry[:, None]) ** 2))]
    b = [np.exp(-(((s[None, :] - cx[:, None]) / rx[:, None]) ** 2))]
    fs, ft, ph, amp = wobble.T
    A = 2 * np.pi * fs[:, None] * s[None, :] + ph[:, None]
    B = 2 * np.pi * ft[:, None] * t[None, :]
    a += [amp[:, None] * np.cos(B), amp[:, None] * np.sin(B)]
    b += [np.sin(A), np.cos(A)]
    return np.ascontiguousarray(np.concatenate(a).T, np.float32), np.concatenate(b).astype(np.float32)


def _tissue_field(blobs: np.ndarray, wobble: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    a, b = _tissue_factors(blobs, wobble, s, t)
    return a @ b


def _wave_factors(
    params: np.ndarray, u: np.ndarray, v: np.ndarray, gain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Factors of sum_j gain_j amp_j sin(2 pi (fx_j u + fy_j v) + phase_j) (separable)."""
    fx, fy, ph, amp = params.T
    A = 2 * np.pi * fx[:, None] * u[None, :] + ph[:, None]
    B = 2 * np.pi * fy[:, None] * v[None, :]
    g = (gain * amp)[:, None]
    a = np.concatenate([g * np.cos(B), g * np.sin(B)])  # (2J, h)
    b = np.concatenate([np.sin(A), np.cos(A)])  # (2J, w)
    return a.T, b


def _waves(params: np.ndarray, u: np.ndarray, v: np.ndarray, gain: np.ndarray) -> np.ndarray:
    a, b = _wave_factors(params, u, v, gain)
    return a.astype(np.float32) @ b.astype(np.float32)


def _hash32(i: np.ndarray, j: np.ndarray, key: int, salt: int) -> np.ndarray:
    """Integer hash of cell coordinates -> uniform float32 in [0, 1). Vectorised, no state."""
    h = (i.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (j.astype(np.uint32) * np.uint32(0x85EBCA77))
    h ^= np.uint32((key * 0x27D4EB2F + salt * 0x165667B1) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))
