import imagecodecs
import numpy as np
import pytest

from converter.codecs.jpeg import parse_jpeg


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return (rng.random((32, 48, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("subsampling, expected", [("444", (1, 1)), ("422", (2, 1)), ("420", (2, 2))])
def test_jfif_ycbcr_sampling(image, subsampling, expected):
    data = imagecodecs.jpeg8_encode(image, level=80, colorspace="RGB", outcolorspace="YCBCR", subsampling=subsampling)
    info = parse_jpeg(data)
    assert (info.width, info.height, info.components) == (48, 32, 3)
    assert info.colorspace == "YCbCr"
    assert info.subsampling == expected
    assert info.baseline


def test_adobe_rgb(image):
    data = imagecodecs.jpeg8_encode(image, level=80, colorspace="RGB", outcolorspace="RGB", subsampling="444")
    info = parse_jpeg(data)
    assert info.colorspace == "RGB"
    assert info.adobe_transform == 0
    assert not info.jfif


def test_component_ids_decide_without_markers(image):
    data = bytearray(imagecodecs.jpeg8_encode(image, level=80, colorspace="RGB", outcolorspace="RGB", subsampling="444"))
    # Remove the Adobe APP14 segment: then only the component ids ('R','G','B') say RGB.
    pos = data.find(b"\xff\xee")
    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    del data[pos : pos + 2 + length]
    assert parse_jpeg(bytes(data)).colorspace == "RGB"
    sof = data.find(b"\xff\xc0")
    for i in range(3):
        data[sof + 10 + 3 * i] = i + 1  # ids 1,2,3 mean YCbCr
    assert parse_jpeg(bytes(data)).colorspace == "YCbCr"


def test_grayscale():
    data = imagecodecs.jpeg8_encode(np.zeros((16, 16), np.uint8), level=90)
    info = parse_jpeg(data)
    assert info.colorspace == "gray" and info.components == 1


def test_progressive_is_not_baseline(image):
    # imagecodecs cannot write progressive JPEG; patch the SOF marker of a baseline stream instead.
    data = bytearray(imagecodecs.jpeg8_encode(image, level=80))
    sof = data.find(b"\xff\xc0")
    data[sof + 1] = 0xC2
    assert not parse_jpeg(bytes(data)).baseline


@pytest.mark.parametrize("junk", [b"", b"\x00\x01", b"GIF89a....", b"\xff\xd8\xff\xe0\x00\x04ab"])
def test_not_jpeg(junk):
    with pytest.raises(ValueError):
        parse_jpeg(junk)
