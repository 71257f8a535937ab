"""The sRGB ICC profile that colour instances carry in OpticalPathSequence[0].

Built byte by byte, so that it is the same on every machine and in every run (see
:func:`srgb_icc_profile` for why no library profile is used).
"""

from __future__ import annotations

import functools
import struct

import numpy as np


@functools.lru_cache(maxsize=1)
def srgb_icc_profile() -> bytes:
    """A minimal, valid ICC v2 display profile for sRGB, built byte by byte.

    Why not Pillow's ``ImageCms.createProfile("sRGB")``: LittleCMS stamps the creation time into
    the header, which breaks byte-identical output, and Pillow is not a declared dependency.
    Content: D50-adapted sRGB colorants, the sRGB tone curve sampled at 1024 points (one shared
    curve for R, G and B), D50 white point.
    """

    def s15f16(x: float) -> bytes:
        return struct.pack(">i", int(round(x * 65536)))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15f16(x) + s15f16(y) + s15f16(z)

    def desc(text: str) -> bytes:
        a = text.encode("ascii") + b"\0"
        # textDescriptionType: ASCII, empty Unicode, empty ScriptCode (67 byte field).
        return (
            b"desc\0\0\0\0" + struct.pack(">I", len(a)) + a + b"\0" * 8 + b"\0\0" + b"\0" + b"\0" * 67
        )

    def text(t: str) -> bytes:
        return b"text\0\0\0\0" + t.encode("ascii") + b"\0"

    x = np.linspace(0.0, 1.0, 1024)
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    curve = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(lin * 65535).astype(">u2").tobytes()

    tags: list[tuple[bytes, bytes]] = [
        (b"desc", desc("sRGB (wsi-node synthetic)")),
        (b"cprt", text("No copyright, use freely")),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4360747, 0.2225045, 0.0139322)),
        (b"gXYZ", xyz(0.3850649, 0.7168786, 0.0971045)),
        (b"bXYZ", xyz(0.1430804, 0.0606169, 0.7141733)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, data, placed = [], b"", {}
    for sig, payload in tags:
        if payload in placed:  # share identical data (the three TRCs)
            entries.append((sig, placed[payload], len(payload)))
            continue
        while (offset + len(data)) % 4:
            data += b"\0"
        placed[payload] = offset + len(data)
        entries.append((sig, placed[payload], len(payload)))
        data += payload
    while len(data) % 4:
        data += b"\0"
    body = struct.pack(">I", len(entries)) + b"".join(
        sig + struct.pack(">II", off, size) for sig, off, size in entries
    )
    size = 128 + len(body) + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"  # preferred CMM
        + bytes([2, 0x10, 0, 0])  # version 2.1
        + b"mntr"
        + b"RGB "
        + b"XYZ "
        + struct.pack(">6H", 2024, 1, 2, 3, 4, 5)
        + b"acsp"
        + b"\0" * 4  # platform
        + b"\0" * 4  # flags
        + b"\0" * 4  # manufacturer
        + b"\0" * 4  # model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # perceptual intent
        + s15f16(0.9642)
        + s15f16(1.0)
        + s15f16(0.8249)
        + b"\0" * 4  # creator
        + b"\0" * 16  # profile ID (v4 only)
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + body + data
