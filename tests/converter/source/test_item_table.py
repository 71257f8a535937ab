"""items_match_table: the bulk check of fragments against an Extended Offset Table, and its memory of a
match (a second check of the unchanged file in one process is free; any change is checked again)."""

from __future__ import annotations

import os
import struct
from array import array

import pytest

from converter.source import item_table
from converter.source.item_table import items_match_table

_ITEM, _DELIM = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.fixture
def items(tmp_path):
    """A file of 300 items of varied even lengths after a 1000-byte preamble, the delimiter last."""
    lengths = [200 + 2 * (k % 37) for k in range(300)]
    body, starts = bytearray(), []
    for k, n in enumerate(lengths):
        starts.append(len(body))
        body += _ITEM + struct.pack("<I", n) + bytes([k % 251]) * n
    path = tmp_path / "items.bin"
    path.write_bytes(bytes(1000) + body + _DELIM)
    item_table._MATCHED.clear()
    fd = os.open(path, os.O_RDWR)
    yield path, fd, array("Q", starts), array("Q", lengths)
    os.close(fd)


def _check(path, fd, starts, lengths):
    return items_match_table(fd, 1000, starts, lengths, os.fstat(fd).st_size)


def test_a_match_is_remembered_for_the_unchanged_file(items):
    path, fd, starts, lengths = items
    assert _check(path, fd, starts, lengths)
    assert len(item_table._MATCHED) == 1
    assert _check(path, fd, starts, lengths)
    assert len(item_table._MATCHED) == 1


def test_a_changed_file_is_checked_again(items):
    path, fd, starts, lengths = items
    assert _check(path, fd, starts, lengths)
    at = 1000 + starts[150] + 4
    os.pwrite(fd, struct.pack("<I", lengths[150] + 2), at)  # one item's length no longer what the table says
    st = os.fstat(fd)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later write (coarse clocks may not tick in a test)
    assert not _check(path, fd, starts, lengths)


def test_another_table_for_the_same_file_is_not_taken_from_memory(items):
    path, fd, starts, lengths = items
    assert _check(path, fd, starts, lengths)
    other = array("Q", lengths)
    other[10] += 2
    assert not _check(path, fd, starts, other)
    moved = array("Q", starts)
    moved[10] += 2
    assert not _check(path, fd, moved, lengths)


def test_no_delimiter_after_the_last_item_is_no_match(items):
    path, fd, starts, lengths = items
    os.pwrite(fd, b"\x00" * 8, os.fstat(fd).st_size - 8)
    assert not _check(path, fd, starts, lengths)
