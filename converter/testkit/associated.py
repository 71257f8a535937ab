"""The associated images: label (text and barcode), thumbnail and overview of the whole glass.

Each is a single-frame image rendered from the same ground truth as the pyramid
(:mod:`converter.testkit.render`), so a converter's associated images can be checked too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from converter.testkit.render import _LUMA, _colour_weights, _mask_missing, _shade, _to_uint8
from converter.testkit.spec import (
    _ORIGIN_X_MM,
    _ORIGIN_Y_MM,
    _SLIDE_X_MM,
    _SLIDE_Y_MM,
    SlideSpec,
    focus_depth_um,
)


def _render_resampled(
    spec: SlideSpec, out_w: int, out_h: int, factor_x: float, factor_y: float
) -> np.ndarray:
    """The whole slide at a non-integer downsample (thumbnail); cells beyond the image are white."""
    xs, ys = np.arange(out_w), np.arange(out_h)
    u, v = (xs + 0.5) * factor_x, (ys + 0.5) * factor_y
    values = _shade(spec, u, v, factor_x, factor_y, focus_depth_um(spec), _colour_weights(spec, 0))
    inside = (ys * factor_y < spec.height)[:, None] & (xs * factor_x < spec.width)[None, :]
    _mask_missing(spec, u, v, inside)
    return _to_uint8(spec, values, inside, 0)


# 5x7 bitmap glyphs, enough for "SYN-<seed>" and "WSI-NODE" on the label.
_GLYPHS = {
    "0": "01110100011001110101110011000101110",
    "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111",
    "3": "11111000100010000010000011000101110",
    "4": "00010001100101010010111110001000010",
    "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110",
    "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110",
    "9": "01110100011000101111000010001001100",
    "S": "01111100001000001110000010000111110",
    "Y": "10001100010101000100001000010000100",
    "N": "10001110011010110011100011000110001",
    "W": "10001100011000110101101011010101010",
    "I": "01110001000010000100001000010001110",
    "O": "01110100011000110001100011000101110",
    "D": "11110100011000110001100011000111110",
    "E": "11111100001000011110100001000011111",
    "-": "00000000000000011111000000000000000",
}


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int, color: float) -> None:
    for n, ch in enumerate(text):
        bits = _GLYPHS.get(ch)
        if bits is None:
            continue
        g = np.array([int(b) for b in bits], dtype=bool).reshape(7, 5)
        g = np.kron(g, np.ones((scale, scale), dtype=bool))
        x0 = x + n * 6 * scale
        sub = img[y : y + g.shape[0], x0 : x0 + g.shape[1]]
        sub[g[: sub.shape[0], : sub.shape[1]]] = color


def render_label(spec: SlideSpec, width: int = 480, height: int = 320) -> np.ndarray:
    """The slide label: "SYN-<seed>", "WSI-NODE", a seeded barcode and a blue pen mark."""
    img = np.full((height, width, 3), 250.0, dtype=np.float32)
    img[: height // 8, :] = np.array([40.0, 90.0, 200.0])  # coloured stripe: not a grey image
    scale = max(1, min(width // 60, height // 40))
    _draw_text(img, f"SYN-{spec.seed}", width // 16, height // 5, scale, 25.0)
    _draw_text(img, "WSI-NODE", width // 16, height // 5 + 10 * scale, scale, 25.0)
    bits = hashlib.sha256(f"barcode/{spec.seed}".encode()).digest()
    bar_w = max(1, width // 160)
    x = width // 16
    y0, y1 = int(height * 0.68), int(height * 0.92)
    for byte in bits:
        for k in range(8):
            if x + bar_w > width - width // 16:
                break
            if byte >> k & 1:
                img[y0:y1, x : x + bar_w] = 20.0
            x += bar_w
    if spec.samples_per_pixel == 1:
        return np.clip(img @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _thumbnail_geometry(spec: SlideSpec, longest: int = 512) -> tuple[int, int, float]:
    f = max(spec.width, spec.height) / float(longest)
    f = max(f, 1.0)
    return math.ceil(spec.width / f), math.ceil(spec.height / f), f


def _render_thumbnail(spec: SlideSpec) -> np.ndarray:
    tw, th, f = _thumbnail_geometry(spec)
    return _render_resampled(spec, tw, th, f, f)


_OVERVIEW_SPACING_MM = 0.1


def _render_overview(spec: SlideSpec) -> np.ndarray:
    """The whole glass slide (75 x 25 mm) at 0.1 mm/px, tissue and label in place."""
    sp = _OVERVIEW_SPACING_MM
    cols, rows = int(_SLIDE_Y_MM / sp), int(_SLIDE_X_MM / sp)
    # Overview pixel (c, r) centre -> slide (X, Y) -> level-0 pixel (u, v); same orientation.
    c, r = np.arange(cols) + 0.5, np.arange(rows) + 0.5
    slide_y = _SLIDE_Y_MM - c * sp
    slide_x = _SLIDE_X_MM - r * sp
    row_mm, col_mm = spec.pixel_spacing_mm
    u = (_ORIGIN_Y_MM - slide_y) / col_mm
    v = (_ORIGIN_X_MM - slide_x) / row_mm
    rgb_spec = dataclasses.replace(spec, samples_per_pixel=3)
    rgb = _shade(
        rgb_spec, u, v, sp / col_mm, sp / row_mm, focus_depth_um(spec), _colour_weights(rgb_spec, 0)
    ).copy()
    inside = ((v >= 0) & (v < spec.height))[:, None] & ((u >= 0) & (u < spec.width))[None, :]
    _mask_missing(spec, u, v, inside)
    glass = np.array([228.5, 230.5, 236.5], dtype=np.float32)
    rgb = np.where(inside[..., None], rgb, glass)
    # Label area: high Y (left of the image), nearest-neighbour copy of the label.
    lab = render_label(rgb_spec).astype(np.float32) + np.float32(0.5)
    lc = int(13.0 / sp)
    yy = (np.arange(rows) * lab.shape[0] / rows).astype(int)
    xx = (np.arange(lc) * lab.shape[1] / lc).astype(int)
    rgb[:, :lc] = lab[np.ix_(yy, xx)]
    if spec.samples_per_pixel == 1:
        rgb = rgb @ _LUMA[:, None]
    return _to_uint8(spec, rgb, np.ones((rows, cols), bool), 0)
