"""A colour check of the published TIFF that shares no assumption with the conversion.

verify.py compares the TIFF with the source as the converter decoded it, so a wrong colour-space
decision (say, RGB samples taken for YCbCr) makes both sides equally wrong and passes. This
check looks at the output alone: the glass background of a brightfield slide is near-neutral,
so a level with no bright near-neutral colour cluster, whose dominant bright colour is tinted
(magenta, green, salmon: what every YCbCr/RGB mix-up makes of white), was decoded with the
wrong colour space, whatever decoder did it.

The TIFF is read back independently: its IFDs entry by entry (converter.tiff.ifd: only the
sampled tiles' offsets are read, not the ~275,000 of a 150,000 px level), imagecodecs for the tiles,
with the JPEG colour space forced from the TIFF's own Photometric tag (as strict readers such
as libtiff do). A thumbnail's worth of tiles per level is enough (at most MAX_TILES, spread
over the level, corners included because slide corners are glass). Levels without a bright
background (fluorescence, dark field) are skipped with a note rather than failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.conversion.report import ConversionReport
from converter.errors import VerificationError
from converter.tiff.ifd import TiffStructure
from converter.tiff.verify import IfdTiles

MAX_TILES = 16
MIN_PIXELS = 4096
"""Levels smaller than this (a few tiny top levels) are too small to have a background."""
MIN_SHARE = 0.05
"""A colour cluster must cover this share of the sampled pixels to count."""
MIN_BACKGROUND_LUMA = 100.0
"""No cluster brighter than this: dark field or fluorescence, not checked, noted."""
NEUTRAL_LUMA = 180.0
"""Glass is bright: a neutral cluster must be at least this bright to count as the background
(a YCbCr image shown as RGB has luma 150-165 everywhere and chroma 30-50 on tissue)."""
MAX_BACKGROUND_CHROMA = 50.0
"""Largest mean chroma (max - min of R, G, B) of the background. Calibrated (docs/conversion.md)
on correct decodes of the generator's H&E slides and the real wsi2dcm sample (0-12) and on
their YCbCr/RGB mix-ups (82 and more down to a background luma of 210)."""


@dataclass
class ColourCheck:
    level: int
    tiles_checked: int
    clusters: str
    """The dominant colour clusters: share of the sampled pixels, mean BT.601 luma, mean chroma (max - min of R, G, B)."""
    passed: bool
    detail: str = ""


def _spread(across: int, down: int, n: int) -> list[tuple[int, int]]:
    """Up to n tile positions on a grid over the level, corners first."""
    if across * down <= n:
        return [(c, r) for r in range(down) for c in range(across)]
    picks = [(0, 0), (across - 1, 0), (0, down - 1), (across - 1, down - 1)]
    side = int(np.ceil(np.sqrt(n - len(picks))))
    for r in np.linspace(0, down - 1, side).round().astype(int):
        for c in np.linspace(0, across - 1, side).round().astype(int):
            if (int(c), int(r)) not in picks:
                picks.append((int(c), int(r)))
    return picks[:n]


_BIN = 16  # quantisation step per channel for finding the background colour
_STRIDE = 4  # every 4th pixel of every 4th row: glass and tissue are far larger than 4 px


@dataclass(frozen=True)
class Cluster:
    share: float
    luma: float
    chroma: float


def colour_clusters(pixels: np.ndarray, most: int = 3) -> list[Cluster]:
    """The dominant colour clusters of an (..., 3) uint8 array, largest first (share >= MIN_SHARE).

    Glass is uniform, so it forms one dense cluster, and stays one through any colour-space
    mix-up (which maps a uniform colour to another uniform colour). Colours are counted on a
    16-level grid per channel, each cell with its 26 neighbours so a colour on a cell border
    is not split; a cluster's pixels are removed before the next is looked for.
    """
    flat = pixels.reshape(-1, 3)
    q = (flat // _BIN).astype(np.int16)
    n = 256 // _BIN
    left = np.ones(len(flat), bool)
    out: list[Cluster] = []
    for _ in range(most):
        qq = q[left]
        if len(qq) == 0:
            break
        counts = np.bincount((qq[:, 0].astype(np.int32) * n + qq[:, 1]) * n + qq[:, 2], minlength=n**3).reshape(n, n, n)
        padded = np.pad(counts, 1)
        smooth = sum(
            padded[1 + dr : 1 + dr + n, 1 + dg : 1 + dg + n, 1 + db : 1 + db + n]
            for dr in (-1, 0, 1) for dg in (-1, 0, 1) for db in (-1, 0, 1)
        )
        best = np.array(np.unravel_index(int(np.argmax(smooth)), smooth.shape), np.int16)
        member = left & np.all(np.abs(q - best) <= 1, axis=1)
        share = float(member.sum()) / len(flat)
        if share < MIN_SHARE:
            break
        c = flat[member].astype(np.float32)
        out.append(Cluster(share, float((c @ np.array([0.299, 0.587, 0.114], np.float32)).mean()),
                           float((c.max(axis=1) - c.min(axis=1)).mean())))
        left &= ~member
    return out


def judge(level: int, tiles: int, clusters: list[Cluster], max_chroma: float = MAX_BACKGROUND_CHROMA) -> ColourCheck:
    """Pass when a bright, neutral background is there; fail when the slide's dominant colour is tinted."""
    words = ", ".join(f"{c.share:.0%} luma {c.luma:.0f} chroma {c.chroma:.0f}" for c in clusters) or "none"
    check = ColourCheck(level, tiles, words, True)
    bright = [c for c in clusters if c.luma >= MIN_BACKGROUND_LUMA]
    if not bright:
        check.detail = f"no bright background (colour clusters: {words}): dark-field or fluorescence? colour not checked"
    elif any(c.luma >= NEUTRAL_LUMA and c.chroma <= max_chroma for c in bright):
        pass  # glass found, near-neutral
    else:
        top = bright[0]
        check.passed = False
        check.detail = (f"no near-neutral background: the dominant bright colour ({top.share:.0%} of the sampled pixels) has "
                        f"mean chroma {top.chroma:.0f} > {max_chroma:.0f} (clusters: {words}); the glass of a brightfield "
                        f"slide is near-neutral, so the colour space was probably decoded wrongly")
    return check


