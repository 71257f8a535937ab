"""What a JPEG 2000 / HTJ2K frame says about its colour, read from its main header.

PS3.5 8.2.4: the characteristics explicitly given by the bitstream control decompression, and
the bitstream tells whether the Part 1 multiple component transformation (RCT/ICT) was applied:
SGcod's "multiple component transformation" byte of the COD marker (ISO 15444-1 A.6.1, Table
A.17). SIZ gives the component count and each component's subsampling (XRsiz, YRsiz, A.5.1).
A JP2 file wrapper (which DICOM says must not be sent, 8.2.4 note 4, but writers do) may add a
colour specification box (ISO 15444-1 I.5.3.3: enumerated 16 sRGB, 17 greyscale, 18 sYCC).
Only the main header is read: a few hundred bytes at most.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOC, SIZ, COD, SOT, CAP = 0xFF4F, 0xFF51, 0xFF52, 0xFF90, 0xFF50


@dataclass(frozen=True)
class J2kInfo:
    width: int
    height: int
    components: int
    subsampling: tuple[tuple[int, int], ...]
    """(XRsiz, YRsiz) per component."""
    mct: int
    """COD SGcod multiple component transformation: 0 none, 1 RCT (5/3) or ICT (9/7)."""
    reversible: bool
    """SPcod wavelet: True for the 5/3 reversible filter."""
    high_throughput: bool
    """A CAP marker (ISO 15444-15): an HTJ2K codestream."""
    jp2_colour: int | None = None
    """The JP2 colr box's enumerated colour space, when the frame is a JP2 file."""
    header_length: int = 0
    """Bytes up to the first SOT (the part of the frame every tile shares), 0 if not found."""

    @property
    def chroma_subsampled(self) -> bool:
        return self.components >= 3 and any(s != self.subsampling[0] for s in self.subsampling[1:3])


def _jp2_codestream(data: bytes) -> tuple[bytes, int | None]:
    """The codestream inside a JP2 file, and its colr box's enumerated colour space."""
    pos, colour = 0, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        end = len(data) if length == 0 else pos + length
        if kind == b"jp2h":
            inner = pos + header
            while inner + 8 <= end:
                ln, k = struct.unpack(">I4s", data[inner : inner + 8])
                if k == b"colr" and data[inner + 8] == 1:  # METH 1: enumerated colour space
                    colour = struct.unpack(">I", data[inner + 11 : inner + 15])[0]
                if ln < 8:
                    break
                inner += ln
        elif kind == b"jp2c":
            return data[pos + header : end], colour
        if length < header and length != 0:
            break
        pos = end
    raise ValueError("JP2 file without a contiguous codestream box (jp2c)")


def parse_j2k(data: bytes) -> J2kInfo:
    """Parse SIZ and COD of a raw codestream or a JP2 file; raises ValueError if neither."""
    colour = None
    offset = 0
    if data[4:8] == b"jP  ":
        stream, colour = _jp2_codestream(data)
        offset = len(data) - len(stream) if data.endswith(stream) else 0
        data = stream
    if data[:2] != b"\xff\x4f":
        raise ValueError("not a JPEG 2000 codestream (no SOC marker)")
    pos, siz, cod, ht, header_length = 2, None, None, False, 0
    while pos + 4 <= len(data):
        marker = (data[pos] << 8) | data[pos + 1]
        if marker == SOT:
            header_length = offset + pos
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        seg = data[pos + 4 : pos + 2 + length]
        if marker == SIZ:
            siz = seg
        elif marker == COD:
            cod = seg
        elif marker == CAP:
            ht = True
        if length < 2:
            raise ValueError(f"JPEG 2000 marker {marker:04X} has length {length}")
        pos += 2 + length
    if siz is None or cod is None or len(siz) < 36 or len(cod) < 10:
        raise ValueError("JPEG 2000 main header has no SIZ or COD marker segment")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", siz[2:18])
    n = struct.unpack(">H", siz[34:36])[0]
    sub = tuple((siz[36 + 3 * i + 1], siz[36 + 3 * i + 2]) for i in range(n) if len(siz) >= 39 + 3 * i)
    return J2kInfo(
        width=xsiz - xo,
        height=ysiz - yo,
        components=n,
        subsampling=sub,
        mct=cod[4],
        reversible=cod[9] == 1,
        high_throughput=ht,
        jp2_colour=colour,
        header_length=header_length,
    )
