"""Slide formats tile servers already read fast: check them, then move them to serving as they are.

A file passes through only when the serving stack can open it as a pyramid *and read its
pixels*: opening proves little (OpenSlide opens an SVS whose tiles cannot be decoded, and
read_region then fails on every view, FIELD-NOTES). So before a file moves, a tile is read and
decoded at every level (top-left, middle and bottom-right), and every associated image is read:

* OpenSlide for the formats it reads: Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs (with its data
  folder), Leica .scn, Zeiss .czi (OpenSlide 4.0.1 reads only brightfield CZI: one channel, pixel
  type Bgr24 or Bgr48, uncompressed or zstd; not JPEG, LZW or JPEG XR subblocks, not
  fluorescence), and generic tiled TIFF;
* tifffile (with imagecodecs) for OME-TIFF, whose SubIFD pyramids OpenSlide cannot read.

A file that opens but cannot be read is rejected (the pipeline quarantines it with a reason
file) naming the level and the decoder's error. A plain TIFF (strips, or a single level) is
converted to a pyramidal TIFF instead, which reads every pixel anyway.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from converter.durable import durable_move, fsync_dir
from converter.inbox import naming

PASSTHROUGH_SUFFIXES = (".ome.tiff", ".ome.tif", ".svs", ".ndpi", ".mrxs", ".scn", ".czi", ".tiff", ".tif")
UNREADABLE_FIX = ("Fix: the file is damaged or its compression is not supported by the tile server; export or"
                  " copy it again from the scanner, or send the slide as DICOM.")


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


def _probe_points(x0: int, y0: int, width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Regions (x, y, w, h) to read in a rectangle: top-left, middle, bottom-right, one tile each."""
    w, h = max(1, min(tile, width)), max(1, min(tile, height))
    points = [(0, 0), ((width - w) // 2, (height - h) // 2), (width - w, height - h)]
    return [(x0 + x, y0 + y, w, h) for x, y in dict.fromkeys(points)]


def read_openslide_pixels(slide) -> str | None:
    """None if a tile decodes at every level and every associated image reads; else what failed.

    Slides with empty areas (Leica, MIRAX) say where the tissue is (openslide.bounds-*); the probes
    lie inside those bounds, so they read stored tiles rather than empty space."""
    props = slide.properties
    w0, h0 = slide.dimensions
    bx = int(props.get("openslide.bounds-x", 0))
    by = int(props.get("openslide.bounds-y", 0))
    bw = int(props.get("openslide.bounds-width", w0))
    bh = int(props.get("openslide.bounds-height", h0))
    for level, (width, height) in enumerate(slide.level_dimensions):
        scale = slide.level_downsamples[level]
        rect = (int(bx / scale), int(by / scale), max(1, int(bw / scale)), max(1, int(bh / scale)))
        for x, y, w, h in _probe_points(*rect, 256):
            try:
                # read_region takes level-0 coordinates for the top-left corner (OpenSlide API).
                slide.read_region((int(x * scale), int(y * scale)), level, (w, h))
            except Exception as exc:  # OpenSlideError: the decoder's message ("Bogus marker length", ...)
                return f"level {level} ({width}x{height} px): the tile at x={x}, y={y} cannot be decoded: {exc}"
    for name in list(slide.associated_images):
        try:
            slide.associated_images[name].load()
        except Exception as exc:
            return f"associated image '{name}' cannot be read: {exc}"
    return None


def read_tifffile_pixels(tif) -> str | None:
    """tifffile's counterpart of :func:`read_openslide_pixels`: decode segments of every level of
    every series (OME pyramids live in SubIFDs; other series are associated images)."""
    for s_index, series in enumerate(tif.series):
        levels = series.levels if s_index == 0 else series.levels[:1]
        for level, lvl in enumerate(levels):
            what = f"level {level}" if s_index == 0 else f"associated image '{series.name or s_index}'"
            problem = _decode_segments(tif, lvl.keyframe)
            if problem:
                return f"{what} ({lvl.keyframe.imagewidth}x{lvl.keyframe.imagelength} px): {problem}"
    return None


def _decode_segments(tif, page) -> str | None:
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets:
        return "it has no pixel data"
    if page.is_tiled:
        across = -(-page.imagewidth // page.tilewidth)
        down = -(-page.imagelength // page.tilelength)
        picks = [0, (down // 2) * across + across // 2, across * down - 1]
    else:
        picks = [0, len(offsets) // 2, len(offsets) - 1]
    decode = page.decode
    for index in dict.fromkeys(i for i in picks if 0 <= i < len(offsets)):
        kind = "tile" if page.is_tiled else "strip"
        if counts[index] == 0:
            return f"{kind} {index} is empty"
        tif.filehandle.seek(offsets[index])
        data = tif.filehandle.read(counts[index])
        try:
            pixels = decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:
            return f"{kind} {index} cannot be decoded: {exc}"
        if pixels is None:
            return f"{kind} {index} decodes to nothing"
    return None


def _unreadable(problem: str) -> PassthroughCheck:
    return PassthroughCheck("reject", f"the file opens but its pixels cannot be read: {problem}. {UNREADABLE_FIX}")


def check_passthrough(path: Path) -> PassthroughCheck:
    why = naming.refusal(path.name)
    if why is not None:
        return PassthroughCheck("reject", f"{why}. Fix: rename the file and drop it again.")
    suffix = passthrough_suffix(path.name)
    if suffix in (".ome.tif", ".ome.tiff"):
        return _check_ome(path)
    if suffix == ".mrxs" and companion_folder(path) is None:
        folder = path.name[: -len(".mrxs")]
        return PassthroughCheck("reject", f"the MIRAX data folder '{folder}/' (Slidedat.ini and the Data*.dat files) is"
                                f" missing next to {path.name}. Fix: copy the folder into the inbox with the .mrxs, the folder first.")
    if suffix == ".czi":
        with open(path, "rb") as fp:
            head = fp.read(16)
        if not head.startswith(b"ZISRAWFILE"):
            return PassthroughCheck("reject", "the file has a .czi name but no CZI (ZISRAWFILE) signature."
                                    " Fix: export the slide again from ZEN.")
    try:
        import openslide

        slide = openslide.OpenSlide(str(path))
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError
        if suffix in (".tif", ".tiff"):
            return _check_plain_tiff(path, f"OpenSlide cannot open it ({exc})")
        if suffix == ".czi":
            return PassthroughCheck("reject", f"OpenSlide cannot read this CZI ({exc}); it reads only brightfield CZI"
                                    " (Bgr24/Bgr48, uncompressed or zstd). Fix: export it from ZEN as uncompressed or"
                                    " zstd brightfield CZI, or as OME-TIFF.")
        return PassthroughCheck("reject", f"OpenSlide cannot open it: {exc}")
    with slide:
        levels = slide.level_count
        vendor = slide.properties.get("openslide.vendor", "?")
        dims = slide.dimensions
        if levels < 2 and max(dims) > 1024:
            if suffix in (".tif", ".tiff"):
                return PassthroughCheck("convert", f"a single-level {dims[0]}x{dims[1]} TIFF (no pyramid)")
            return PassthroughCheck("reject", f"OpenSlide sees a single {dims[0]}x{dims[1]} level, not a pyramid")
        problem = read_openslide_pixels(slide)
        if problem:
            return _unreadable(problem)
        extra = len(slide.associated_images)
    return PassthroughCheck("move", f"{vendor} slide, {levels} levels, {dims[0]}x{dims[1]}, a tile read at every level"
                            f" and {extra} associated image(s) read")


def _check_ome(path: Path) -> PassthroughCheck:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return _check_plain_tiff(path, "no OME-XML metadata")
            levels = len(tif.series[0].levels)
            shape = tif.series[0].shape
            problem = read_tifffile_pixels(tif) if levels >= 2 else None
    except Exception as exc:
        return PassthroughCheck("reject", f"tifffile cannot read it as OME-TIFF: {exc}")
    if levels < 2:
        return PassthroughCheck("convert", f"an OME-TIFF without a pyramid ({shape})")
    if problem:
        return _unreadable(problem)
    return PassthroughCheck("move", f"OME-TIFF, {levels} levels, a tile read at every level")


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
