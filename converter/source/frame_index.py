"""Where each frame's bytes are in an instance file.

Writers differ: a Basic Offset Table, an Extended Offset Table, or neither;
one fragment per frame or several. We index the fragments once by walking
the item headers (seeking over the data), then map fragments to frames, so a
frame read is one seek and one read and a multi-gigabyte instance is never
loaded whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from converter.errors import DecodeError
from converter.source.instance import WsiInstance

_ITEM = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group|elem<<16
_SEQ_DELIM = 0xE0DDFFFE

# Codestream start markers: a fragment that begins with one starts a frame.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")


@dataclass(frozen=True)
class FrameIndex:
    """Byte ranges, per frame, as (offset, length) pairs in file order."""

    path: str
    ranges: tuple[tuple[tuple[int, int], ...], ...]

    def __len__(self) -> int:
        return len(self.ranges)

    def read(self, fp: BinaryIO, frame: int) -> bytes:
        parts = []
        for offset, length in self.ranges[frame]:
            fp.seek(offset)
            data = fp.read(length)
            if len(data) != length:
                raise DecodeError(
                    f"{self.path}: frame {frame + 1} is cut short ({len(data)} of {length} bytes); the file is truncated.",
                    "Send or copy the file again.",
                )
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _truncated(path: str, what: str) -> DecodeError:
    return DecodeError(
        f"{path}: the pixel data is truncated or malformed ({what}).",
        "Send or copy the file again; if it persists, re-export the slide from the scanner.",
    )


def build_frame_index(instance: WsiInstance, fp: BinaryIO) -> FrameIndex:
    loc = instance.pixel_data
    path = instance.path
    n_frames = instance.number_of_frames
    if loc is None:
        raise _truncated(path, "no pixel data element")
    fp.seek(0, 2)
    file_size = fp.tell()
    if not loc.encapsulated:
        frame_bytes = instance.tile_width * instance.tile_height * instance.samples_per_pixel * (instance.bits_allocated // 8)
        needed = frame_bytes * n_frames
        if loc.length is None or loc.length < needed or loc.offset + needed > file_size:
            raise _truncated(path, f"{n_frames} frames need {needed} bytes, the file has {max(0, file_size - loc.offset)}")
        return FrameIndex(path, tuple(((loc.offset + i * frame_bytes, frame_bytes),) for i in range(n_frames)))

    fp.seek(loc.offset)
    header = fp.read(8)
    if len(header) < 8:
        raise _truncated(path, "no offset table item")
    tag, bot_len = struct.unpack("<II", header)
    if tag != _ITEM:
        raise _truncated(path, "first item is not the basic offset table")
    bot_raw = fp.read(bot_len)
    if len(bot_raw) != bot_len:
        raise _truncated(path, "basic offset table cut short")
    bot = list(struct.unpack(f"<{bot_len // 4}I", bot_raw)) if bot_len else []
    first_fragment = fp.tell()
    fragments: list[tuple[int, int, int]] = []  # (relative item offset, data offset, length)
    pos = first_fragment
    while True:
        fp.seek(pos)
        header = fp.read(8)
        if len(header) < 8:
            raise _truncated(path, "no sequence delimiter; the file ends inside the pixel data")
        tag, length = struct.unpack("<II", header)
        if tag == _SEQ_DELIM:
            break
        if tag != _ITEM:
            raise _truncated(path, f"unexpected tag {tag:#010x} at byte {pos}")
        if pos + 8 + length > file_size:
            raise _truncated(path, f"fragment at byte {pos} runs past the end of the file")
        fragments.append((pos - first_fragment, pos + 8, length))
        pos += 8 + length

    starts: list[int] | None = None
    if loc.extended_offsets:
        starts = list(loc.extended_offsets)
    elif bot:
        starts = bot
    if starts is not None and len(starts) == n_frames:
        by_offset = {rel: i for i, (rel, _, _) in enumerate(fragments)}
        first_idx = []
        for s in starts:
            if s not in by_offset:
                raise _truncated(path, f"offset table points to byte {s}, which is not a fragment")
            first_idx.append(by_offset[s])
        order = sorted(range(n_frames), key=lambda i: first_idx[i])
        ranges: list[tuple[tuple[int, int], ...] | None] = [None] * n_frames
        for rank, i in enumerate(order):
            end = first_idx[order[rank + 1]] if rank + 1 < n_frames else len(fragments)
            ranges[i] = tuple((off, ln) for _, off, ln in fragments[first_idx[i] : end])
        return FrameIndex(path, tuple(r for r in ranges if r is not None))
    if len(fragments) == n_frames:
        return FrameIndex(path, tuple(((off, ln),) for _, off, ln in fragments))
    if n_frames == 1:
        return FrameIndex(path, (tuple((off, ln) for _, off, ln in fragments),))
    # No usable table and more fragments than frames: a frame starts where a
    # fragment starts with a codestream start marker.
    grouped: list[list[tuple[int, int]]] = []
    for _, off, ln in fragments:
        fp.seek(off)
        head = fp.read(8)
        if not grouped or any(head.startswith(m) for m in _FRAME_STARTS):
            grouped.append([(off, ln)])
        else:
            grouped[-1].append((off, ln))
    if len(grouped) != n_frames:
        raise _truncated(path, f"found {len(grouped)} frames in {len(fragments)} fragments, NumberOfFrames says {n_frames}")
    return FrameIndex(path, tuple(tuple(g) for g in grouped))
