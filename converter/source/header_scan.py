"""A walk over a DICOM file's element headers before pydicom parses anything.

Why: pydicom builds a Python object per element, about 40 bytes of memory per byte of header
for small elements (an 8 MB header of tiny elements took a process from 49 to 360 MB and 7 s),
recurses once per nested sequence (3,000 levels: RecursionError), and only notices a file that
ends early when the value is read. This walk reads 8-12 bytes per element and seeks over the
values, so its memory is flat whatever the header holds. It enforces the caps on header bytes and
sequence nesting, finds truncation anywhere (an element or fragment running past the end of the
file, a missing delimiter), locates the pixel data and summarises its fragments (PS3.5 A.4), and
collects the per-frame positions (PS3.3 C.8.12.6.1 Plane Position (Slide)) itself, so that
pydicom is then asked only for the few top-level attributes wsi-node uses (`KEPT_TAGS`).

Little endian only: the transfer syntaxes the node accepts (explicit and implicit VR little
endian, and the encapsulated ones, PS3.5 A.4) all are.
"""

from __future__ import annotations

import io
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

from converter.errors import InstanceRefused
from converter.source.item_table import items_match_table

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}  # PS3.5 7.1.2
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 7.5
_PIXEL_DATA, _EOT, _EOT_LENGTHS = 0x7FE00010, 0x7FE00001, 0x7FE00002
_PER_FRAME, _PLANE_POSITION, _PATH_ID_SEQ = 0x52009230, 0x0048021A, 0x00480207
_COLUMN, _ROW, _Z, _PATH_ID = 0x0048021E, 0x0048021F, 0x0040074A, 0x00480106
_OPTICAL_PATHS, _SHARED = 0x00480105, 0x52009229
_TRANSFER_SYNTAX = 0x00020010
_UNREADABLE_SYNTAXES = {"1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian", "1.2.840.10008.1.2.2": "Explicit VR Big Endian"}
UNDEFINED = 0xFFFFFFFF

# The top-level attributes pydicom is asked for (dcmread specific_tags): everything
# converter.source.instance and converter.source.validate read. The rest is skipped unread.
KEPT_TAGS: tuple[str, ...] = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate", "AcquisitionDateTime",
    "Manufacturer", "SeriesDescription", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions",
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "FrameOfReferenceUID", "BurnedInAnnotation",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "ICCProfile",
    "ConcatenationUID", "ConcatenationFrameOffsetNumber", "InConcatenationNumber", "InConcatenationTotalNumber",
    "DimensionOrganizationType", "ContainerIdentifier", "ImagedVolumeWidth", "ImagedVolumeHeight",
    "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "TotalPixelMatrixFocalPlanes", "SpecimenLabelInImage",
    "NumberOfOpticalPaths", "OpticalPathSequence", "SharedFunctionalGroupsSequence",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
)
MAX_KEPT_SEQUENCE_ELEMENTS = 20_000
"""Elements inside the kept sequences (optical paths, shared groups): real ones hold a few dozen."""


@dataclass(frozen=True)
class Position:
    """One PerFrameFunctionalGroupsSequence item: 1-based column/row, z, optical path (None: absent)."""

    column: int | None
    row: int | None
    z: float | None
    optical_path: str | None


@dataclass(frozen=True)
class HeaderScan:
    transfer_syntax: str
    header_bytes: int
    """Bytes of the data set before the pixel data (or the whole data set without it)."""
    max_depth: int
    pixel_offset: int | None = None
    """File offset of the PixelData value; None: no PixelData element."""
    pixel_length: int | None = None
    """Its defined length (native) or None (encapsulated)."""
    file_size: int = 0
    basic_offsets: tuple[int, ...] = ()
    fragment_offsets: Sequence[int] = ()
    """Fragment item offsets relative to the first fragment (the Basic Offset Table's origin, PS3.5 A.4).

    This and the three below are array('Q') (8 bytes a frame): a 150,000 px slide has ~275,000
    frames, and tuples of ints cost ~40 bytes each (issue 14: memory flat in the frame count).
    With a matching Extended Offset Table they are the very same arrays as the table."""
    fragment_lengths: Sequence[int] = ()
    extended_offsets: Sequence[int] | None = None
    extended_lengths: Sequence[int] | None = None
    positions: tuple[Position, ...] | None = field(default=None, repr=False)
    """One per PerFrameFunctionalGroupsSequence item; None: no such sequence."""

    @property
    def encapsulated(self) -> bool:
        return self.pixel_offset is not None and self.pixel_length is None


