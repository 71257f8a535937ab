"""Plain (strip or single-level) TIFFs become pyramidal TIFFs.

Tile servers cannot serve a non-pyramidal TIFF quickly, so such a drop is
re-encoded like a DICOM level: libvips reads it (sequentially for the
pyramid pass, randomly for the verification samples) and the same streaming
pyramid, writer and verification as for DICOM series do the rest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyvips

from config.settings import ConversionOptions
from converter.conversion.convert import write_verify_publish
from converter.conversion.encode import encode_chains
from converter.errors import InputError
from converter.tiff.layout import SourceLevelFacts, plan_layout
from converter.conversion.report import ConversionReport, LevelReport
from converter.conversion.run import run_conversion, started_pool
from converter.tiff.writer import TiffLevel


@dataclass
class _Geometry:
    width: int
    height: int


class VipsReader:
    """The LevelReader interface (strips, region, level size) over an image libvips can load."""

    def __init__(self, path: Path, strip_height: int = 256) -> None:
        self.path = path
        image = pyvips.Image.new_from_file(str(path))
        if image.hasalpha():
            image = image.flatten(background=[255] * (image.bands - 1))
        if image.format != "uchar":
            image = image.cast("uchar")
        if image.bands not in (1, 3):
            image = image.colourspace("srgb") if image.bands > 3 else image[0]
        self.image = image
        self.level = _Geometry(image.width, image.height)
        self.samples = image.bands
        self.strip_height = strip_height

    def _array(self, image: pyvips.Image) -> np.ndarray:
        a = np.frombuffer(image.write_to_memory(), np.uint8).reshape(image.height, image.width, image.bands)
        return a

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, self.samples), 255, np.uint8)
        x1, y1 = min(x + w, self.level.width), min(y + h, self.level.height)
        if x1 > x and y1 > y:
            out[: y1 - y, : x1 - x] = self._array(self.image.crop(x, y, x1 - x, y1 - y))
        return out

    def strips(self) -> Iterator[np.ndarray]:
        # Random access (libvips reads the strips a crop needs): sequential mode
        # fails when its read-ahead threads ask for lines out of order.
        for y in range(0, self.level.height, self.strip_height):
            h = min(self.strip_height, self.level.height - y)
            yield self._array(self.image.crop(0, y, self.level.width, h))

    def close(self) -> None:
        pass


def convert_plain_tiff(src: str | Path, output: str | Path, options: ConversionOptions) -> ConversionReport:
    """Convert the plain TIFF `src` to the pyramidal TIFF `output`; returns the report, never raises for bad input."""
    src, output = Path(src), Path(output)
    report = ConversionReport(series_uid="", study_uid="", options=asdict(options))
    report.source = {"file": src.name}

    def describe(exc: Exception) -> str:
        return f"{src}: unexpected {type(exc).__name__}: {exc}. Fix: report this as a bug."

    return run_conversion(output, report, lambda work, tmp: _convert(src, output, options, report, work, tmp), describe)


def _convert(src: Path, output: Path, options: ConversionOptions, report: ConversionReport, work: Path, tmp: Path) -> None:
    try:
        reader = VipsReader(src)
    except pyvips.Error as exc:
        raise InputError(f"{src}: libvips cannot read this TIFF ({str(exc).splitlines()[0]}).", "Check the file; re-export it from its source.") from exc
    work.mkdir(parents=True, exist_ok=True)
    tile = options.tile_size
    w, h = reader.level.width, reader.level.height
    plan = plan_layout([SourceLevelFacts(w, h, tile, tile, "plain TIFF: not tiled or not pyramidal")], "reencode", tile)
    report.levels = [LevelReport(lv.index, lv.width, lv.height, lv.action, lv.reason, lv.source) for lv in plan.levels]
    t = time.monotonic()
    with started_pool(options.threads) as pool:
        spools = encode_chains(plan, {0: reader}, work, options, pool, report)
    report.timings["pixels"] = round(time.monotonic() - t, 3)
    colorspace = "gray" if reader.samples == 1 else "RGB"
    levels = [TiffLevel(lv.width, lv.height, tile, tile, reader.samples, spools[lv.index], colorspace, (1, 1), None) for lv in plan.levels]
    for rep in report.levels:
        rep.colorspace = colorspace
    write_verify_publish(
        tmp, output, plan, levels, [], {0: reader}, {}, options, report, pool_spools=spools,
        description=f"wsi-node pyramidal TIFF\nSource={src.name}", svs_extra={}, icc=None,
        what=str(src), t_write=time.monotonic(),
    )
