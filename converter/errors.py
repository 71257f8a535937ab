"""Errors raised while reading, converting and verifying slides."""

from __future__ import annotations

from config.errors import WsiNodeError

__all__ = [
    "WsiNodeError",
    "InputError",
    "NotDicomError",
    "NotWsiError",
    "InstanceRefused",
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


class InstanceRefused(InputError):
    """An instance this node must not acknowledge (PS3.4 B.2.3 statuses): what is wrong, per attribute.

    `status` is the storage outcome the receivers map to a DIMSE/STOW status: 'invalid' (cannot be
    parsed or is truncated: 0xC000), 'mismatch' (violates the VL WSI IOD or what the converter
    supports: 0xA900), 'too-large' (over a memory or header budget: 0xA700). `reason` is one line of
    at most 64 characters for the ErrorComment (PS3.7 E.1: VR LO, at most 64 characters by PS3.5 6.2); `problem` is the long form.
    """

    def __init__(self, problem: str, fix: str, status: str, reason: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(problem, fix)
        self.status = status
        self.reason = reason[:64]
        self.problems = problems or (problem,)


class SeriesError(InputError):
    """The series as a whole cannot become a slide (e.g. no VOLUME level)."""


class DecodeError(InputError):
    """A frame's pixel data could not be read or decoded."""


class VerificationError(WsiNodeError):
    """The converted output does not match the source pixels."""


class OutputError(WsiNodeError):
    """The output could not be written or published."""
