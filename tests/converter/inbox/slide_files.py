"""Small vendor-format slide files for the passthrough tests, written with tifffile.

Each writer follows the detection rules of OpenSlide's source (openslide/openslide,
src/openslide-vendor-*.c), so OpenSlide opens the files as that vendor's format:

* Aperio SVS (vendor-aperio.c): tiled TIFF whose first ImageDescription starts with "Aperio";
  later tiled directories are levels, strip directories with "label"/"macro" in their
  description are associated images.
* Hamamatsu NDPI (vendor-hamamatsu.c): TIFF with tag 65420 (NDPI_FORMAT_FLAG) in the first
  directory; every directory is one JPEG strip; tag 65421 (source lens) > 0 marks a level (widths
  decreasing), -1 the macro image; tag 65424 (focal plane) 0.
* Leica SCN (vendor-leica.c): tiled TIFF whose ImageDescription is XML in the
  http://www.leica-microsystems.com/scn/2010/10/01 namespace: scn/collection/image/view and
  pixels/dimension elements naming each level's IFD; brightfield illumination.
* OME-TIFF: tifffile's own OME writer with the pyramid in SubIFDs (OpenSlide cannot read it).
* Generic tiled TIFF (vendor-generic-tiff.c): tiled directories of decreasing size.

:func:`corrupt_tile` damages one tile's JPEG header in place, so the file still opens but that
tile fails to decode ("Bogus marker length"), as in the .svs from the field.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tifffile

SCN_NS = "http://www.leica-microsystems.com/scn/2010/10/01"


def tissue(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A pink-on-white RGB image with texture (so JPEG tiles are not trivial)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    blob = ((x - width / 2) ** 2 / (width / 3) ** 2 + (y - height / 2) ** 2 / (height / 3) ** 2) < 1
    img = np.full((height, width, 3), 240, np.uint8)
    noise = rng.integers(0, 40, (height, width), dtype=np.uint8)
    img[blob] = np.stack([200 - noise, 120 - noise, 170 - noise], axis=-1)[blob]
    return img


def pyramid(width: int, height: int, levels: int) -> list[np.ndarray]:
    base = tissue(width, height)
    return [np.ascontiguousarray(base[:: 2**k, :: 2**k]) for k in range(levels)]


def write_svs(path: Path, width: int = 1536, height: int = 1024, levels: int = 3) -> Path:
    imgs = pyramid(width, height, levels)
    with tifffile.TiffWriter(path) as tw:
        desc = f"Aperio Image Library v12.0.15\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"
        tw.write(imgs[0], tile=(256, 256), compression="jpeg", photometric="rgb", description=desc, metadata=None)
        tw.write(tissue(192, 128, 5), compression="jpeg", photometric="rgb", rowsperstrip=16,  # directory 1: thumbnail
                 description="Aperio Image Library v12.0.15\n192x128 -> thumbnail", metadata=None)
        for img in imgs[1:]:
            tw.write(img, tile=(256, 256), compression="jpeg", photometric="rgb", description="Aperio Image Library", metadata=None)
        tw.write(tissue(300, 200, 1), compression="lzw", photometric="rgb", rowsperstrip=16, subfiletype=1,
                 description="Aperio Image Library v12.0.15\nlabel 300x200", metadata=None)
        tw.write(tissue(600, 240, 2), compression="jpeg", photometric="rgb", rowsperstrip=16, subfiletype=9,
                 description="Aperio Image Library v12.0.15\nmacro 600x240", metadata=None)
    return path


def write_generic_tiff(path: Path, width: int = 1536, height: int = 1024, levels: int = 3) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for k, img in enumerate(pyramid(width, height, levels)):
            tw.write(img, tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1 if k else 0, metadata=None)
    return path


def write_ome(path: Path, width: int = 1536, height: int = 1024, levels: int = 3) -> Path:
    imgs = pyramid(width, height, levels)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(imgs[0], subifds=levels - 1, tile=(256, 256), compression="jpeg", photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for img in imgs[1:]:
            tw.write(img, subfiletype=1, tile=(256, 256), compression="jpeg", photometric="rgb")
    return path


def write_ndpi(path: Path, width: int = 1024, height: int = 768, levels: int = 3) -> Path:
    imgs = pyramid(width, height, levels)
    with tifffile.TiffWriter(path) as tw:
        for k, img in enumerate(imgs):
            tags = [(65420, 4, 1, 1, True), (65421, 11, 1, 20.0 / 2**k, True), (65424, 9, 1, 0, True)]
            tw.write(img, compression="jpeg", photometric="rgb", rowsperstrip=img.shape[0], extratags=tags, metadata=None)
        macro = tissue(512, 192, 3)
        tags = [(65420, 4, 1, 1, True), (65421, 11, 1, -1.0, True), (65424, 9, 1, 0, True)]
        tw.write(macro, compression="jpeg", photometric="rgb", rowsperstrip=macro.shape[0], extratags=tags, metadata=None)
    return path


def write_scn(path: Path, width: int = 1536, height: int = 1024, levels: int = 3) -> Path:
    imgs = pyramid(width, height, levels)
    macro = tissue(400, 200, 4)
    nm = 500  # nm per pixel at level 0
    dims = "".join(f'<dimension sizeX="{im.shape[1]}" sizeY="{im.shape[0]}" r="{k}" ifd="{k + 1}"/>' for k, im in enumerate(imgs))
    coll_w, coll_h = width * nm * 4, height * nm * 4
    xml = (
        f'<?xml version="1.0"?><scn xmlns="{SCN_NS}"><collection name="test" sizeX="{coll_w}" sizeY="{coll_h}">'
        f'<barcode>dGVzdA==</barcode>'
        f'<image name="macro"><creationDate>2026-01-01T00:00:00Z</creationDate><device model="Leica SCN400" version="1.5"/>'
        f'<pixels sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}"><dimension sizeX="{macro.shape[1]}" sizeY="{macro.shape[0]}" r="0" ifd="0"/></pixels>'
        f'<view sizeX="{coll_w}" sizeY="{coll_h}" offsetX="0" offsetY="0"/>'
        f'<scanSettings><objectiveSettings><objective>0</objective></objectiveSettings>'
        f'<illuminationSettings><numericalAperture>0</numericalAperture><illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings></image>'
        f'<image name="main"><creationDate>2026-01-01T00:00:00Z</creationDate><device model="Leica SCN400" version="1.5"/>'
        f'<pixels sizeX="{width}" sizeY="{height}">{dims}</pixels>'
        f'<view sizeX="{width * nm}" sizeY="{height * nm}" offsetX="{nm * 100}" offsetY="{nm * 100}"/>'
        f'<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>'
        f'<illuminationSettings><numericalAperture>0.7</numericalAperture><illuminationSource>brightfield</illuminationSource></illuminationSettings></scanSettings></image>'
        f'</collection></scn>'
    )
    with tifffile.TiffWriter(path) as tw:
        tw.write(macro, tile=(256, 256), compression="jpeg", photometric="rgb", description=xml, metadata=None)
        for img in imgs:
            tw.write(img, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
    return path


def _classic_tiff_strips(path: Path, page: int) -> tuple[list[int], list[int]]:
    """StripOffsets and StripByteCounts of directory `page` of a little-endian classic TIFF, read
    by hand (tifffile takes a file with tag 65420 for a 64-bit NDPI and misreads it)."""
    data = path.read_bytes()
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for _ in range(page):
        n = struct.unpack_from("<H", data, ifd)[0]
        ifd = struct.unpack_from("<I", data, ifd + 2 + 12 * n)[0]
    n = struct.unpack_from("<H", data, ifd)[0]
    values: dict[int, list[int]] = {}
    for i in range(n):
        tag, typ, count, value = struct.unpack_from("<HHII", data, ifd + 2 + 12 * i)
        if tag in (273, 279):
            size = {3: 2, 4: 4}[typ]
            fmt = {3: "H", 4: "I"}[typ]
            if count * size <= 4:
                values[tag] = list(struct.unpack_from(f"<{count}{fmt}", data, ifd + 2 + 12 * i + 8))
            else:
                values[tag] = list(struct.unpack_from(f"<{count}{fmt}", data, value))
    return values[273], values[279]


def corrupt_tile(path: Path, page: int | None = None, level: int | None = None, segment: int | None = None,
                 where: str = "header", raw_page: int | None = None) -> None:
    """Break one tile/strip (the middle tile by default) of directory `page`, of pyramid `level` as
    tifffile sees it (OME SubIFDs), or of directory `raw_page` located by hand (NDPI).
    ``where="header"``: the frame header (SOF) gets the impossible length 1, so every decoder fails
    ("Bogus marker length" / bad length); ``"data"``: EOI markers in the middle of the entropy-coded
    data (for NDPI, whose JPEG headers OpenSlide checks when it opens the file)."""
    if raw_page is not None:
        offsets, counts = _classic_tiff_strips(path, raw_page)
        index = len(offsets) // 2 if segment is None else segment
    else:
        with tifffile.TiffFile(path) as tif:
            p = tif.pages[page] if page is not None else tif.series[0].levels[level].keyframe
            offsets, counts = p.dataoffsets, p.databytecounts
            if segment is None and p.is_tiled:
                across = -(-p.imagewidth // p.tilewidth)
                down = -(-p.imagelength // p.tilelength)
                segment = (down // 2) * across + across // 2
            index = len(offsets) // 2 if segment is None else segment
    offset, count = offsets[index], counts[index]
    with open(path, "r+b") as fp:
        fp.seek(offset)
        tile = fp.read(count)
        assert tile[:2] == b"\xff\xd8", f"not a JPEG segment at {offset}: {tile[:4]!r}"
        if where == "header":
            sof = tile.find(b"\xff\xc0")
            assert sof > 0, "no SOF0 marker in the segment"
            fp.seek(offset + sof + 2)
            fp.write(b"\x00\x01")
        else:
            fp.seek(offset + count // 2)
            fp.write(b"\xff\xd9" * 8)
