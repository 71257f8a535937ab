"""A TIFF structure written on its own, moved behind the pixel data of the output file.

Why: with the structure (IFDs, tags, associated images) at the front, a copied level's bytes
can only be placed once the structure's size is known, that is after the series is planned and
the structure written; the disk sat idle that long (about 0.4 s of a 3-4 s copy at 150,000 px).
TIFF lets the first IFD be anywhere after the 8- or 16-byte header (TIFF 6.0 section 2, "The
first IFD may be at any location in the file after the header"; BigTIFF likewise), as libtiff
itself writes a directory after its image data. So tifffile writes the structure to a file of its
own, the pixel data goes to the output from byte 16 on, and the structure is appended behind it
here with every file offset inside it moved by the same amount: each out-of-line value's pointer,
each next-IFD pointer, the header's first-IFD pointer, and the values of the tags that are file
offsets. Tags whose values are offsets not understood here (SubIFDs, EXIF/GPS IFDs, old-style
JPEG tables) are refused rather than left pointing at the wrong bytes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from converter.tiff.ifd import TYPES, TiffStructure, TiffStructureError
from converter.tiff.copier import HEADER, copy_range

STRIP_OFFSETS, TILE_OFFSETS = 273, 324
OFFSET_TAGS = {STRIP_OFFSETS, TILE_OFFSETS}
"""Tags whose values are file offsets (TIFF 6.0): moved with the structure."""
REFUSED_TAGS = {288: "FreeOffsets", 330: "SubIFDs", 513: "JPEGInterchangeFormat", 519: "JPEGQTables",
                520: "JPEGDCTables", 521: "JPEGACTables", 34665: "ExifIFD", 34853: "GPSIFD", 40965: "InteroperabilityIFD"}


def _moved(value: int, shift: int, limit: int) -> int:
    if value + shift > limit:
        raise OverflowError("an offset passes 4 GiB: the structure must be written as BigTIFF")
    return value + shift


def patches(structure: Path, shift: int) -> list[tuple[int, bytes]]:
    """(position in the structure file, new bytes) for every offset inside it, moved by `shift`; the header's included.

    OverflowError: a classic TIFF would need an offset past 4 GiB (nothing was written).
    """
    fd = os.open(structure, os.O_RDONLY)
    try:
        tiff = TiffStructure(fd)
        ifds = tiff.ifds()
        order, big = tiff.byteorder, tiff.big
        pointer = order + ("Q" if big else "I")
        limit = (1 << 64) - 1 if big else (1 << 32) - 1
        inline_at, head, size = (12, 8, 20) if big else (8, 2, 12)
        out = [(8 if big else 4, struct.pack(pointer, _moved(tiff.first, shift, limit)))]
        for ifd in ifds:
            if ifd.stored != len(ifd.listed):
                raise TiffStructureError(f"the IFD at byte {ifd.offset} has entries of unknown types; their offsets cannot be moved")
            for entry in ifd.listed:
                if entry.tag in REFUSED_TAGS:
                    raise TiffStructureError(f"tag {REFUSED_TAGS[entry.tag]} holds file offsets wsi-node does not move")
                if not entry.inline(big):
                    out.append((entry.slot + inline_at, struct.pack(pointer, _moved(entry.at, shift, limit))))
                if entry.tag in OFFSET_TAGS and entry.count:
                    dtype = np.dtype(order + TYPES[entry.type][0])
                    values = np.frombuffer(os.pread(fd, entry.count * dtype.itemsize, entry.at), dtype).astype(np.uint64)
                    _moved(int(values.max()), shift, limit)
                    out.append((entry.at, (values + np.uint64(shift)).astype(dtype).tobytes()))
            if ifd.next_offset:
                out.append((ifd.offset + head + ifd.stored * size, struct.pack(pointer, _moved(ifd.next_offset, shift, limit))))
    finally:
        os.close(fd)
    return out


def _write(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        done += os.pwrite(fd, view[done:], offset + done)


def move_structure(structure: Path, fd: int, at: int) -> None:
    """Append the TIFF file `structure` at byte `at` of the open output `fd`, its offsets moved, and write the header at 0.

    The structure's bytes are copied by the kernel (tiles written inline by tifffile may be
    large), then its offsets are overwritten in place; its own first 16 bytes go along unreferenced.
    OverflowError: a classic TIFF would need an offset past 4 GiB (nothing was written).
    """
    fixes = patches(structure, at)
    src = os.open(structure, os.O_RDONLY)
    try:
        head = os.pread(src, HEADER, 0)
        copy_range(src, fd, 0, os.fstat(src).st_size, at, str(structure))
    finally:
        os.close(src)
    header = bytearray(head[:HEADER if head[2:4] in (b"+\0", b"\0+") else 8])
    for pos, data in fixes:
        _write(fd, data, at + pos)
        if pos + len(data) <= len(header):  # the header's first-IFD pointer
            header[pos : pos + len(data)] = data
    _write(fd, bytes(header), 0)