def check_colour(path: Path, pages: dict[str, int], levels: int, max_chroma: float = MAX_BACKGROUND_CHROMA) -> list[ColourCheck]:
    """One ColourCheck per pyramid level `level-0` .. `level-{levels-1}` of the TIFF at `path`."""
    checks: list[ColourCheck] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        tiff = TiffStructure(fd)
        for index in range(levels):
            out = IfdTiles(tiff, pages[f"level-{index}"], path)
            if out.samples < 3:
                checks.append(ColourCheck(index, 0, "", True, "grayscale: no colour to check"))
                continue
            if out.width * out.height < MIN_PIXELS:
                checks.append(ColourCheck(index, 0, "", True, "level too small to have a background: not checked"))
                continue
            down = -(-out.height // out.tile_height)
            picks = _spread(out.across, down, MAX_TILES)
            parts = []
            for col, row in picks:
                tile = out.decoded(col, row)
                h = min(out.tile_height, out.height - row * out.tile_height)
                w = min(out.tile_width, out.width - col * out.tile_width)
                parts.append(tile[:h:_STRIDE, :w:_STRIDE, :3].reshape(-1, 3))
            checks.append(judge(index, len(picks), colour_clusters(np.concatenate(parts)), max_chroma))
    finally:
        os.close(fd)
    return checks


def enforce_colour(path: Path, pages: dict[str, int], report: ConversionReport, what: str) -> None:
    """Run check_colour on every level of `report`, record it, raise VerificationError if any fails."""
    report.colour_checks = check_colour(path, pages, len(report.levels))
    report.notes.extend(f"level {c.level}: {c.detail}" for c in report.colour_checks
                        if c.passed and c.detail and "too small" not in c.detail)
    tinted = [c for c in report.colour_checks if not c.passed]
    if tinted:
        details = "; ".join(f"level {c.level}: {c.detail}" for c in tinted)
        colours = "; ".join(f"level {lv.index}: {lv.colour.get('decided')} because {lv.colour.get('why')}"
                            for lv in report.levels if lv.colour)
        raise VerificationError(
            f"{what}: the converted TIFF has wrong colours ({details}); nothing was published. "
            f"Colour decisions: {colours or 'none recorded'}.",
            "Check the source's PhotometricInterpretation against its bitstream (docs/conversion.md, colour rules) "
            "and report this with the sidecar JSON.",
        )
