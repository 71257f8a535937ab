"""Where each frame's bytes are in an instance file.

Writers differ: a Basic Offset Table, an Extended Offset Table, or neither;
one fragment per frame or several (PS3.5 A.4). We index the fragments once by
walking the item headers (one 8-byte positioned read per item, seeking over
the data), then map fragments to frames, so a frame read is one seek and one
read and a multi-gigabyte instance is never loaded whole.

The index is held in flat machine arrays (array('Q'): 8 bytes per number),
not in Python tuples: a 150,000 px slide has ~275,000 level-0 frames, and
tuples of tuples of ints cost ~130 bytes a frame (issue 14: memory must not
grow with the frame count beyond a few bytes per frame).
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from converter.errors import DecodeError
from converter.source.instance import WsiInstance
from converter.source.item_table import as_u64, items_match_table, u64_array

_ITEM = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of group|elem<<16
_SEQ_DELIM = 0xE0DDFFFE

# Codestream start markers: a fragment that begins with one starts a frame.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")

_RUN_BYTES = 8 << 20
"""Largest single read when consecutive frames are read together (read_run)."""


class _Ranges(Sequence):
    """Read-only view: frame -> ((offset, length), ...) built on demand from the arrays."""

    def __init__(self, index: "FrameIndex") -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, frame):  # type: ignore[override]
        if isinstance(frame, slice):
            return [self[i] for i in range(*frame.indices(len(self)))]
        return self._index.frame_ranges(frame)


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Fragments in file order (offset, length arrays) and, per frame, its run of fragments [first, end)."""

    path: str
    offsets: array
    lengths: array
    first: array
    end: array

    def __len__(self) -> int:
        return len(self.first)

    @property
    def ranges(self) -> Sequence[tuple[tuple[int, int], ...]]:
        return _Ranges(self)

    def frame_ranges(self, frame: int) -> tuple[tuple[int, int], ...]:
        if frame < 0:
            frame += len(self)
        a, b = self.first[frame], self.end[frame]
        return tuple(zip(self.offsets[a:b], self.lengths[a:b]))

    def total_bytes(self) -> int:
        if len(self.offsets) == len(self.first):  # one fragment a frame (frames cover the fragments in runs)
            return sum(self.lengths)
        return sum(self.lengths[a] if b == a + 1 else sum(self.lengths[a:b]) for a, b in zip(self.first, self.end))

    def _cut(self, frame: int, got: int, length: int) -> DecodeError:
        return DecodeError(
            f"{self.path}: frame {frame + 1} is cut short ({got} of {length} bytes); the file is truncated.",
            "Send or copy the file again.",
        )

    def read(self, fp: BinaryIO, frame: int) -> bytes:
        a, b = self.first[frame], self.end[frame]
        parts = []
        for k in range(a, b):
            offset, length = self.offsets[k], self.lengths[k]
            fp.seek(offset)
            data = fp.read(length)
            if len(data) != length:
                raise self._cut(frame, len(data), length)
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_run(self, fp: BinaryIO, frames: Sequence[int]) -> Iterator[bytes]:
        """The frames' bytes, in the given order; neighbours in the file are read with one read (up to 8 MiB).

        Copying a level reads its frames in raster order, which is file order for TILED_FULL
        writers: one large read per run instead of one seek and read per frame.
        """
        i, n = 0, len(frames)
        while i < n:
            f = frames[i]
            a, b = self.first[f], self.end[f]
            if b != a + 1:
                yield self.read(fp, f)
                i += 1
                continue
            start = self.offsets[a]
            stop = start + self.lengths[a]
            j = i + 1
            while j < n and stop - start < _RUN_BYTES:
                g = frames[j]
                ga = self.first[g]
                if self.end[g] != ga + 1 or self.offsets[ga] < stop or self.offsets[ga] - stop > 64:
                    break
                stop = self.offsets[ga] + self.lengths[ga]
                j += 1
            fp.seek(start)
            block = fp.read(stop - start)
            view = memoryview(block)
            for k in range(i, j):
                g = frames[k]
                ga = self.first[g]
                lo, ln = self.offsets[ga] - start, self.lengths[ga]
                if lo + ln > len(block):
                    raise self._cut(g, max(0, len(block) - lo), ln)
                yield block if (lo == 0 and ln == len(block)) else bytes(view[lo : lo + ln])
            i = j


def _truncated(path: str, what: str) -> DecodeError:
    return DecodeError(
        f"{path}: the pixel data is truncated or malformed ({what}).",
        "Send or copy the file again; if it persists, re-export the slide from the scanner.",
    )


def _one_each(path: str, offsets: array, lengths: array) -> FrameIndex:
    n = len(offsets)
    return FrameIndex(path, offsets, lengths, array("Q", range(n)), array("Q", range(1, n + 1)))


