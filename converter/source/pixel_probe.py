"""Where a file's JPEG Pixel Data likely starts, from its bytes alone (no pydicom), and the files of the inputs.

Why: `wsi-node convert` in copy mode starts the kernel copy of the frames before it has read a
header properly (converter.tiff.forked_copier.ForkedCopier), since importing pydicom and reading every
header took ~0.35 s with the disk idle. A guess is enough there: the conversion adopts the copy
only when the ranges its plan copies lie inside the guessed ones (converter.conversion.early_copy),
so a wrong guess costs time, never correctness. The guess: a Part 10 file (PS3.10 7.1: "DICM" at
byte 128) whose Transfer Syntax UID (0002,0010) is JPEG Baseline, whose ImageType (0008,0008) has
VOLUME as value 3 (PS3.3 C.8.12.4.1.1), and whose first encapsulated Pixel Data element header
(7FE0,0010) OB with undefined length, followed by an Item tag (PS3.5 7.5, A.4), lies within the
first 64 MiB. Explicit VR Little Endian encoding is assumed, which every encapsulated transfer
syntax uses (PS3.5 A.4).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0"
_TRANSFER_SYNTAX = b"\x02\x00\x10\x00UI"
_IMAGE_TYPE = b"\x08\x00\x08\x00CS"
_SEARCH = 64 << 20


def iter_files(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly, and every regular file under named folders (hidden names skipped)."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield p


def _short_value(mm: mmap.mmap, tag: bytes, limit: int) -> bytes | None:
    """Value of the first explicit-VR element with a 2-byte length whose header is `tag` (tag + VR), before `limit`."""
    at = mm.find(tag, 0, limit)
    if at < 0:
        return None
    (length,) = struct.unpack_from("<H", mm, at + 6)
    return mm[at + 8 : at + 8 + length]


def jpeg_volume_pixels(path: Path) -> tuple[int, int] | None:
    """(first byte of the Pixel Data value, file size) of a JPEG Baseline VOLUME instance; None when it does not look like one."""
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size < 256:
                return None
            with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if mm[128:132] != b"DICM":
                    return None
                syntax = _short_value(mm, _TRANSFER_SYNTAX, min(size, 64 << 10))
                if syntax is None or syntax.rstrip(b"\0 ").decode("ascii", "replace") != JPEG_BASELINE:
                    return None
                at = mm.find(_PIXEL_DATA, 132, min(size, _SEARCH))
                if at < 0:
                    return None
                image_type = _short_value(mm, _IMAGE_TYPE, at)
                values = (image_type or b"").decode("ascii", "replace").strip("\0 ").split("\\")
                if len(values) < 3 or values[2].strip() != "VOLUME":
                    return None
                return at + 12, size
    except (OSError, ValueError, struct.error):
        return None
