"""Writing the pyramidal TIFF from pre-encoded tiles.

tifffile writes each level from an iterator of encoded tiles, so nothing is
decoded or held in memory here. The Photometric and YCbCrSubSampling tags
come from the bitstream of the tiles (see converter.codecs.jpeg), never from the
DICOM label.

Two layouts:
- generic: level 0 first, lower levels flagged reduced-resolution, then the
  associated images as stripped IFDs whose ImageDescription is their name
  (large_image lists them by that name).
- svs: Aperio's order (level 0, thumbnail, lower levels, label, macro) and
  descriptions, so OpenSlide also exposes label and macro.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import tifffile


_WRITE_BUFFER = 8 << 20


@dataclass
class TiffLevel:
    width: int
    height: int
    tile_width: int
    tile_height: int
    samples: int
    tiles: Iterable[bytes]
    colorspace: str
    """'YCbCr', 'RGB' or 'gray': what the tiles' JPEG bitstreams hold."""
    subsampling: tuple[int, int]
    spacing_mm: tuple[float, float] | None
    """(row, column) pixel spacing of this level."""
    placeholder: bool = False
    """Write the level's tiles empty: converter.tiff.splice appends its frames and points the tiles at them."""


@dataclass
class AssociatedImage:
    name: str
    """'label', 'macro' or 'thumbnail'."""
    pixels: np.ndarray


def _jpeg_args(level: TiffLevel) -> dict:
    if level.samples == 1 or level.colorspace == "gray":
        return {"photometric": "minisblack"}
    if level.colorspace == "RGB":
        return {"photometric": "rgb", "subsampling": (1, 1), "compressionargs": {"outcolorspace": "RGB"}}
    return {"photometric": "rgb", "subsampling": level.subsampling, "compressionargs": {"outcolorspace": "YCBCR"}}


def _resolution(spacing: tuple[float, float] | None) -> dict:
    if not spacing:
        return {}
    row_mm, col_mm = spacing
    # TIFF X is along a row (column spacing), Y along a column (row spacing); pixels per centimetre.
    return {"resolution": (10.0 / col_mm, 10.0 / row_mm), "resolutionunit": "CENTIMETER"}


def _write_level(tif: tifffile.TiffWriter, lv: TiffLevel, reduced: bool, description: str | None, icc: bytes | None) -> None:
    shape = (lv.height, lv.width) if lv.samples == 1 else (lv.height, lv.width, lv.samples)
    count = -(-lv.width // lv.tile_width) * -(-lv.height // lv.tile_height)
    tif.write(
        itertools.repeat(b"", count) if lv.placeholder else iter(lv.tiles),
        shape=shape,
        dtype=np.uint8,
        tile=(lv.tile_height, lv.tile_width),
        compression="jpeg",
        subfiletype=1 if reduced else 0,
        description=description,
        iccprofile=icc,
        metadata=None,
        software="wsi-node",
        **_jpeg_args(lv),
        **_resolution(lv.spacing_mm),
    )


def _write_associated(tif: tifffile.TiffWriter, image: AssociatedImage, description: str) -> None:
    pixels = image.pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    rgb = pixels.ndim == 3
    if image.name == "label":
        # Lossless, so small text and barcodes stay readable.
        compression, extra = "lzw", {}
    else:
        compression, extra = "jpeg", {"compressionargs": {"level": 90}}
    tif.write(
        pixels,
        photometric="rgb" if rgb else "minisblack",
        compression=compression,
        subfiletype={"label": 1, "macro": 9}.get(image.name, 0),  # Aperio convention; OpenSlide 4 relies on it
        description=description,
        metadata=None,
        software="wsi-node",
        rowsperstrip=16 * max(1, 65536 // max(1, pixels.shape[1] * 3) // 16),
        **extra,
    )


def aperio_description(levels: list[TiffLevel], quality: int, extra: dict[str, str]) -> str:
    base = levels[0]
    head = (
        f"Aperio Image Library v12.0.15 \r\n{base.width}x{base.height} [0,0 {base.width}x{base.height}]"
        f" ({base.tile_width}x{base.tile_height}) JPEG/RGB Q={quality}"
    )
    fields = [f"{k} = {v}" for k, v in extra.items()]
    if base.spacing_mm:
        fields.append(f"MPP = {base.spacing_mm[1] * 1000:.6f}")
    return "|".join([head, *fields])


def write_tiff(
    path: Path,
    levels: list[TiffLevel],
    associated: list[AssociatedImage],
    *,
    layout: str,
    description: str,
    svs_description: str | None = None,
    icc: bytes | None = None,
    bigtiff: bool = False,
) -> dict[str, int]:
    """Write the TIFF; return the IFD index of every level ('level-N') and associated image."""
    pages: dict[str, int] = {}
    # tifffile writes one tile per write call; a large buffer turns ~300,000 small writes of a
    # big slide into a few thousand (its seeks back to patch offsets flush the buffer first).
    with open(path, "wb", buffering=_WRITE_BUFFER) as fh, tifffile.TiffWriter(fh, bigtiff=bigtiff) as tif:
        page = 0
        if layout == "svs":
            by_name = {a.name: a for a in associated}
            _write_level(tif, levels[0], False, svs_description, icc)
            pages["level-0"] = page
            page += 1
            thumb = by_name.get("thumbnail")
            if thumb is not None:
                _write_associated(tif, thumb, f"Aperio Image Library v12.0.15\nthumbnail {thumb.pixels.shape[1]}x{thumb.pixels.shape[0]}")
                pages["thumbnail"] = page
                page += 1
            for i, lv in enumerate(levels[1:], start=1):
                _write_level(tif, lv, True, svs_description, icc)
                pages[f"level-{i}"] = page
                page += 1
            for name in ("label", "macro"):
                img = by_name.get(name)
                if img is not None:
                    h, w = img.pixels.shape[:2]
                    _write_associated(tif, img, f"Aperio Image Library v12.0.15\n{name} {w}x{h}")
                    pages[name] = page
                    page += 1
        else:
            for i, lv in enumerate(levels):
                _write_level(tif, lv, i > 0, description if i == 0 else None, icc)
                pages[f"level-{i}"] = page
                page += 1
            for img in associated:
                _write_associated(tif, img, img.name)
                pages[img.name] = page
                page += 1
    return pages
