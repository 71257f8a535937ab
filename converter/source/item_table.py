"""Encapsulated pixel data items checked against an Extended Offset Table in bulk.

Why: walking the item headers of a 150,000 px slide one read at a time (PS3.5 A.4: an 8-byte
tag and length before each fragment) costs ~1 s for its ~275,000 frames, and it was done twice,
once when the instance is read and once when its frames are indexed. When the header carries an
Extended Offset Table and its lengths (PS3.3 C.7.6.3.1.8: one fragment per frame, empty Basic
Offset Table), every item header's place and content is known in advance, so the check is a
comparison of arrays: the item headers are gathered with numpy from the file mapped in windows
of 16 MiB (one window mapped at a time: its pages count in the resident set, the file's size does not).

Only a yes or no: when the table does not describe the items exactly (out of order, gaps, a
different length, no delimiter after the last), the callers walk the items one by one as before
and report the precise problem from that walk.

A yes is remembered for the file as it was (device, inode, size, modification and change times
in ns, and a digest of the table), so the second caller in one process (the frame index of a
conversion after the header read of `wsi-node convert`'s discovery, inherited over its fork)
gets it without touching the ~275,000 pages again (0.15-0.2 s at 150,000 px: one page fault per
item header). Any write, truncation, rename or replacement of the file changes one of those,
and then the items are checked again; a conversion in another process (the node's workers)
always checks them itself.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from array import array
from collections.abc import Sequence

import numpy as np

_ITEM, _SEQ_DELIM = 0xE000FFFE, 0xE0DDFFFE  # (FFFE,E000), (FFFE,E0DD) read as little-endian uint32
_WINDOW = 16 << 20
_ITEMS = 8192
"""Items per gather at most (the gather's index array is 64 bytes an item)."""
_EIGHT = np.arange(8, dtype=np.intp)
_MATCHED: dict[tuple, bytes] = {}
"""File identity -> digest of a table its items were found to match (at most _REMEMBERED, oldest dropped)."""
_REMEMBERED = 256
_LOCK = threading.Lock()
"""The receivers read headers on several threads."""


def _fresh_lock() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a fork while another thread held it must not leave the child locked


os.register_at_fork(after_in_child=_fresh_lock)


def as_u64(values: Sequence[int]) -> np.ndarray:
    """A uint64 numpy view of an array('Q') (no copy), or a converted copy of any other sequence."""
    if isinstance(values, array) and values.typecode == "Q":
        return np.frombuffer(values, dtype=np.uint64) if len(values) else np.zeros(0, np.uint64)
    return np.asarray(values, dtype=np.uint64)


def u64_array(values: np.ndarray) -> array:
    """array('Q') holding `values` (8 bytes a number; picklable; what the source model keeps)."""
    out = array("Q")
    out.frombytes(np.ascontiguousarray(values, dtype="<u8").tobytes())
    return out


def _identity(fd: int, first_item: int, file_size: int) -> tuple:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, first_item, file_size


def _digest(s: np.ndarray, n: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(s))
    h.update(np.ascontiguousarray(n))
    return h.digest()


def items_match_table(fd: int, first_item: int, starts: Sequence[int], lengths: Sequence[int], file_size: int) -> bool:
    """True when the items from byte `first_item` are exactly one per table entry, in order, back to
    back, each of the given length, followed by the sequence delimiter, all inside the file.

    `starts` are relative to the first item's tag (the offset tables' origin, PS3.5 A.4).
    A match found before in this process for the unchanged file and the same table is reused.
    """
    s, n = as_u64(starts), as_u64(lengths)
    if len(s) == 0 or len(s) != len(n) or int(s[0]) != 0 or int(n.max()) > 0xFFFFFFFE:
        return False
    key, digest = _identity(fd, first_item, file_size), _digest(s, n)
    with _LOCK:
        if _MATCHED.get(key) == digest:
            return True
    if not _items_match(fd, first_item, s, n, file_size):
        return False
    if _identity(fd, first_item, file_size) == key:  # unchanged while it was checked
        with _LOCK:
            _MATCHED.pop(key, None)
            _MATCHED[key] = digest
            while len(_MATCHED) > _REMEMBERED:
                del _MATCHED[next(iter(_MATCHED))]
    return True


def _items_match(fd: int, first_item: int, s: np.ndarray, n: np.ndarray, file_size: int) -> bool:
    end = first_item + int(s[-1]) + 8 + int(n[-1])
    if end + 8 > file_size or os.pread(fd, 4, end) != b"\xfe\xff\xdd\xe0":
        return False
    gran = mmap.ALLOCATIONGRANULARITY
    i, count = 0, len(s)
    while i < count:
        # Items [i, j): back to back (each starts where the one before ends), headers inside one window.
        lo = (first_item + int(s[i])) // gran * gran
        j = max(i + 1, min(i + _ITEMS, int(np.searchsorted(s, lo + _WINDOW - 8 - first_item, side="right"))))
        k = max(i, 1)
        if k < j and not np.array_equal(s[k:j], s[k - 1 : j - 1] + n[k - 1 : j - 1] + np.uint64(8)):
            return False
        pos = s[i:j].astype(np.int64) + (first_item - lo)
        mm = mmap.mmap(fd, int(pos[-1]) + 8, offset=lo, access=mmap.ACCESS_READ)
        try:
            buf = np.frombuffer(mm, dtype=np.uint8)
            heads = buf[pos.astype(np.intp)[:, None] + _EIGHT]
            words = heads.view("<u4")
            ok = bool(np.all(words[:, 0] == _ITEM)) and np.array_equal(words[:, 1].astype(np.uint64), n[i:j])
            del buf, heads, words
        finally:
            mm.close()
        if not ok:
            return False
        i = j
    return True
