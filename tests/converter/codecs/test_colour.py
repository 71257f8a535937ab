"""The colour rule table (converter.codecs.colour) on real bitstreams from imagecodecs' encoders.

Each frame is encoded by a real codec, parsed by converter.codecs.jpeg / .j2k, decided, and
decoded by converter.codecs.frames; the pixels are compared with what was encoded.
"""

from __future__ import annotations

from types import SimpleNamespace

import imagecodecs
import numpy as np
import pytest

from converter.codecs import colour
from converter.codecs.frames import decode_frame_colour, frame_facts
from converter.codecs.j2k import parse_j2k
from converter.testkit.encode import rgb_to_ybr_full

J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
HTJ2K = "1.2.840.10008.1.2.4.201"
JLS = "1.2.840.10008.1.2.4.80"
LJPEG = "1.2.840.10008.1.2.4.70"
JPEG = "1.2.840.10008.1.2.4.50"


def _image() -> np.ndarray:
    """A 64x64 RGB tile: white glass on the left, pink tissue-like noise on the right."""
    rng = np.random.default_rng(7)
    a = np.full((64, 64, 3), 242, np.uint8)
    a[:, 32:] = np.clip(rng.normal((200, 120, 170), 20, (64, 32, 3)), 0, 255).astype(np.uint8)
    return a


def _inst(ts: str, label: str, spp: int = 3):
    return SimpleNamespace(transfer_syntax=ts, photometric=label, samples_per_pixel=spp, path="x.dcm",
                           tile_width=64, tile_height=64, planar_configuration=0)


def _decode(data: bytes, ts: str, label: str):
    return decode_frame_colour(data, _inst(ts, label))


CASES = [
    # (name, transfer syntax, label, encoder, decided, exact)
    ("j2k RGB samples, MCT off, labelled RGB", J2K, "RGB",
     lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, mct=False), "RGB", True),
    ("j2k RGB samples, MCT off, labelled YBR_FULL_422 (the DICOMizer case)", J2K, "YBR_FULL_422",
     lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, mct=False), "RGB", True),
    ("lossy j2k RGB samples, MCT off, labelled YBR_FULL_422", J2K_LOSSY, "YBR_FULL_422",
     lambda a: imagecodecs.jpeg2k_encode(a, level=45, codecformat="J2K", reversible=False, mct=False), "RGB", False),
    ("j2k YCbCr samples, MCT off, labelled YBR_FULL", J2K, "YBR_FULL",
     lambda a: imagecodecs.jpeg2k_encode(rgb_to_ybr_full(a), codecformat="J2K", reversible=True, mct=False), "YBR_FULL", False),
    ("j2k RCT (MCT on), labelled YBR_RCT", J2K, "YBR_RCT",
     lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, mct=True), "RGB", True),
    ("lossy j2k ICT (MCT on), labelled YBR_ICT", J2K_LOSSY, "YBR_ICT",
     lambda a: imagecodecs.jpeg2k_encode(a, level=45, codecformat="J2K", reversible=False, mct=True), "RGB", False),
    ("j2k MCT on but labelled YBR_FULL_422: the bitstream wins", J2K, "YBR_FULL_422",
     lambda a: imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, mct=True), "RGB", True),
    ("j2k MCT off labelled YBR_ICT: no transform was applied", J2K_LOSSY, "YBR_ICT",
     lambda a: imagecodecs.jpeg2k_encode(a, level=45, codecformat="J2K", reversible=False, mct=False), "RGB", False),
    ("JP2 wrapper, colr sRGB, labelled YBR_FULL", J2K, "YBR_FULL",
     lambda a: imagecodecs.jpeg2k_encode(a, codecformat="JP2", reversible=True, mct=False), "RGB", True),
    ("HTJ2K RCT", HTJ2K, "YBR_RCT", lambda a: imagecodecs.htj2k_encode(a, reversible=True, rgb=True), "RGB", True),
    ("HTJ2K no MCT, labelled RGB", HTJ2K, "RGB", lambda a: imagecodecs.htj2k_encode(a, reversible=True, rgb=False), "RGB", True),
    ("JPEG-LS RGB", JLS, "RGB", lambda a: _strip_spiff(imagecodecs.jpegls_encode(a)), "RGB", True),
    ("JPEG-LS YCbCr labelled YBR_FULL", JLS, "YBR_FULL", lambda a: _strip_spiff(imagecodecs.jpegls_encode(rgb_to_ybr_full(a))), "YBR_FULL", False),
    ("JPEG-LS with SPIFF RGB header, labelled YBR_FULL", JLS, "YBR_FULL", lambda a: bytes(imagecodecs.jpegls_encode(a)), "RGB", True),
    ("lossless JPEG, Adobe RGB", LJPEG, "RGB",
     lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1, colorspace="RGB", outcolorspace="RGB"), "RGB", True),
    ("lossless JPEG, JFIF YCbCr, labelled RGB: the marker wins", LJPEG, "RGB",
     lambda a: imagecodecs.jpeg8_encode(rgb_to_ybr_full(a), lossless=True, predictor=1, colorspace="YCBCR", outcolorspace="YCBCR"), "YBR_FULL", False),
    ("JPEG baseline JFIF labelled RGB (wsi2dcm)", JPEG, "RGB",
     lambda a: imagecodecs.jpeg8_encode(a, level=95, colorspace="RGB", outcolorspace="YCBCR", subsampling="444"), "YBR_FULL", False),
    ("JPEG baseline Adobe RGB", JPEG, "RGB",
     lambda a: imagecodecs.jpeg8_encode(a, level=95, colorspace="RGB", outcolorspace="RGB"), "RGB", False),
]


