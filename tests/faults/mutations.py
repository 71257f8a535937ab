"""Hostile instances for the malformed-input campaign, made from one valid generated instance.

Every mutant gets its own Study/Series/SOP Instance UIDs (derived from the case name), so the
campaign can tell, at the end, which series were published and that none of the refused ones
was. Dataset-level mutations go through pydicom (`with_ds`); byte-level ones (truncation, byte
flips, hand-built deep nesting, file meta damage) work on the Part 10 bytes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import struct
import uuid
from typing import Callable

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

PIXEL_TAG = b"\xe0\x7f\x10\x00"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"


def uid_for(*parts: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join(parts)).int}"


def renamed(ds: Dataset, case: str) -> Dataset:
    """A copy of `ds` in a study and series of its own for `case` (the SOP Instance UID keeps the level apart)."""
    out = copy.deepcopy(ds)
    out.StudyInstanceUID = uid_for("faults-study", case)
    out.SeriesInstanceUID = uid_for("faults-series", case)
    out.SOPInstanceUID = uid_for("faults-sop", case, str(ds.SOPInstanceUID))
    out.FrameOfReferenceUID = uid_for("faults-for", case)
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dataset_offset(data: bytes) -> int:
    """Offset of the first data set element after the file meta (128-byte preamble, DICM, group 0002)."""
    (meta_len,) = struct.unpack("<I", data[140:144])
    return 144 + meta_len


def pixel_offset(data: bytes) -> int:
    return data.rfind(PIXEL_TAG)


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


def element_offset(data: bytes, tag: int) -> int:
    """Offset of an explicit-VR little-endian element's tag in the data set (first match after the meta)."""
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.find(needle, dataset_offset(data))
    assert at > 0, f"tag {tag:08X} not found"
    return at


def first_frame_offset(data: bytes) -> int:
    """Offset of the first JPEG SOI marker of the first frame item (after the Basic Offset Table item)."""
    at = data.find(b"\xff\xd8\xff", pixel_offset(data))
    assert at > 0
    return at


def nested_sequences(depth: int) -> bytes:
    """(0088,0200) Icon Image Sequence nested `depth` times, undefined lengths, explicit VR little endian."""
    seq_open = struct.pack("<HH", 0x0088, 0x0200) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
    item_open = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_close = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (seq_open + item_open) * depth + (item_close + seq_close) * depth


def set_meta(data: bytes, **values: str | None) -> bytes:
    """The Part 10 bytes with file meta elements replaced (None: removed), the data set bytes untouched."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    meta = ds.file_meta
    for keyword, value in values.items():
        if value is None:
            delattr(meta, keyword)
        else:
            setattr(meta, keyword, value)
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_file_meta_info

    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(buf), meta, enforce_standard=False)
    return buf.getvalue() + data[dataset_offset(data):]


def set_meta_ts(data: bytes, ts: str | None) -> bytes:
    return set_meta(data, TransferSyntaxUID=ts)


def insert_before(data: bytes, offset: int, blob: bytes) -> bytes:
    return data[:offset] + blob + data[offset:]


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:10]


Mutator = Callable[[Dataset, bytes], bytes]


def with_ds(fn: Callable[[Dataset], None]) -> Mutator:
    """A mutation done on the pydicom Dataset (`fn` edits it in place), then written as Part 10."""
    def mutate(ds: Dataset, _data: bytes) -> bytes:
        d = copy.deepcopy(ds)
        fn(d)
        return to_bytes(d)
    return mutate


def set_attr(keyword: str, value) -> Mutator:
    def fn(d: Dataset) -> None:
        setattr(d, keyword, value)
        if keyword == "SOPInstanceUID":
            d.file_meta.MediaStorageSOPInstanceUID = value if value else "1.2.3"
    return with_ds(fn)


def delete_attr(keyword: str) -> Mutator:
    def fn(d: Dataset) -> None:
        delattr(d, keyword)
    return with_ds(fn)


def raw_value(tag: int, vr: str, value: bytes) -> Mutator:
    """Write element `tag` by hand with VR `vr` and `value` (wrong VRs, unparsable numbers)."""
    def mutate(ds: Dataset, data: bytes) -> bytes:
        d = copy.deepcopy(ds)
        d[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
        return to_bytes(d)
    return mutate
