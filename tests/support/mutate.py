"""Mutations of DICOM files for the validation tests (on receipt and on read): pydicom edits written back as
encoded, and byte-level edits pydicom would refuse to write. Shared by tests/converter/source/test_validate.py
and tests/scp/test_store_validation.py, which push the same mutants over C-STORE."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config


def edit(fn: Callable[[pydicom.Dataset], None]) -> Callable[[Path], None]:
    """Read with pydicom, change, write back as it was encoded (pixel data bytes untouched)."""

    def mutate(path: Path) -> None:
        ds = pydicom.dcmread(path)
        old = pydicom_config.settings.writing_validation_mode
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        try:
            fn(ds)
            ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
        finally:
            pydicom_config.settings.writing_validation_mode = old

    return mutate


def setattr_(keyword: str, value) -> Callable[[Path], None]:
    return edit(lambda ds: setattr(ds, keyword, value))


def delete(*keywords: str) -> Callable[[Path], None]:
    def fn(ds):
        for k in keywords:
            delattr(ds, k)

    return edit(fn)


def raw_element(tag: int, vr: str, value: str) -> Callable[[Path], None]:
    """Replace a top-level element (explicit VR, short form) by bytes of another VR or an unparseable value,
    which pydicom would refuse to write."""

    def mutate(path: Path) -> None:
        raw = path.read_bytes()
        at = raw.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132)
        (length,) = struct.unpack_from("<H", raw, at + 6)
        data = value.encode() + (b" " if len(value) % 2 else b"")
        path.write_bytes(raw[:at] + struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode() + struct.pack("<H", len(data))
                         + data + raw[at + 8 + length:])

    return mutate


def before_pixels(blob: bytes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        raw = path.read_bytes()
        at = raw.index(b"\xe0\x7f\x10\x00OB")
        path.write_bytes(raw[:at] + blob + raw[at:])

    return mutate