_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def build_frame_index(instance: WsiInstance, fp: BinaryIO) -> FrameIndex:
    """The frame index of `instance`, read from `fp`.

    An index still alive elsewhere in the process (a LevelReader's) for the same unchanged file
    (device, inode, size, modification time) is returned as it is: copying a level indexes the
    file again for its splice, and each index costs a pass over every item header. Held weakly,
    so nothing stays in memory after its last user.
    """
    st = os.fstat(fp.fileno())
    key = (instance.path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, instance.number_of_frames,
           instance.pixel_data.offset if instance.pixel_data else None)
    with _LIVE_LOCK:
        live = _LIVE.get(key)
    if live is not None:
        return live
    index = _build(instance, fp)
    with _LIVE_LOCK:
        _LIVE[key] = index
    return index


def _build(instance: WsiInstance, fp: BinaryIO) -> FrameIndex:
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
        offs = array("Q", range(loc.offset, loc.offset + needed, frame_bytes)) if n_frames else array("Q")
        return _one_each(path, offs, array("Q", [frame_bytes]) * n_frames)

    fd = fp.fileno()
    header = os.pread(fd, 8, loc.offset)
    if len(header) < 8:
        raise _truncated(path, "no offset table item")
    tag, bot_len = struct.unpack("<II", header)
    if tag != _ITEM:
        raise _truncated(path, "first item is not the basic offset table")
    bot_raw = os.pread(fd, bot_len, loc.offset + 8) if bot_len else b""
    if len(bot_raw) != bot_len:
        raise _truncated(path, "basic offset table cut short")
    first_fragment = loc.offset + 8 + bot_len
    eot, eotl = loc.extended_offsets, loc.extended_lengths
    if (not bot_len and eot is not None and eotl is not None and len(eot) == n_frames
            and items_match_table(fd, first_fragment, eot, eotl, file_size)):
        # One fragment per frame where the Extended Offset Table says (PS3.3 C.7.6.3.1.8), checked in bulk.
        return _one_each(path, u64_array(as_u64(eot) + np.uint64(first_fragment + 8)), u64_array(as_u64(eotl)))
    # Item headers, one positioned read each (PS3.5 A.4: tag, 32-bit length, value).
    offsets, lengths = array("Q"), array("Q")
    pos = first_fragment
    unpack = struct.Struct("<II").unpack
    while True:
        header = os.pread(fd, 8, pos)
        if len(header) < 8:
            raise _truncated(path, "no sequence delimiter; the file ends inside the pixel data")
        tag, length = unpack(header)
        if tag == _SEQ_DELIM:
            break
        if tag != _ITEM:
            raise _truncated(path, f"unexpected tag {tag:#010x} at byte {pos}")
        if pos + 8 + length > file_size:
            raise _truncated(path, f"fragment at byte {pos} runs past the end of the file")
        offsets.append(pos + 8)
        lengths.append(length)
        pos += 8 + length
    n_frag = len(offsets)

    # Frame starts relative to the first fragment's item: Extended Offset Table (7FE0,0001),
    # else the Basic Offset Table (PS3.5 A.4).
    starts: Sequence[int] | None = None
    if loc.extended_offsets:
        starts = loc.extended_offsets
    elif bot_len:
        starts = array("I", bot_raw[: bot_len // 4 * 4])
    if starts is not None and len(starts) == n_frames:
        base = first_fragment + 8  # a relative item offset s -> data offset base + s
        if n_frag == n_frames and all(o - base == s for o, s in zip(offsets, starts)):
            return _one_each(path, offsets, lengths)  # the common case: in order, one fragment per frame
        by_offset = {o - base: i for i, o in enumerate(offsets)}
        first_idx = array("Q")
        for s in starts:
            k = by_offset.get(s)
            if k is None:
                raise _truncated(path, f"offset table points to byte {s}, which is not a fragment")
            first_idx.append(k)
        del by_offset
        order = sorted(range(n_frames), key=first_idx.__getitem__)
        end = array("Q", [0]) * n_frames
        for rank, i in enumerate(order):
            end[i] = first_idx[order[rank + 1]] if rank + 1 < n_frames else n_frag
        return FrameIndex(path, offsets, lengths, first_idx, end)
    if n_frag == n_frames:
        return _one_each(path, offsets, lengths)
    if n_frames == 1:
        return FrameIndex(path, offsets, lengths, array("Q", [0]), array("Q", [n_frag]))
    # No usable table and more fragments than frames: a frame starts where a
    # fragment starts with a codestream start marker.
    first_idx = array("Q")
    for k in range(n_frag):
        head = os.pread(fd, 8, offsets[k])
        if not first_idx or any(head.startswith(m) for m in _FRAME_STARTS):
            first_idx.append(k)
    if len(first_idx) != n_frames:
        raise _truncated(path, f"found {len(first_idx)} frames in {n_frag} fragments, NumberOfFrames says {n_frames}")
    end = array("Q", first_idx[1:]) + array("Q", [n_frag])
    return FrameIndex(path, offsets, lengths, first_idx, end)
