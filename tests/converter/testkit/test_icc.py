"""Tests of converter/testkit/icc.py: the sRGB ICC profile is valid and really sRGB."""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
import pytest

from converter.testkit import SlideSpec, render_region, srgb_icc_profile
from tests.converter.testkit.helpers import mae


def test_icc_profile_is_valid() -> None:
    icc = srgb_icc_profile()
    assert struct.unpack(">I", icc[:4])[0] == len(icc)
    assert icc[36:40] == b"acsp" and icc[12:20] == b"mntrRGB " and icc[20:24] == b"XYZ "
    ImageCms = pytest.importorskip("PIL.ImageCms")
    profile = ImageCms.ImageCmsProfile(BytesIO(icc))
    assert "sRGB" in ImageCms.getProfileDescription(profile)
    srgb = ImageCms.createProfile("sRGB")
    from PIL import Image

    image = Image.fromarray(render_region(SlideSpec(), 300, 300, 32, 32))
    converted = np.asarray(ImageCms.profileToProfile(image, profile, srgb))
    assert mae(converted, np.asarray(image)) < 2  # it really is sRGB
