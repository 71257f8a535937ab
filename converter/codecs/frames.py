"""Decoding source frames and encoding output tiles.

Decoding follows the bitstream, not the DICOM label, wherever the bitstream
says what it is: every frame's header is parsed (converter.codecs.jpeg, .j2k)
and converter.codecs.colour decides what its decoded samples are. Output
tiles are RGB JPEG (Adobe marker, no colour transform, no chroma
subsampling) written by libjpeg-turbo through imagecodecs, because libvips
8.18's rgbjpeg option mislabels subsampled YCbCr as RGB below quality 90.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import imagecodecs
import numpy as np

from converter.codecs import colour
from converter.codecs.colour import ColourDecision
from converter.codecs.j2k import J2kInfo, parse_j2k
from converter.codecs.jpeg import JpegInfo, parse_jpeg
from converter.errors import DecodeError
from converter.source.instance import WsiInstance

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_JPEG_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_J2K = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
SUPPORTED_TRANSFER_SYNTAXES = _JPEG | _JPEG_LOSSLESS | _JPEG_LS | _J2K | _NATIVE

TRANSFER_SYNTAX_NAMES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}


def ts_name(uid: str) -> str:
    return TRANSFER_SYNTAX_NAMES.get(uid, uid)


def ycbcr_to_rgb(a: np.ndarray) -> np.ndarray:
    """Full-range YCbCr (JFIF, DICOM YBR_FULL) to RGB."""
    y = a[..., 0].astype(np.float32)
    cb = a[..., 1].astype(np.float32) - 128.0
    cr = a[..., 2].astype(np.float32) - 128.0
    rgb = np.stack((y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _as_3d(a: np.ndarray) -> np.ndarray:
    return a[..., np.newaxis] if a.ndim == 2 else a


_FACTS_CACHE: dict[tuple[str, bytes], JpegInfo | J2kInfo] = {}


def frame_facts(transfer_syntax: str, data: bytes) -> JpegInfo | J2kInfo | None:
    """The frame's colour facts from its own header (None for native frames).

    Frames of a level usually share their header byte for byte, so J2K results are cached by
    main header (parse_jpeg caches its own).
    """
    fam = colour.family(transfer_syntax)
    if fam in ("jpeg", "jpeg-lossless", "jpeg-ls"):
        return parse_jpeg(data)
    if fam != "j2k":
        return None
    sot = data.find(b"\xff\x90", 0, 2048)
    key = (transfer_syntax, data[:sot]) if sot > 0 else None
    info = _FACTS_CACHE.get(key) if key else None
    if info is None:
        info = parse_j2k(data)
        if key:
            if len(_FACTS_CACHE) > 256:
                _FACTS_CACHE.clear()
            _FACTS_CACHE[key] = info
    return info


def frame_colour(data: bytes, instance: WsiInstance, frame: int = 0) -> ColourDecision:
    """The colour decision for one frame (converter.codecs.colour's rules on its header)."""
    ts = instance.transfer_syntax
    try:
        facts = frame_facts(ts, data) if ts not in _NATIVE else None
    except ValueError as exc:
        raise DecodeError(
            f"{instance.path}: frame {frame + 1} ({ts_name(ts)}) cannot be decoded: its header cannot be read ({exc}).",
            "The file is corrupt or truncated; send or copy it again.",
        ) from exc
    return colour.decide(ts, instance.photometric, facts, instance.samples_per_pixel)


def decode_frame(data: bytes, instance: WsiInstance, frame: int = 0) -> np.ndarray:
    """Decode one frame to an (rows, columns, samples) uint8 array in RGB or grayscale."""
    return decode_frame_colour(data, instance, frame)[0]


def decode_frame_colour(data: bytes, instance: WsiInstance, frame: int = 0) -> tuple[np.ndarray, ColourDecision | None]:
    """Decode one frame by the colour decision for its own bitstream; returns pixels and decision."""
    ts = instance.transfer_syntax
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise DecodeError(
            f"{instance.path}: transfer syntax {ts} is not supported.",
            "Re-export the slide as JPEG Baseline, JPEG 2000, JPEG-LS or uncompressed.",
        )
    decision = frame_colour(data, instance, frame)
    if decision.decided == colour.UNSUPPORTED:
        raise DecodeError(
            f"{instance.path}: frame {frame + 1}: {decision.why}.",
            "Re-export the slide with RGB or YBR_FULL pixels, or a compressed transfer syntax.",
        )
    ybr = decision.decided == colour.YBR
    try:
        if ts in _JPEG:
            if decision.decided == colour.GRAY:
                out = imagecodecs.jpeg8_decode(data)
            else:  # libjpeg converts; tell it what the components are rather than let it guess
                out = imagecodecs.jpeg8_decode(data, colorspace="YCBCR" if ybr else "RGB", outcolorspace="RGB")
            ybr = False
        elif ts in _JPEG_LOSSLESS:
            out = imagecodecs.ljpeg_decode(data)
        elif ts in _JPEG_LS:
            out = imagecodecs.jpegls_decode(data)
        elif ts in _J2K:
            out = imagecodecs.jpeg2k_decode(data)
        else:
            spp = instance.samples_per_pixel
            shape = (spp, instance.tile_height, instance.tile_width) if instance.planar_configuration == 1 and spp > 1 else (instance.tile_height, instance.tile_width, spp)
            out = np.frombuffer(data, np.uint8, count=int(np.prod(shape))).reshape(shape)
            if instance.planar_configuration == 1 and spp > 1:
                out = np.ascontiguousarray(out.transpose(1, 2, 0))
    except Exception as exc:  # imagecodecs raises its own error types per codec
        raise DecodeError(
            f"{instance.path}: frame {frame + 1} ({ts_name(ts)}) cannot be decoded: {exc}.",
            "The file is corrupt or truncated; send or copy it again.",
        ) from exc
    out = _as_3d(np.asarray(out))
    if out.dtype != np.uint8:
        raise DecodeError(
            f"{instance.path}: frame {frame + 1} has {out.dtype.itemsize * 8}-bit samples; only 8-bit slides are supported.",
            "Re-export the slide with 8 bits per sample.",
        )
    if out.shape[0] != instance.tile_height or out.shape[1] != instance.tile_width:
        raise DecodeError(
            f"{instance.path}: frame {frame + 1} is {out.shape[1]}x{out.shape[0]} px but the header says {instance.tile_width}x{instance.tile_height}"
            + (" (its chroma components are subsampled, which this decoder does not upsample)" if "subsampled" in decision.bitstream and "chroma" in decision.bitstream else "")
            + ".",
            "Re-export the slide without chroma subsampling, or as JPEG Baseline.",
        )
    if ybr and out.shape[2] == 3:
        out = ycbcr_to_rgb(out)
    return out, decision


def encode_tile(tile: np.ndarray, quality: int) -> bytes:
    """Encode an (h, w, 3) RGB tile as RGB JPEG, or (h, w, 1) as grayscale JPEG."""
    if tile.shape[2] == 1:
        return imagecodecs.jpeg8_encode(tile[..., 0], level=quality)
    return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="RGB", subsampling="444")


