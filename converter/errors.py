"""Errors raised while reading, converting and verifying slides."""

from __future__ import annotations

from config.errors import WsiNodeError

__all__ = [
    "WsiNodeError",
    "InputError",
    "NotDicomError",
    "NotWsiError",
    "SeriesError",
    "DecodeError",
    "VerificationError",
    "OutputError",
]


class InputError(WsiNodeError):
    """An input file cannot be used as it is."""


class NotDicomError(InputError):
    """The file is not DICOM (no DICM marker, or pydicom cannot parse it)."""


class NotWsiError(InputError):
    """The file is DICOM but not a VL Whole Slide Microscopy image."""


class SeriesError(InputError):
    """The series as a whole cannot become a slide (e.g. no VOLUME level)."""


class DecodeError(InputError):
    """A frame's pixel data could not be read or decoded."""


class VerificationError(WsiNodeError):
    """The converted output does not match the source pixels."""


class OutputError(WsiNodeError):
    """The output could not be written or published."""
