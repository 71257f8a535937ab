"""A TIFF's image file directories read entry by entry: tags found, large arrays left on disk.

Why: opening a TIFF with tifffile reads every TileOffsets and TileByteCounts value of the first
page into Python tuples (tifffile loads those tags eagerly). A 150,000 px level 0 has ~275,000
tiles: ~0.06 s and ~21 MB per opening, and a conversion opened its output four times (point the
spliced tiles, sum the sizes, verify, colour check) although each step needs a few entries, or
none. Here an IFD is a table of entries (tag, type, count, where the values are); a value is read
when asked for, one array element alone (`item`) or a whole array as numpy (`array`).

TIFF 6.0 section 2 (header, IFD: a 2-byte count, 12-byte entries, the next IFD's offset; a value
of 4 bytes or less sits in the entry itself) and BigTIFF (version 43: 8-byte offsets and counts,
20-byte entries, values of up to 8 bytes inline). Both byte orders.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

# TIFF field types (TIFF 6.0 section 2, BigTIFF): numpy type code, size in bytes.
TYPES: dict[int, tuple[str, int]] = {
    1: ("u1", 1), 2: ("u1", 1), 3: ("u2", 2), 4: ("u4", 4), 5: ("u4", 8), 6: ("i1", 1), 7: ("u1", 1),
    8: ("i2", 2), 9: ("i4", 4), 10: ("i4", 8), 11: ("f4", 4), 12: ("f8", 8), 13: ("u4", 4),
    16: ("u8", 8), 17: ("i8", 8), 18: ("u8", 8),
}
"""RATIONAL (5, 10) are two 4-byte integers per value: `array` returns both, numerator first."""

IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
SAMPLES_PER_PIXEL, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 277, 322, 323, 324, 325
JPEG_TABLES = 347
NAMES = {IMAGE_WIDTH: "ImageWidth", IMAGE_LENGTH: "ImageLength", COMPRESSION: "Compression", PHOTOMETRIC: "Photometric",
         SAMPLES_PER_PIXEL: "SamplesPerPixel", TILE_WIDTH: "TileWidth", TILE_LENGTH: "TileLength",
         TILE_OFFSETS: "TileOffsets", TILE_BYTE_COUNTS: "TileByteCounts", JPEG_TABLES: "JPEGTables"}
MAX_IFDS = 10_000
"""IFDs followed at most: a loop of next-IFD pointers in a damaged file must end."""


class TiffStructureError(ValueError):
    """The file is not a TIFF, or an IFD or entry points outside it."""


@dataclass(frozen=True)
class Entry:
    tag: int
    type: int
    count: int
    at: int
    """File offset of the first value: inside the entry when the values fit there, else where it points."""
    slot: int = 0
    """File offset of the entry itself (12 or 20 bytes: tag, type, count, value or pointer)."""

    def inline(self, big: bool) -> bool:
        """Whether the values sit in the entry (4 bytes in classic TIFF, 8 in BigTIFF) rather than behind a pointer."""
        return self.count * self.itemsize <= (8 if big else 4)

    @property
    def itemsize(self) -> int:
        return TYPES[self.type][1]


class Ifd:
    """One IFD of an open TIFF file: its entries; values read on demand with pread (no file position used)."""

    def __init__(self, fd: int, byteorder: str, offset: int, entries: dict[int, Entry], next_offset: int,
                 stored: int | None = None, listed: list[Entry] | None = None) -> None:
        self.fd, self.byteorder, self.offset, self.entries, self.next_offset = fd, byteorder, offset, entries, next_offset
        self.stored = len(entries) if stored is None else stored
        """Entries stored in the IFD, those of unknown types (skipped below) included."""
        self.listed = list(entries.values()) if listed is None else listed
        """Every entry of a known type in stored order, a repeated tag each time (`entries` keeps its last)."""

    def entry(self, tag: int) -> Entry:
        try:
            return self.entries[tag]
        except KeyError:
            raise TiffStructureError(f"IFD at byte {self.offset} has no tag {NAMES.get(tag, tag)}") from None

    def _dtype(self, entry: Entry) -> np.dtype:
        return np.dtype(self.byteorder + TYPES[entry.type][0])

    def array(self, tag: int) -> np.ndarray:
        """All values of `tag` (native byte order)."""
        e = self.entry(tag)
        n = e.count * (2 if e.type in (5, 10) else 1)
        data = os.pread(self.fd, e.count * e.itemsize, e.at)
        if len(data) != e.count * e.itemsize:
            raise TiffStructureError(f"tag {tag}: its values run past the end of the file")
        return np.frombuffer(data, self._dtype(e), n).astype(self._dtype(e).newbyteorder("="))

    def item(self, tag: int, index: int) -> int:
        """Value `index` of an integer tag, read alone (8 bytes at most, whatever the count)."""
        e = self.entry(tag)
        if not 0 <= index < e.count or e.type in (5, 10, 11, 12):
            raise TiffStructureError(f"tag {tag}: no integer value {index} (count {e.count})")
        data = os.pread(self.fd, e.itemsize, e.at + index * e.itemsize)
        if len(data) != e.itemsize:
            raise TiffStructureError(f"tag {tag}: value {index} lies past the end of the file")
        return int(np.frombuffer(data, self._dtype(e), 1)[0])

    def value(self, tag: int, default: int | None = None) -> int:
        """The first value of an integer tag (ImageWidth, Compression, ...); `default` if absent."""
        if tag not in self.entries:
            if default is None:
                raise TiffStructureError(f"IFD at byte {self.offset} has no tag {tag}")
            return default
        return self.item(tag, 0)

    def raw(self, tag: int) -> bytes:
        """The value bytes of `tag` as stored (JPEGTables, ASCII)."""
        e = self.entry(tag)
        return os.pread(self.fd, e.count * e.itemsize, e.at)


class TiffStructure:
    """The header and IFD chain of a TIFF open for reading (or writing, for `write_values`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        head = os.pread(fd, 16, 0)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            raise TiffStructureError("not a TIFF file (no II/MM byte order mark)")
        self.byteorder = order
        (version,) = struct.unpack(order + "H", head[2:4])
        if version == 42:
            self.big = False
            (self.first,) = struct.unpack(order + "I", head[4:8])
        elif version == 43 and len(head) == 16 and struct.unpack(order + "HH", head[4:8]) == (8, 0):
            self.big = True
            (self.first,) = struct.unpack(order + "Q", head[8:16])
        else:
            raise TiffStructureError(f"not a TIFF or BigTIFF file (version {version})")
        self._offsets: list[int] = []

    def _count_at(self, offset: int) -> int:
        size = 8 if self.big else 2
        data = os.pread(self.fd, size, offset)
        if offset < 8 or len(data) != size:
            raise TiffStructureError(f"an IFD offset {offset} lies outside the file")
        return struct.unpack(self.byteorder + ("Q" if self.big else "H"), data)[0]

    def _next_of(self, offset: int, count: int) -> int:
        head, entry, size = (8, 20, 8) if self.big else (2, 12, 4)
        data = os.pread(self.fd, size, offset + head + count * entry)
        if len(data) != size:
            raise TiffStructureError(f"the IFD at byte {offset} runs past the end of the file")
        return struct.unpack(self.byteorder + ("Q" if self.big else "I"), data)[0]

    def ifd_offset(self, index: int) -> int:
        """File offset of IFD `index` (0-based), following the next-IFD pointers (TIFF 6.0 section 2)."""
        if not self._offsets:
            self._offsets.append(self.first)
        while len(self._offsets) <= index:
            last = self._offsets[-1]
            if last == 0:
                break
            if len(self._offsets) > MAX_IFDS:
                raise TiffStructureError(f"more than {MAX_IFDS} IFDs: a loop of next-IFD offsets?")
            self._offsets.append(self._next_of(last, self._count_at(last)))
        if index >= len(self._offsets) or self._offsets[index] == 0:
            raise TiffStructureError(f"the file has no IFD {index}")
        return self._offsets[index]

    def ifd(self, index: int) -> Ifd:
        offset = self.ifd_offset(index)
        count = self._count_at(offset)
        head, size, inline = (8, 20, 8) if self.big else (2, 12, 4)
        data = os.pread(self.fd, count * size, offset + head)
        if len(data) != count * size:
            raise TiffStructureError(f"the IFD at byte {offset} runs past the end of the file")
        fmt = self.byteorder + ("HHQ8s" if self.big else "HHI4s")
        pointer = self.byteorder + ("Q" if self.big else "I")
        entries: dict[int, Entry] = {}
        listed: list[Entry] = []
        for k in range(count):
            tag, typ, n, value = struct.unpack_from(fmt, data, k * size)
            if typ not in TYPES:
                continue  # an unknown type: readers skip the entry (TIFF 6.0 section 2)
            nbytes = n * TYPES[typ][1]
            at = offset + head + k * size + (size - inline) if nbytes <= inline else struct.unpack(pointer, value)[0]
            if at + nbytes > self.size:
                raise TiffStructureError(f"tag {tag} of the IFD at byte {offset} points past the end of the file")
            entries[tag] = Entry(tag, typ, n, at, offset + head + k * size)
            listed.append(entries[tag])
        return Ifd(self.fd, self.byteorder, offset, entries, self._next_of(offset, count), count, listed)

    def ifds(self) -> list[Ifd]:
        """Every IFD of the chain, in order."""
        out = [self.ifd(0)]
        while out[-1].next_offset:
            out.append(self.ifd(len(out)))
        return out

    def write_values(self, ifd: Ifd, tag: int, values: np.ndarray) -> None:
        """Overwrite the values of `tag` in place: as many values as it has, in its own type (fd open for writing)."""
        e = ifd.entry(tag)
        name = NAMES.get(tag, str(tag))
        if e.type not in (3, 4, 16):
            raise TiffStructureError(f"tag {name} has type {e.type}, not SHORT, LONG or LONG8")
        if e.count != len(values):
            raise ValueError(f"tag {name} has {e.count} values, {len(values)} given")
        dtype = np.dtype(self.byteorder + TYPES[e.type][0])
        if len(values) and int(np.max(values)) > np.iinfo(dtype).max:
            raise ValueError(f"tag {name}: value {int(np.max(values))} does not fit its type; the TIFF must be BigTIFF")
        data = np.asarray(values).astype(dtype).tobytes()
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, memoryview(data)[done:], e.at + done)
