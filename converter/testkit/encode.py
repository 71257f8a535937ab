"""Frame encoders, one per transfer syntax, and the probe of which ones this machine has.

:func:`_encoder_for` turns a rendered frame into the bytes of one frame in the spec's transfer
syntax (JPEG Baseline YCbCr or RGB, JPEG 2000 lossy or lossless, JPEG-LS, HTJ2K, lossless JPEG,
native), with the components the spec's ``sample_colour`` asks for (RGB, full-range YCbCr, or
the J2K codec's own transform);
:func:`available_transfer_syntaxes` tells which of them the installed imagecodecs can really encode.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

import imagecodecs
import numpy as np

from converter.testkit.spec import _NATIVE, TRANSFER_SYNTAX_UIDS, SlideSpec


def _strip_spiff(data: bytes) -> bytes:
    """Drop CharLS's SPIFF APP8 header (and its end-of-directory entry, which embeds a second
    SOI marker): DICOM JPEG-LS writers emit a plain SOI-SOF55 stream, and some readers trip
    over the SPIFF segments."""
    if data[:2] != b"\xff\xd8":
        return data
    out = bytearray(b"\xff\xd8")
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] == 0xE8:
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        i += 2 + length
    out += data[i:]
    return bytes(out)


def rgb_to_ybr_full(a: np.ndarray) -> np.ndarray:
    """RGB to full-range YCbCr, the YBR_FULL equations of PS3.3 C.7.6.3.1.2 (JFIF's), rounded.

    Written here rather than imported from the converter, so the generator stays an independent
    ground truth for the converter's own inverse.
    """
    if a.ndim == 2:
        return a
    r, g, b = (a[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.stack((y, cb, cr), axis=-1)), 0, 255).astype(np.uint8)


def _encoder_for(spec: SlideSpec) -> Callable[[np.ndarray], bytes]:
    """The frame encoder for the spec's transfer syntax (raises NotImplementedError if absent)."""
    inner = _codec_for(spec)
    if spec.sample_colour != "ybr_full":
        return inner
    return lambda a: inner(rgb_to_ybr_full(a))


def _codec_for(spec: SlideSpec) -> Callable[[np.ndarray], bytes]:
    ts = spec.transfer_syntax
    q = spec.quality
    # J2K/HTJ2K: the COD multi-component transformation only for the default / "mct" samples.
    mct = spec.sample_colour in (None, "mct")
    if ts == "jpeg":
        sub = spec.subsampling

        def enc(a: np.ndarray) -> bytes:
            if a.ndim == 2:
                return bytes(imagecodecs.jpeg8_encode(a, level=q))
            return bytes(
                imagecodecs.jpeg8_encode(
                    a, level=q, colorspace="RGB", outcolorspace="YCBCR", subsampling=sub
                )
            )

        return enc
    if ts == "jpeg-rgb":

        def enc(a: np.ndarray) -> bytes:
            if a.ndim == 2:
                return bytes(imagecodecs.jpeg8_encode(a, level=q))
            # outcolorspace RGB: libjpeg-turbo writes Adobe APP14 transform=0, no subsampling.
            return bytes(
                imagecodecs.jpeg8_encode(a, level=q, colorspace="RGB", outcolorspace="RGB")
            )

        return enc
    if ts in ("jpeg2000", "jpeg2000-lossless"):
        lossless = ts == "jpeg2000-lossless"
        # imagecodecs' `level` for JPEG 2000 is a target PSNR in dB; map quality 1..100 to
        # 25..45 dB (quality 90 -> 43 dB, close to JPEG q90 on this content).
        psnr = 25.0 + 0.2 * q

        def enc(a: np.ndarray) -> bytes:
            if lossless:
                return bytes(
                    imagecodecs.jpeg2k_encode(
                        a, codecformat="J2K", reversible=True, mct=mct, numthreads=1
                    )
                )
            return bytes(
                imagecodecs.jpeg2k_encode(
                    a, level=psnr, codecformat="J2K", reversible=False, mct=mct, numthreads=1
                )
            )

        return enc
    if ts == "jpegls":
        if not getattr(imagecodecs, "JPEGLS", None) or not imagecodecs.JPEGLS.available:
            raise NotImplementedError("this imagecodecs build cannot encode JPEG-LS")
        return lambda a: _strip_spiff(bytes(imagecodecs.jpegls_encode(a)))
    if ts == "htj2k":
        htj2k = getattr(imagecodecs, "HTJ2K", None)
        if htj2k is None or not htj2k.available or not hasattr(imagecodecs, "htj2k_encode"):
            raise NotImplementedError("this imagecodecs build cannot encode HTJ2K")

        def enc(a: np.ndarray) -> bytes:
            return bytes(imagecodecs.htj2k_encode(a, reversible=True, rgb=a.ndim == 3 and mct))

        return enc
    if ts == "jpeg-lossless":
        # libjpeg-turbo's lossless mode (process 14, predictor 1 = selection value 1) never
        # converts colour: RGB input gets an Adobe APP14 marker (transform 0) and component ids
        # 'R','G','B'; YCbCr input (sample_colour "ybr_full") a JFIF marker and ids 1, 2, 3.
        space = "YCBCR" if spec.sample_colour == "ybr_full" else "RGB"

        def enc(a: np.ndarray) -> bytes:
            if a.ndim == 2:
                return bytes(imagecodecs.jpeg8_encode(a, lossless=True, predictor=1))
            return bytes(
                imagecodecs.jpeg8_encode(
                    a, lossless=True, predictor=1, colorspace=space, outcolorspace=space
                )
            )

        return enc
    if ts in _NATIVE:
        return lambda a: np.ascontiguousarray(a).tobytes()
    raise ValueError(ts)  # unreachable: validated in SlideSpec


_PROBE_SPEC = SlideSpec(width=16, height=16, tile_size=16)


def available_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes this imagecodecs build can really encode (probed)."""
    out = []
    probe = np.full((16, 16, 3), 128, np.uint8)
    for name in TRANSFER_SYNTAX_UIDS:
        try:
            _encoder_for(dataclasses.replace(_PROBE_SPEC, transfer_syntax=name))(probe)
        except Exception:  # NotImplementedError, or a codec that is present but broken
            continue
        out.append(name)
    return out
