"""Slide formats tile servers already read fast: check them, then move them to serving as they are.

A file passes through only when the serving stack can open it as a pyramid
(OpenSlide; tifffile for OME-TIFF, which OpenSlide cannot read). A plain
TIFF (strips, or a single level) is converted to a pyramidal TIFF instead.
A .mrxs file moves together with its companion data folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from converter.durable import durable_move, fsync_dir

PASSTHROUGH_SUFFIXES = (".ome.tiff", ".ome.tif", ".svs", ".ndpi", ".mrxs", ".scn", ".czi", ".tiff", ".tif")


def passthrough_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in PASSTHROUGH_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return None


@dataclass
class PassthroughCheck:
    action: str
    """'move' (a pyramid the serving stack reads), 'convert' (a plain TIFF), or 'reject'."""
    detail: str


def check_passthrough(path: Path) -> PassthroughCheck:
    suffix = passthrough_suffix(path.name)
    if suffix in (".ome.tif", ".ome.tiff"):
        return _check_ome(path)
    if suffix == ".czi":
        # Neither OpenSlide nor tifffile reads CZI; check the container signature at least.
        with open(path, "rb") as fp:
            head = fp.read(16)
        if head.startswith(b"ZISRAWFILE"):
            return PassthroughCheck("move", "Zeiss CZI container (not opened: no CZI reader in the serving stack)")
        return PassthroughCheck("reject", "the file has a .czi name but no CZI (ZISRAWFILE) signature")
    try:
        import openslide

        with openslide.OpenSlide(str(path)) as slide:
            levels = slide.level_count
            vendor = slide.properties.get("openslide.vendor", "?")
            dims = slide.dimensions
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
        if suffix in (".tif", ".tiff"):
            return _check_plain_tiff(path, f"OpenSlide cannot open it ({exc})")
        return PassthroughCheck("reject", f"OpenSlide cannot open it: {exc}")
    if levels < 2 and max(dims) > 1024:
        if suffix in (".tif", ".tiff"):
            return PassthroughCheck("convert", f"a single-level {dims[0]}x{dims[1]} TIFF (no pyramid)")
        return PassthroughCheck("reject", f"OpenSlide sees a single {dims[0]}x{dims[1]} level, not a pyramid")
    return PassthroughCheck("move", f"{vendor} slide, {levels} levels, {dims[0]}x{dims[1]}")


def _check_ome(path: Path) -> PassthroughCheck:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return _check_plain_tiff(path, "no OME-XML metadata")
            levels = len(tif.series[0].levels)
            shape = tif.series[0].shape
    except Exception as exc:
        return PassthroughCheck("reject", f"tifffile cannot read it as OME-TIFF: {exc}")
    if levels < 2:
        return PassthroughCheck("convert", f"an OME-TIFF without a pyramid ({shape})")
    return PassthroughCheck("move", f"OME-TIFF, {levels} levels")


def _check_plain_tiff(path: Path, why: str) -> PassthroughCheck:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape
    except Exception as exc:
        return PassthroughCheck("reject", f"not a readable TIFF: {exc}")
    return PassthroughCheck("convert", f"a plain TIFF {shape} ({why})")


def companion_folder(path: Path) -> Path | None:
    """A MIRAX slide's data folder: same name without .mrxs, next to it."""
    if path.name.lower().endswith(".mrxs"):
        folder = path.with_name(path.name[: -len(".mrxs")])
        if folder.is_dir():
            return folder
    return None


def move_passthrough(src: Path, target: Path) -> None:
    """Move a slide (and a MIRAX data folder) into serving without a half-visible file."""
    folder = companion_folder(src)
    if folder is not None:
        # The data folder first, under a hidden name, then renamed: OpenSlide needs it before the .mrxs appears.
        dest_folder = target.with_name(target.name[: -len(".mrxs")])
        staging = target.parent / f".{dest_folder.name}.incoming"
        shutil.rmtree(staging, ignore_errors=True)
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                durable_move(item, staging / item.relative_to(folder))
        staging.rename(dest_folder)
        fsync_dir(target.parent)
        shutil.rmtree(folder, ignore_errors=True)
    durable_move(src, target)
