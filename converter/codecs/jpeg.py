"""What a JPEG bitstream really holds, read from its markers.

DICOM writers label frames with a PhotometricInterpretation that is often
wrong (Google's wsi2dcm labels JFIF YCbCr frames "RGB"), and readers that
trust the label show salmon-coloured slides. When frames are copied byte for
byte into a TIFF, the TIFF tags must describe the bitstream, so we read the
colour space and chroma sampling from the JPEG markers themselves, using the
same rules as libjpeg: a JFIF APP0 marker or component ids 1,2,3 mean YCbCr;
an Adobe APP14 marker with transform 0, or component ids 'R','G','B', mean
RGB.

The same marker walk serves lossless JPEG (SOF3) and JPEG-LS (SOF55, ISO 14495-1), whose
decoders never convert colour: for those the component ids, a SPIFF header's colour space
(ISO 14495-1 / 10918-3 F.2.1) and an HP colour-transform APP8 ("mrfx") are returned as facts
for converter.codecs.colour to decide with.
"""

from __future__ import annotations

from dataclasses import dataclass

# Start-of-frame markers and whether they are baseline sequential DCT.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    precision: int
    baseline: bool
    """SOF0 (baseline) or SOF1 (extended sequential, 8-bit): TIFF readers decode these."""
    colorspace: str
    """'YCbCr', 'RGB' or 'gray': what the decoder will treat the samples as."""
    subsampling: tuple[int, int]
    """Horizontal and vertical luma/chroma ratio, as TIFF's YCbCrSubSampling."""
    jfif: bool
    adobe_transform: int | None
    component_ids: tuple[int, ...] = ()
    sof: int = 0xC0
    """The start-of-frame marker's second byte: 0xC0 baseline, 0xC3 lossless, 0xF7 JPEG-LS."""
    spiff_colour: int | None = None
    """A SPIFF header's colour space (10 RGB, 3 YCbCr BT.601 full range, 8 greyscale)."""
    hp_transform: int | None = None
    """JPEG-LS HP colour transform id from an APP8 "mrfx" segment (CharLS), if any."""


def _u16(data: bytes, pos: int) -> int:
    return (data[pos] << 8) | data[pos + 1]


_CACHE: dict[bytes, JpegInfo] = {}


def parse_jpeg(data: bytes) -> JpegInfo:
    """Parse the header of a JPEG bitstream up to its first scan.

    Frames of one level usually share their header byte for byte, so results
    are cached by header. Raises ValueError when the bytes are not JPEG.
    """
    end = data.find(b"\xff\xda", 2, 4096)
    if end > 0:
        header = data[:end]
        info = _CACHE.get(header)
        if info is None:
            info = _parse(data)
            if len(_CACHE) > 256:
                _CACHE.clear()
            _CACHE[header] = info
        return info
    return _parse(data)


def _parse(data: bytes) -> JpegInfo:
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ValueError("not a JPEG bitstream (no SOI marker)")
    pos = 2
    jfif = False
    adobe_transform: int | None = None
    spiff_colour: int | None = None
    hp_transform: int | None = None
    sof: tuple[int, bytes] | None = None
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = _u16(data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and segment[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker == 0xE8 and segment[:6] == b"SPIFF\x00" and len(segment) >= 19:
            spiff_colour = segment[18]
        elif marker == 0xE8 and segment[:4] == b"mrfx" and len(segment) >= 5:
            hp_transform = segment[4]
        elif marker in _SOF_MARKERS:
            sof = (marker, segment)
        elif marker == 0xDA:  # start of scan: header is over
            break
        pos += 2 + length
    if sof is None:
        raise ValueError("JPEG bitstream has no start-of-frame marker")
    marker, seg = sof
    precision = seg[0]
    height = _u16(seg, 1)
    width = _u16(seg, 3)
    ncomp = seg[5]
    ids = []
    factors = []
    for i in range(ncomp):
        base = 6 + 3 * i
        ids.append(seg[base])
        factors.append((seg[base + 1] >> 4, seg[base + 1] & 0x0F))
    if ncomp == 1:
        colorspace = "gray"
        subsampling = (1, 1)
    else:
        colorspace = _colorspace(ncomp, ids, jfif, adobe_transform)
        h_max = max(f[0] for f in factors)
        v_max = max(f[1] for f in factors)
        h_min = min(f[0] for f in factors[1:3])
        v_min = min(f[1] for f in factors[1:3])
        subsampling = (h_max // max(h_min, 1), v_max // max(v_min, 1))
    return JpegInfo(
        width=width,
        height=height,
        components=ncomp,
        precision=precision,
        baseline=marker in (0xC0, 0xC1) and precision == 8,
        colorspace=colorspace,
        subsampling=subsampling,
        jfif=jfif,
        adobe_transform=adobe_transform,
        component_ids=tuple(ids),
        sof=marker,
        spiff_colour=spiff_colour,
        hp_transform=hp_transform,
    )


def _colorspace(ncomp: int, ids: list[int], jfif: bool, adobe: int | None) -> str:
    """libjpeg's default_decompress_parms rules for 3-component images."""
    if ncomp != 3:
        return "other"
    if jfif:
        return "YCbCr"
    if adobe is not None:
        return "RGB" if adobe == 0 else "YCbCr"
    if ids == [1, 2, 3]:
        return "YCbCr"
    if ids == [ord("R"), ord("G"), ord("B")]:
        return "RGB"
    return "YCbCr"