def _refuse(status: str, reason: str, problem: str, fix: str = "Fix the sending system, or send the file again.") -> InstanceRefused:
    return InstanceRefused(problem, fix, status, reason)


def _truncated(where: str) -> InstanceRefused:
    return _refuse("invalid", "truncated: " + where, f"the file is truncated or malformed: {where}.", "Send or copy the file again.")


def _over_cap(cap: int) -> InstanceRefused:
    return _refuse("too-large", f"header over the {cap / (1 << 20):g} MB cap",
                   f"the header (everything before PixelData) is larger than the cap of {cap / (1 << 20):g} MB.",
                   "Raise --max-header-mb if such headers are expected, or fix the sending system.")


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _read_meta(fp: BinaryIO) -> tuple[str, int]:
    """The transfer syntax of the File Meta Information (PS3.10 7.1) and where the data set starts."""
    fp.seek(0)
    head = fp.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _refuse("invalid", "not DICOM Part 10 (no DICM marker)", "not a DICOM Part 10 file (no DICM marker).",
                      "Send a DICOM Part 10 file.")
    syntax = None
    while True:
        pos = fp.tell()
        raw = fp.read(8)
        if len(raw) < 8:
            raise _truncated("the file ends in the file meta")
        group, elem, vr = struct.unpack("<HH2s", raw[:6])
        if group != 0x0002:
            fp.seek(pos)
            break
        if vr in _LONG_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                raise _truncated("the file ends in the file meta")
            (length,) = struct.unpack("<I", extra)
        else:
            (length,) = struct.unpack("<H", raw[6:8])
        if length > 1 << 16:
            raise _refuse("invalid", "malformed file meta information", f"file meta element (0002,{elem:04X}) has length {length}.")
        value = fp.read(length)
        if len(value) < length:
            raise _truncated("the file ends in the file meta")
        if (group << 16 | elem) == _TRANSFER_SYNTAX:
            syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
    if syntax in _UNREADABLE_SYNTAXES:
        raise _refuse("invalid", f"transfer syntax {_UNREADABLE_SYNTAXES[syntax]} not supported",
                      f"the transfer syntax {_UNREADABLE_SYNTAXES[syntax]} ({syntax}) is not supported.",
                      "Send the instance in a little endian transfer syntax (PS3.5 A.2, A.4).")
    if not syntax:
        raise _refuse("invalid", "file meta without TransferSyntaxUID", "the file meta information has no TransferSyntaxUID (0002,0010)"
                      " (PS3.10 7.1), so the data set cannot be decoded.", "Fix the sending system: it must write a complete file meta header.")
    return syntax, fp.tell()


def _number(vr: bytes | None, raw: bytes, text: bool = False) -> float | int | str | None:
    if text or vr in (b"IS", b"DS", b"SH", b"LO", b"CS"):
        value = raw.rstrip(b"\0 ").decode("ascii", "replace").split("\\")[0].strip()
        if text:
            return value
        return float(value) if vr == b"DS" else int(float(value))
    fmt = {b"SL": "<i", b"UL": "<I", b"SS": "<h", b"US": "<H", b"FL": "<f", b"FD": "<d", None: "<i"}.get(vr)
    if fmt is None or len(raw) < struct.calcsize(fmt):
        raise ValueError(f"VR {vr!r}")
    return struct.unpack_from(fmt, raw)[0]


