"""Writing one instance: the header with pydicom, then the pixel data element streamed by hand.

Large slides (e.g. 24000 x 18000) must stream. Frames are appended to a temporary pixel-data
file as they are encoded; only when all frames are written, and so the offsets, lengths and
compression ratio are known, is the header written with pydicom and the pixel data element (tag,
Basic Offset Table, items, delimiter) appended by hand. Nothing ever holds a decoded level, nor a
level's encoded frames.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import itemize_frame

from converter.testkit.dataset import _ds
from converter.testkit.spec import _NATIVE


@dataclass
class _PixelStats:
    frames: int = 0
    payload: int = 0  # sum of encoded frame lengths (for the compression ratio)


def _write_instance(
    path: Path,
    ds: Dataset,
    frames: Iterator[bytes],
    *,
    transfer_syntax: str,
    offset_table: str,
    fragments_per_frame: int,
    raw_frame_bytes: int,
    lossy: bool,
) -> None:
    """Stream frames into a temporary file, then write header + pixel data element to ``path``.

    The Basic Offset Table, the Extended Offset Table and the lossy compression ratio all depend
    on every frame's size, which is only known at the end; writing the frames to a side file
    first keeps memory flat and the final file strictly sequential.
    """
    native = transfer_syntax in _NATIVE
    if native and raw_frame_bytes * int(ds.NumberOfFrames) > 0xFFFFFFFE:
        raise ValueError(
            f"{path.name}: native pixel data of {raw_frame_bytes * int(ds.NumberOfFrames)} bytes "
            "exceeds the 4 GiB element limit; use concatenation_parts or a compressed syntax"
        )
    tmp = path.with_name(path.name + ".pixels.tmp")
    stats = _PixelStats()
    item_offsets: list[int] = []  # offset of each frame's first item, after the BOT
    item_sizes: list[int] = []  # bytes of each frame's item(s), incl. headers
    position = 0
    try:
        with open(tmp, "w+b") as side:
            for data in frames:
                stats.frames += 1
                stats.payload += len(data)
                if native:
                    side.write(data)
                    continue
                item_offsets.append(position)
                size = 0
                for item in itemize_frame(data, fragments_per_frame):
                    side.write(item)
                    size += len(item)
                item_sizes.append(size)
                position += size
            total = side.tell()

            if lossy and stats.payload:
                ratio = raw_frame_bytes * stats.frames / stats.payload
                ds.LossyImageCompressionRatio = _ds(round(ratio, 2))
            use_eot = not native and offset_table == "extended"
            if use_eot:
                ds.ExtendedOffsetTable = struct.pack(f"<{len(item_offsets)}Q", *item_offsets)
                # Lengths of each frame's single item value (even-padded), as pydicom writes.
                ds.ExtendedOffsetTableLengths = struct.pack(
                    f"<{len(item_sizes)}Q", *(s - 8 for s in item_sizes)
                )
            ds.save_as(
                path,
                enforce_file_format=True,
                implicit_vr=transfer_syntax == "implicit",
                little_endian=True,
            )
            side.seek(0)
            with open(path, "ab") as out:
                tag = b"\xe0\x7f\x10\x00"
                if native:
                    pad = total % 2
                    if transfer_syntax == "implicit":
                        out.write(tag + struct.pack("<I", total + pad))
                    else:
                        out.write(tag + b"OB\0\0" + struct.pack("<I", total + pad))
                    shutil.copyfileobj(side, out, 1 << 20)
                    if pad:
                        out.write(b"\0")
                    return
                out.write(tag + b"OB\0\0" + b"\xff\xff\xff\xff")
                if offset_table == "basic":
                    if item_offsets and item_offsets[-1] > 0xFFFFFFFF:
                        raise ValueError(
                            f"{path.name}: frame offsets exceed the 32-bit Basic Offset Table; "
                            "use offset_table='extended' or concatenation_parts"
                        )
                    out.write(b"\xfe\xff\x00\xe0" + struct.pack("<I", 4 * len(item_offsets)))
                    out.write(struct.pack(f"<{len(item_offsets)}I", *item_offsets))
                else:  # empty BOT (also required with the Extended Offset Table)
                    out.write(b"\xfe\xff\x00\xe0\x00\x00\x00\x00")
                shutil.copyfileobj(side, out, 1 << 20)
                out.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    finally:
        tmp.unlink(missing_ok=True)