def _strip_spiff(data: bytes) -> bytes:
    from converter.testkit.encode import _strip_spiff as strip

    return strip(bytes(data))


@pytest.mark.parametrize("name, ts, label, encode, decided, exact", CASES, ids=[c[0] for c in CASES])
def test_decided_and_decoded_right(name, ts, label, encode, decided, exact) -> None:
    a = _image()
    pixels, decision = _decode(bytes(encode(a)), ts, label)
    assert decision.decided == decided, decision
    assert decision.why and decision.bitstream
    err = np.abs(pixels.astype(int) - a.astype(int))
    if exact:
        assert err.max() == 0, err.max()
    else:
        assert err.mean() < 2.5, err.mean()


def test_invalid_labels_are_hints_and_say_so() -> None:
    data = bytes(imagecodecs.jpeg2k_encode(_image(), codecformat="J2K", reversible=True, mct=False))
    d = colour.decide(J2K, "YBR_FULL_422", frame_facts(J2K, data))
    assert not d.label_valid and "8.2.4" in d.why and "not valid" in d.why
    assert "COD multiple component transformation 0" in d.bitstream and "full size" in d.bitstream
    report = d.as_report()
    assert set(report) == {"label", "bitstream", "decided", "why"} and report["decided"] == "RGB"


def test_j2k_header_facts() -> None:
    a = _image()
    on = parse_j2k(bytes(imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=True, mct=True)))
    off = parse_j2k(bytes(imagecodecs.jpeg2k_encode(a, codecformat="J2K", reversible=False, level=40, mct=False)))
    assert (on.mct, on.reversible, on.components, on.width, on.height) == (1, True, 3, 64, 64)
    assert (off.mct, off.reversible) == (0, False)
    assert not on.chroma_subsampled and on.subsampling == ((1, 1),) * 3
    assert on.header_length > 0
    jp2 = parse_j2k(bytes(imagecodecs.jpeg2k_encode(a, codecformat="JP2", reversible=True)))
    assert jp2.jp2_colour == 16
    ht = parse_j2k(bytes(imagecodecs.htj2k_encode(a, reversible=True, rgb=True)))
    assert ht.high_throughput and ht.mct == 1
    with pytest.raises(ValueError):
        parse_j2k(b"\xff\xd8not j2k")


def test_subsampled_j2k_is_decided_ycbcr_from_siz() -> None:
    # SIZ with chroma components subsampled 2x1 (hand-built: the installed encoders cannot write it).
    info = parse_j2k(bytes(imagecodecs.jpeg2k_encode(_image(), codecformat="J2K", reversible=True, mct=False)))
    sub = type(info)(info.width, info.height, 3, ((1, 1), (2, 1), (2, 1)), 0, True, False)
    d = colour.decide(J2K, "YBR_FULL_422", sub)
    assert d.decided == "YBR_FULL" and "subsample" in d.why


def test_label_decides_only_when_the_jpeg_bitstream_is_silent() -> None:
    from converter.codecs.jpeg import parse_jpeg

    data = bytearray(imagecodecs.jpeg8_encode(_image(), level=95, colorspace="RGB", outcolorspace="YCBCR", subsampling="444"))
    assert data[2:4] == b"\xff\xe0"  # JFIF APP0: drop it, leaving no colour marker (ids 1,2,3)
    silent = bytes(data[:2] + data[4 + ((data[4] << 8) | data[5]):])
    info = parse_jpeg(silent)
    assert not info.jfif and info.adobe_transform is None
    assert colour.decide(JPEG, "RGB", info).decided == "RGB"
    assert colour.decide(JPEG, "YBR_FULL_422", info).decided == "YBR_FULL"
    assert colour.decide(LJPEG, "YBR_FULL", info).decided == "YBR_FULL"


def test_native_and_gray() -> None:
    assert colour.decide("1.2.840.10008.1.2.1", "YBR_FULL", None).decided == "YBR_FULL"
    assert colour.decide("1.2.840.10008.1.2.1", "YBR_FULL_422", None).decided == colour.UNSUPPORTED
    assert colour.decide(JPEG, "MONOCHROME2", None, samples=1).decided == "MONOCHROME2"