def scan_header(fp: BinaryIO, max_header_bytes: int, max_depth: int) -> HeaderScan:
    """Walk the element headers of an open Part 10 file; raise InstanceRefused for what cannot be used."""
    fp.seek(0, 2)
    file_size = fp.tell()
    syntax, start = _read_meta(fp)
    implicit_ds = syntax == IMPLICIT_VR_LE
    fp.seek(start)
    # A stack of open sequences and items: [tag, end (absolute, None: undefined), implicit, items seen].
    stack: list[list] = []
    deepest = 0
    kept_elements = 0
    positions: list[list] | None = None
    eot: dict[int, bytes] = {}
    kept = (_OPTICAL_PATHS, _SHARED)
    pos = start
    while True:
        while stack and stack[-1][1] is not None and pos >= stack[-1][1]:
            if pos > stack[-1][1]:
                raise _truncated(f"an item ends inside an element at byte {pos}")
            stack.pop()
        if pos - start > max_header_bytes:
            raise _over_cap(max_header_bytes)
        implicit = stack[-1][2] if stack else implicit_ds
        raw = fp.read(8)
        if len(raw) < 8:
            if stack:
                raise _truncated("the file ends inside a sequence")
            if raw:  # tag, VR and length come whole (PS3.5 7.1): a file cut inside them is truncated, 0xC000
                raise _truncated("the file ends in an element header")
            return _result(syntax, pos - start, deepest, None, None, file_size, positions, eot)
        group, elem = struct.unpack("<HH", raw[:4])
        tag = group << 16 | elem
        vr: bytes | None = None
        if tag in (_ITEM, _ITEM_END, _SEQ_END) or implicit:
            (length,) = struct.unpack("<I", raw[4:8])
            head = 8
        else:
            vr = raw[4:6]
            if vr in _LONG_VRS:
                extra = fp.read(4)
                if len(extra) < 4:
                    raise _truncated("the file ends in an element header")
                (length,) = struct.unpack("<I", extra)
                head = 12
            else:
                (length,) = struct.unpack("<H", raw[6:8])
                head = 8
        value_at = pos + head
        in_item = bool(stack) and stack[-1][0] == _ITEM
        if tag == _ITEM:
            if not stack or stack[-1][0] == _ITEM:
                raise _refuse("invalid", "malformed: item outside a sequence", f"an item tag outside a sequence at byte {pos}.")
            stack[-1][3] += 1
            if len(stack) == 1 and stack[0][0] == _PER_FRAME and positions is not None:
                positions.append([None, None, None, None])
            stack.append([_ITEM, None if length == UNDEFINED else value_at + length, implicit, stack[-1][3] - 1])
            pos = value_at
            continue
        if tag in (_ITEM_END, _SEQ_END):
            want = _ITEM if tag == _ITEM_END else None
            if not stack or stack[-1][1] is not None or (want == _ITEM) != (stack[-1][0] == _ITEM):
                raise _refuse("invalid", "malformed: unexpected delimiter", f"an unexpected delimiter {_tag(tag)} at byte {pos}.")
            stack.pop()
            pos = value_at
            continue
        if stack and not in_item:
            raise _refuse("invalid", "malformed sequence", f"element {_tag(tag)} inside a sequence but outside an item, byte {pos}.")
        if not stack and tag == _PIXEL_DATA:
            return _pixel_data(fp, syntax, pos - start, deepest, value_at, length, file_size, positions, eot)
        if implicit and tag not in (_ITEM,):
            try:
                is_sq = dictionary_VR(tag) == "SQ"
            except KeyError:
                is_sq = False
                if length == UNDEFINED:  # a private sequence: look for an item (as pydicom does)
                    is_sq = fp.read(4) == struct.pack("<HH", 0xFFFE, 0xE000)
                    fp.seek(value_at)
            vr = b"SQ" if is_sq else None
        sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
        if stack and stack[0][0] in kept:
            kept_elements += 1
            if kept_elements > MAX_KEPT_SEQUENCE_ELEMENTS:
                raise _refuse("too-large", f"{_tag(stack[0][0])} has too many elements",
                              f"sequence {_tag(stack[0][0])} holds more than {MAX_KEPT_SEQUENCE_ELEMENTS} elements.")
        if sequence:
            depth = sum(1 for s in stack if s[0] != _ITEM) + 1
            deepest = max(deepest, depth)
            if depth > max_depth:
                raise _refuse("invalid", f"sequences nested deeper than {max_depth}",
                              f"sequences are nested deeper than {max_depth} levels (at {_tag(tag)}, byte {pos}).",
                              "Raise --max-sequence-depth if such data sets are expected, or fix the sending system.")
            if not stack and tag == _PER_FRAME:
                positions = []
            # PS3.5 6.2.2: UN of undefined length holds implicit VR little endian.
            stack.append([tag, None if length == UNDEFINED else value_at + length, implicit or vr == b"UN", 0])
            pos = value_at
            continue
        if length == UNDEFINED:
            raise _refuse("invalid", f"malformed: {_tag(tag)} of undefined length",
                          f"element {_tag(tag)} has an undefined length, which only sequences and pixel data may have (PS3.5 7.1).")
        if value_at + length - start > max_header_bytes:
            raise _over_cap(max_header_bytes)
        if value_at + length > file_size:
            raise _truncated(f"{_tag(tag)} runs past the end of the file")
        if not stack and tag in (_EOT, _EOT_LENGTHS):
            eot[tag] = fp.read(length)
        elif positions is not None and len(stack) == 4 and stack[0][0] == _PER_FRAME and length <= 64:
            slot = {(_PLANE_POSITION, _COLUMN): 0, (_PLANE_POSITION, _ROW): 1, (_PLANE_POSITION, _Z): 2,
                    (_PATH_ID_SEQ, _PATH_ID): 3}.get((stack[2][0], tag))
            if slot is not None and stack[3][3] == 0:
                try:
                    if vr is None:
                        vr = {0: b"SL", 1: b"SL", 2: b"DS", 3: b"SH"}[slot]
                    positions[-1][slot] = _number(vr, fp.read(length), text=slot == 3)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise _refuse("invalid", f"unreadable {_tag(tag)} in per-frame groups",
                                  f"PerFrameFunctionalGroupsSequence item {len(positions)}: {_tag(tag)} cannot be read ({exc}).") from exc
        pos = value_at + length
        fp.seek(pos)