TISSUE_THRESHOLD = 220
"""A pixel is tissue when its darkest channel is below this (background is near white)."""


MIN_TISSUE_PIXELS = 64
"""Fewer tissue pixels than this and the whole tile is compared (a background tile)."""


class _Scratch(threading.local):
    """Per-thread buffers reused from tile to tile.

    Why: on this kind of VM the first touch of freshly allocated memory is slow (page faults),
    and glibc hands large freed blocks back to the kernel; three new 0.8 MB arrays per check
    cost more than the arithmetic on them.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, size: int) -> np.ndarray:
        buf = self.buffers.get(name)
        if buf is None or buf.size != size:
            buf = np.empty(size, np.uint8)
            if size <= _SCRATCH_MAX:
                self.buffers[name] = buf
        return buf


_SCRATCH_MAX = 4 << 20
_scratch = _Scratch()


@dataclass(frozen=True)
class Tissue:
    """The pixels of a tile that the fidelity check counts, found once per tile.

    `keep` is 0 or 1 for every sample (the tile's own layout, flattened): 1 for all samples
    of a pixel whose darkest channel is below TISSUE_THRESHOLD. None: every pixel counts
    (fewer than MIN_TISSUE_PIXELS are tissue, or all are). `pixels`: how many pixels count.
    It lives in a per-thread buffer: valid until the next tissue_of in the same thread.
    """

    keep: np.ndarray | None
    pixels: int


def tissue_of(b: np.ndarray) -> Tissue:
    """Which pixels of `b` (h, w, channels) are tissue, with contiguous passes only.

    A pixel is tissue when any channel is below the threshold. Taking the darkest channel
    (strided reads) and spreading the answer back to the channels (strided writes) cost 2-3x
    this: `lt` marks the samples below the threshold; `first[k]` ORs lt[k .. k+c-1], which
    is the pixel's answer where k is a pixel's first sample; keeping those positions only and
    ORing in copies shifted by 1 .. c-1 gives every sample its pixel's answer.
    """
    channels = b.shape[-1]
    flat = b.reshape(-1)
    size = flat.size
    pixels = size // channels if channels else 0
    if size == 0 or int(flat.min()) >= TISSUE_THRESHOLD:  # no tissue at all (one read, no writes)
        return Tissue(None, pixels)
    lt = np.less(flat, TISSUE_THRESHOLD, out=_scratch.get("lt", size).view(bool)).view(np.uint8)
    if channels == 1:
        keep = lt
        n = int(np.count_nonzero(keep))
    else:
        head = size - channels + 1  # positions with a whole pixel starting at or after them
        first = _scratch.get("first", size)
        first[head:] = 0
        np.bitwise_or(lt[:head], lt[1 : head + 1], out=first[:head])
        for j in range(2, channels):
            np.bitwise_or(first[:head], lt[j : head + j], out=first[:head])
        np.bitwise_and(first, _pixel_starts(channels, size), out=first)
        n = int(np.count_nonzero(first))
        if n < MIN_TISSUE_PIXELS or n == pixels:  # background, or tissue everywhere: every pixel counts
            return Tissue(None, pixels)
        keep = _scratch.get("keep", size)
        keep[0] = first[0]
        np.bitwise_or(first[1:], first[:-1], out=keep[1:])
        for j in range(2, channels):
            np.bitwise_or(keep[j:], first[: size - j], out=keep[j:])
    if n < MIN_TISSUE_PIXELS or n == pixels:
        return Tissue(None, pixels)
    return Tissue(keep, n)


_STARTS: dict[tuple[int, int], np.ndarray] = {}


def _pixel_starts(channels: int, size: int) -> np.ndarray:
    """1 at every pixel's first sample, 0 elsewhere (cached by shape: tiles share a few sizes)."""
    key = (channels, size)
    starts = _STARTS.get(key)
    if starts is None:
        starts = np.zeros(size, np.uint8)
        starts[::channels] = 1
        if len(_STARTS) > 16:
            _STARTS.clear()
        _STARTS[key] = starts
    return starts


def _channel_sums(flat: np.ndarray, channels: int) -> np.ndarray:
    """Exact per-channel sums of interleaved uint8 samples, without a strided reduction.

    Rows of 256 pixels are summed column-wise (contiguous, vectorised) and the 256 columns of
    each channel folded last; a strided sum over axis 0 of (pixels, channels) took 20x longer.
    """
    width = channels * 256
    rows = flat.size // width
    whole = rows * width
    acc = np.uint32 if rows * 255 < 1 << 32 else np.uint64
    sums = np.add.reduce(flat[:whole].reshape(rows, width), axis=0, dtype=acc).reshape(256, channels).sum(axis=0, dtype=np.uint64)
    if whole < flat.size:
        sums += flat[whole:].reshape(-1, channels).sum(axis=0, dtype=np.uint64)
    return sums


def mad_per_channel(a: np.ndarray, b: np.ndarray, tissue: Tissue | None = None) -> float:
    """Largest per-channel mean absolute difference, over tissue pixels of `b` when there are enough.

    Written for speed (it runs on every re-encoded tile, and cost more than the JPEG encode
    itself): integer arithmetic only, in per-thread buffers: |a - b| as max - min in uint8,
    zeroed outside the tissue (`tissue`, from tissue_of(b), found once per tile by the
    caller, or here), and exact integer sums per channel (no float conversion, no BLAS,
    whose threads fought the worker threads for the two cores).
    """
    channels = b.shape[-1]
    if b.size == 0 or channels == 0:
        return 0.0
    if tissue is None:
        tissue = tissue_of(b)
    fa, fb = a.reshape(-1), b.reshape(-1)
    diff = np.maximum(fa, fb, out=_scratch.get("diff", fb.size))
    np.subtract(diff, np.minimum(fa, fb, out=_scratch.get("low", fb.size)), out=diff)
    if tissue.keep is not None:
        np.multiply(diff, tissue.keep, out=diff)
    return float(_channel_sums(diff, channels).max()) / tissue.pixels


def _decode_check(data: bytes, tile: np.ndarray) -> np.ndarray:
    """Decode a just-encoded tile into a per-thread buffer shaped like it (no new array per tile)."""
    h, w, c = tile.shape
    out = _scratch.get("decoded", tile.size).reshape((h, w) if c == 1 else (h, w, c))
    decoded = imagecodecs.jpeg8_decode(data, out=out)
    return decoded[..., np.newaxis] if decoded.ndim == 2 else decoded


def encode_checked(tile: np.ndarray, quality: int, max_mad: float | None) -> tuple[bytes, int]:
    """Encode a tile and check it against its own pixels, raising the quality until it is faithful.

    JPEG at a given quality loses more on dense, high-frequency tissue (lower
    pyramid levels especially); rather than publish a tile that differs from
    the source by more than `max_mad`, we spend bytes on that tile only.
    Returns the bitstream and the quality used. The tile's tissue is found once,
    whatever the number of attempts.
    """
    key = _uniform_key(tile, quality, max_mad)
    if key is not None:
        known = _UNIFORM.get(key)
        if known is not None:
            return known
    q = quality
    tissue = None
    while True:
        data = encode_tile(tile, q)
        if max_mad is None or q >= 100:
            return data, q
        decoded = _decode_check(data, tile)
        if tissue is None:
            tissue = tissue_of(tile)
        if mad_per_channel(decoded, tile, tissue) <= max_mad:
            if key is not None:
                if len(_UNIFORM) >= 64:
                    _UNIFORM.clear()
                _UNIFORM[key] = (data, q)
            return data, q
        q = min(100, q + 5)


_UNIFORM: dict[tuple, tuple[bytes, int]] = {}
"""Encoded uniform tiles (every pixel the same) by shape, pixel, quality and limit.

Why: a slide's blank background, the padding of its edges and a sparse series' missing frames
give many tiles of one colour; encoding is deterministic, so such a tile is encoded and checked
once and its bitstream and quality reused, the same bytes and the same decision as every time.
"""


def _uniform_key(tile: np.ndarray, quality: int, max_mad: float | None) -> tuple | None:
    """The cache key of a tile whose pixels are all equal, else None (a few probes reject most tiles)."""
    first = tile[0, 0]
    if not (tile[::37, ::41] == first).all():
        return None
    flat = tile.reshape(-1)
    c = tile.shape[-1]
    if not np.array_equal(flat[c:], flat[:-c]):
        return None
    return tile.shape, first.tobytes(), quality, max_mad


def background_tile(height: int, width: int, samples: int, value: int = 255) -> np.ndarray:
    return np.full((height, width, samples), value, np.uint8)


def fill_tile_like(colorspace: str, subsampling: tuple[int, int], width: int, height: int, value: int = 255) -> bytes:
    """A background tile encoded like the copied frames, for tiles a sparse series leaves out."""
    if colorspace == "gray":
        return imagecodecs.jpeg8_encode(np.full((height, width), value, np.uint8), level=95)
    tile = np.full((height, width, 3), value, np.uint8)
    if colorspace == "RGB":
        return imagecodecs.jpeg8_encode(tile, level=95, colorspace="RGB", outcolorspace="RGB", subsampling="444")
    names = {(1, 1): "444", (2, 1): "422", (2, 2): "420"}
    return imagecodecs.jpeg8_encode(tile, level=95, colorspace="RGB", outcolorspace="YCBCR", subsampling=names[subsampling])
