"""Ground-truth pixels: :func:`render_region`, the tissue model evaluated at any level.

Ground truth is a pure function of coordinates, evaluated per level at the centre of each level
pixel's footprint in level-0 coordinates, with the fine structure attenuated as a box filter of
that footprint would. Every level is therefore a faithful downsample of level 0 without level 0
ever being materialised. The associated images (label, overview, thumbnail) are rendered from the
same shading in :mod:`converter.testkit.associated`.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from converter.testkit.spec import SlideSpec, focus_depth_um
from converter.testkit.tissue import _hash32, _model, _tissue_factors, _wave_factors, _waves

# Colours (RGB). Saturated on purpose: a YCbCr/RGB mix-up must be glaring, not subtle.
_BACKGROUND = 245.0  # glass inside the scanned area
_WHITE = 255  # outside the image, padding of edge frames, missing tiles
_EOSIN = np.array([230.0, 150.0, 190.0], dtype=np.float32)
_HEMATOXYLIN = np.array([120.0, 70.0, 160.0], dtype=np.float32)

_NUCLEUS_CELL = 20.0  # level-0 px: one candidate nucleus per cell of this size
# E[pi r^2] for r uniform in [3, 6.5]: pi * (b^3 - a^3) / (3 (b - a))
_MEAN_NUCLEUS_AREA = math.pi * (6.5**3 - 3.0**3) / (3 * 3.5)


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` in row blocks small enough to stay single-threaded in BLAS.

    Why: OpenBLAS spreads a GEMM over all cores once M*N*K exceeds ~262k; for these thin
    products that costs more in spinning threads than it saves, and it fights the tile thread
    pool (a 24000x18000 slide went from 31 s to 41 s). Blocks of <= 2**17 multiply-adds avoid it.
    """
    rows = max(1, (1 << 17) // max(1, b.shape[0] * b.shape[1]))
    for r0 in range(0, a.shape[0], rows):
        np.matmul(a[r0 : r0 + rows], b, out=out[r0 : r0 + rows])
    return out


_scratch = threading.local()


def _buffers(h: int, w: int) -> dict[str, np.ndarray]:
    """Per-thread scratch arrays, reused across tiles.

    Why: a fresh 256 KiB temporary per numpy operation makes glibc hand memory back to the OS
    and fault it in again on every tile, which tripled the render time. Reusing buffers keeps
    a 256x256 tile at ~1-2 ms.
    """
    cache = getattr(_scratch, "cache", None)
    if cache is None:
        cache = _scratch.cache = {}
    key = (h, w)
    bufs = cache.get(key)
    if bufs is None:
        if len(cache) > 8:
            cache.clear()
        bufs = {name: np.empty((h, w), np.float32) for name in ("alpha", "stain", "a", "b", "c")}
        bufs["idx"] = np.empty((h, w), np.intp)
        bufs["mix"] = np.empty((h, w, 3), np.float32)
        bufs["out3"] = np.empty((h * w, 3), np.float32)
        bufs["out1"] = np.empty((h * w, 1), np.float32)
        cache[key] = bufs
    return bufs


def _shade(
    spec: SlideSpec,
    u: np.ndarray,
    v: np.ndarray,
    foot_x: float,
    foot_y: float,
    z_um: float,
    weights: np.ndarray,
) -> np.ndarray:
    """Pixel values (len(v), len(u), weights.shape[1]) float32 of the tissue at level-0 u, v.

    ``u``/``v`` are the centres of the output pixels in continuous level-0 pixel units (level-0
    pixel i spans [i, i+1)); ``foot_x``/``foot_y`` the size of an output pixel in level-0
    pixels. Fine structure is attenuated as a box filter of that footprint would attenuate it,
    so lower levels match an area-average of level 0 closely.

    The colour model is linear in three scalar fields, out = base*w0 + P*w1 + Q*w2 (see
    :func:`_colour_weights`), so RGB, a rolled channel order or grayscale are just different
    ``weights``. The result is a view into a per-thread scratch buffer: convert or copy it before
    the next call on the same thread.
    """
    m = _model(spec)
    W, H = float(spec.width), float(spec.height)
    dz = z_um - focus_depth_um(spec)  # signed defocus
    defocus = abs(dz)
    h, w = len(v), len(u)
    buf = _buffers(h, w)
    alpha, stain, ta, tb, tc = buf["alpha"], buf["stain"], buf["a"], buf["b"], buf["c"]
    u32 = u.astype(np.float32)
    v32 = v.astype(np.float32)

    # Tissue mask (low frequency, so point evaluation is exact enough at every level).
    fa, fb = _tissue_factors(m.blobs, m.wobble, u / W, v / H)
    _matmul_into(fa, fb, alpha)
    edge = 0.01
    alpha -= np.float32(m.threshold - edge / 2)
    alpha *= np.float32(1.0 / edge)
    np.clip(alpha, 0.0, 1.0, out=alpha)

    # Stain intensity: slow variation plus fibrous texture (box-filter attenuated, blurred when
    # out of focus), all separable, so one product of the concatenated factors.
    sa, sb = _wave_factors(m.stain, u / W, v / H, np.ones(len(m.stain)))
    fx, fy = m.texture[:, 0], m.texture[:, 1]
    gain = np.sinc(fx * foot_x) * np.sinc(fy * foot_y) / (1.0 + 2.0 * defocus)
    # A different depth shows different fibres: shift the texture phase with signed defocus.
    texture = m.texture.copy()
    texture[:, 2] += 1.3 * dz
    xa, xb = _wave_factors(texture, u, v, gain)
    _matmul_into(
        np.ascontiguousarray(np.concatenate([sa, xa], axis=1), np.float32),
        np.concatenate([sb, xb]).astype(np.float32),
        stain,
    )
    stain += np.float32(1.0)

    # Nuclei: at most one per cell, round, hash-placed entirely inside its cell.
    C = _NUCLEUS_CELL
    rb = math.sqrt(foot_x * foot_y / math.pi)  # pixel footprint as a disc (level-0 px)
    # Once a pixel spans several cells its true average is the expected nuclear coverage.
    blend = min(max((rb - C / 4) / (C / 4), 0.0), 1.0)
    r, dx, dy = ta, tb, tc
    if blend >= 1.0:
        # Pure expectation: no per-cell work (the cell grid may be huge, e.g. the overview).
        dens = _waves(m.density, u / W, v / H, np.ones(len(m.density)))
        dens += np.float32(0.6)
        np.clip(dens, 0.0, 1.0, out=dens)
        cover = np.multiply(dens, np.float32(_MEAN_NUCLEUS_AREA / C**2), out=dx)
        shade = dy
        shade.fill(np.float32(0.975))
    else:
        ci = np.floor(u / C).astype(np.intp)
        cj = np.floor(v / C).astype(np.intp)
        i0, j0 = int(ci.min()), int(cj.min())
        gi = np.arange(i0, int(ci.max()) + 1)
        gj = np.arange(j0, int(cj.max()) + 1)
        GI, GJ = np.meshgrid(gi, gj)
        rad = 3.0 + 3.5 * _hash32(GI, GJ, m.hash_key, 1)
        cxc = (GI * C + rad + (C - 2 * rad) * _hash32(GI, GJ, m.hash_key, 2)).astype(np.float32)
        cyc = (GJ * C + rad + (C - 2 * rad) * _hash32(GI, GJ, m.hash_key, 3)).astype(np.float32)
        dens = _waves(m.density, (gi + 0.5) * C / W, (gj + 0.5) * C / H, np.ones(len(m.density)))
        dens = np.clip(dens + np.float32(0.6), 0.0, 1.0)
        present = _hash32(GI, GJ, m.hash_key, 4) < dens
        rad_eff = np.where(present, rad, 0.0).astype(np.float32)
        dark = (0.8 + 0.35 * _hash32(GI, GJ, m.hash_key, 5)).astype(np.float32)
        idx = buf["idx"]
        np.add(((cj - j0) * len(gi))[:, None], (ci - i0)[None, :], out=idx)
        np.take(rad_eff.ravel(), idx, out=r)
        np.take(cxc.ravel(), idx, out=dx)
        np.subtract(u32[None, :], dx, out=dx)
        np.take(cyc.ravel(), idx, out=dy)
        np.subtract(v32[:, None], dy, out=dy)
        dx *= dx
        dy *= dy
        dx += dy
        d = np.sqrt(dx, out=dx)
        # Coverage ramp across the nucleus edge; half-width = footprint plus defocus blur.
        # Small nuclei under a big footprint are scaled by their area share.
        hw = max(rb, 0.5) + 1.5 * defocus
        cover = np.subtract(r, d, out=dx)
        cover += np.float32(hw)
        cover *= np.float32(1.0 / (2 * hw))
        np.clip(cover, 0.0, 1.0, out=cover)
        r *= np.float32(1.0 / hw)
        r *= r
        np.minimum(r, np.float32(1.0), out=r)
        cover *= r
        if blend > 0:
            mean_cover = (dens * np.float32(_MEAN_NUCLEUS_AREA / C**2)).astype(np.float32)
            expected = np.take(mean_cover.ravel(), idx, out=dy)
            cover *= np.float32(1 - blend)
            expected *= np.float32(blend)
            cover += expected
        shade = np.take(dark.ravel(), idx, out=dy)

    # Composite (per channel c, E = 255 - eosin, Hm = 255 - hematoxylin):
    #   tissue_c = 255 - (E_c * stain * (1 - cover) + Hm_c * shade * cover)
    #   out_c    = bg + alpha * (tissue_c - bg) = base - E_c * P - Hm_c * Q
    mix = buf["mix"]
    q = np.multiply(alpha, cover, out=r)
    p = np.subtract(alpha, q, out=mix[..., 1])
    p *= stain
    np.multiply(q, shade, out=mix[..., 2])
    base = mix[..., 0]
    np.multiply(alpha, np.float32(255.0 - _BACKGROUND), out=base)
    base += np.float32(_BACKGROUND + 0.5)  # + 0.5: rounding, folded in here
    out = buf["out3"] if weights.shape[1] == 3 else buf["out1"]
    _matmul_into(mix.reshape(-1, 3), weights, out)
    return out.reshape(h, w, weights.shape[1])


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _colour_weights(spec: SlideSpec, optical_path: int) -> np.ndarray:
    """(3 x channels) weights turning (base, P, Q) into output samples (see :func:`_shade`).

    Each optical path gets a distinct rendition (rolled channels, and paler from path 4 on), so
    a reader that mixes optical paths up is caught; grayscale is the Rec. 601 luma.
    """
    wts = np.stack(
        [np.ones(3, np.float32), -(255.0 - _EOSIN), -(255.0 - _HEMATOXYLIN)]
    ).astype(np.float32)
    if optical_path:
        wts = np.roll(wts, optical_path % 3, axis=1)
    if spec.samples_per_pixel == 1:
        wts = wts @ _LUMA[:, None]
    if optical_path >= 3:
        wts = wts * np.float32(0.7)  # paler: 255 - (255 - x) * 0.7; constant in _to_uint8
    return np.ascontiguousarray(wts, np.float32)


def _to_uint8(spec: SlideSpec, values: np.ndarray, inside: np.ndarray, optical_path: int) -> np.ndarray:
    """Clip (values already include the +0.5 rounding offset), white outside, to uint8."""
    if optical_path >= 3:
        # 0.7 (x + 0.5) + 76.65 == (0.7 x + 76.5) + 0.5: paler path, rounding kept.
        values += np.float32(76.65)
    np.clip(values, 0, 255, out=values)
    out = values.astype(np.uint8)
    if spec.samples_per_pixel == 1:
        out = out[..., 0]
    out[~inside] = _WHITE
    return out


def render_region(
    spec: SlideSpec,
    x: int,
    y: int,
    w: int,
    h: int,
    downsample: int = 1,
    *,
    z_um: float | None = None,
    optical_path: int = 0,
) -> np.ndarray:
    """Ground-truth pixels of the slide at the level with ``downsample``, in that level's pixels.

    Returns uint8 (h, w, 3), or (h, w) when ``spec.samples_per_pixel == 1``. Pure, deterministic
    and vectorised (a 256x256 tile costs a couple of ms). Pixels outside the level
    (``ceil(width / downsample)`` x ``ceil(height / downsample)``) and pixels over a missing
    level-0 tile (``missing_tiles(spec)``) are white (255); the scanned glass inside the image is
    ~245. ``z_um`` is the focal plane's Z offset in the slide coordinate system (as written in
    ZOffsetInSlideCoordinateSystem, see :func:`focal_plane_offsets_um`); None means the in-focus
    plane. Off focus, nuclei and texture blur and the texture shifts with the signed distance.
    ``optical_path`` is the 0-based optical path (each renders distinguishably).
    """
    ds = int(downsample)
    if ds < 1:
        raise ValueError("downsample must be >= 1")
    if w <= 0 or h <= 0:
        shape = (max(h, 0), max(w, 0)) + ((3,) if spec.samples_per_pixel == 3 else ())
        return np.zeros(shape, np.uint8)
    lw, lh = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
    xs = np.arange(x, x + w)
    ys = np.arange(y, y + h)
    u = (xs + 0.5) * ds
    v = (ys + 0.5) * ds
    z = focus_depth_um(spec) if z_um is None else float(z_um)
    values = _shade(spec, u, v, float(ds), float(ds), z, _colour_weights(spec, optical_path))
    inside = ((ys >= 0) & (ys < lh))[:, None] & ((xs >= 0) & (xs < lw))[None, :]
    _mask_missing(spec, u, v, inside)
    return _to_uint8(spec, values, inside, optical_path)


def _mask_missing(spec: SlideSpec, u: np.ndarray, v: np.ndarray, inside: np.ndarray) -> None:
    """Clear ``inside`` where the level-0 position falls in a missing tile (white there)."""
    m = _model(spec)
    if m.missing is None:
        return
    tx = np.clip(np.floor(u / spec.tile_size).astype(np.intp), 0, m.missing.shape[1] - 1)
    ty = np.clip(np.floor(v / spec.tile_size).astype(np.intp), 0, m.missing.shape[0] - 1)
    inside &= ~m.missing[np.ix_(ty, tx)]