def _q(raw: bytes | None) -> array | None:
    if raw is None:
        return None
    out = array("Q")
    out.frombytes(memoryview(raw)[: len(raw) // 8 * 8])
    return out


def _result(syntax, header_bytes, depth, offset, length, file_size, positions, eot, **pixel) -> HeaderScan:
    table = pixel.pop("table", None)
    table = _q(eot.get(_EOT)) if table is None else table
    table_lengths = pixel.pop("table_lengths", None)
    table_lengths = _q(eot.get(_EOT_LENGTHS)) if table_lengths is None else table_lengths
    pos = None if positions is None else tuple(Position(c if c is None else int(c), r if r is None else int(r), z, p)
                                               for c, r, z, p in positions)
    return HeaderScan(syntax, header_bytes, depth, offset, length, file_size, positions=pos,
                      extended_offsets=table, extended_lengths=table_lengths, **pixel)


def _pixel_data(fp, syntax, header_bytes, depth, value_at, length, file_size, positions, eot) -> HeaderScan:
    """The PixelData value: native (defined length) or encapsulated items (PS3.5 A.4)."""
    if length != UNDEFINED:
        if value_at + length > file_size:
            raise _truncated(f"PixelData needs {length} bytes, has {file_size - value_at}")
        return _result(syntax, header_bytes, depth, value_at, length, file_size, positions, eot)
    fp.seek(value_at)
    raw = fp.read(8)
    if len(raw) < 8:
        raise _truncated("no Basic Offset Table item")
    tag, bot_len = struct.unpack("<II", raw)
    if tag != 0xE000FFFE:  # (FFFE,E000) read as group | element << 16
        raise _refuse("invalid", "encapsulated data without offset table item",
                      "the first item of the encapsulated PixelData is not the Basic Offset Table (PS3.5 A.4).")
    if bot_len % 4 or value_at + 8 + bot_len > file_size:
        raise _truncated(f"Basic Offset Table of length {bot_len}")
    bot = fp.read(bot_len)
    basic = struct.unpack(f"<{bot_len // 4}I", bot)
    first = value_at + 8 + bot_len
    table, table_lengths = _q(eot.get(_EOT)), _q(eot.get(_EOT_LENGTHS))
    if not bot_len and table and table_lengths is not None and _fileno(fp) is not None:
        if items_match_table(_fileno(fp), first, table, table_lengths, file_size):
            # One fragment per frame exactly where the table says: the table is the fragment list.
            return _result(syntax, header_bytes, depth, value_at, None, file_size, positions, eot, basic_offsets=basic,
                           fragment_offsets=table, fragment_lengths=table_lengths, table=table, table_lengths=table_lengths)
    offsets, lengths = array("Q"), array("Q")
    pos = first
    while True:
        fp.seek(pos)
        raw = fp.read(8)
        if len(raw) < 8:
            raise _truncated("the pixel data has no end delimiter")
        tag, item_len = struct.unpack("<II", raw)
        if tag == 0xE0DDFFFE:
            break
        if tag != 0xE000FFFE:
            raise _refuse("invalid", "malformed pixel data items", f"tag {tag:#010x} among the pixel data items at byte {pos} (PS3.5 A.4).")
        if item_len == UNDEFINED or pos + 8 + item_len > file_size:
            raise _truncated(f"fragment {len(offsets) + 1} runs past the end")
        offsets.append(pos - first)
        lengths.append(item_len)
        pos += 8 + item_len
    return _result(syntax, header_bytes, depth, value_at, None, file_size, positions, eot,
                   basic_offsets=basic, fragment_offsets=offsets, fragment_lengths=lengths)


def _fileno(fp: BinaryIO) -> int | None:
    try:
        return fp.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
