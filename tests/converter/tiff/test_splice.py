"""The byte movers of converter.tiff.splice: the kernel copy and both fallbacks give the same bytes.

Each fallback is called directly (no mock of the kernel): sendfile(2) and the pread/pwrite loop
are what runs where copy_file_range is refused (EXDEV, ENOSYS, EINVAL...).
"""

from __future__ import annotations

import os

import pytest

from converter.errors import DecodeError
from converter.tiff.copier import copy_by_reads, copy_by_sendfile, copy_range


@pytest.fixture
def files(tmp_path):
    data = os.urandom(3 << 20) + bytes(range(256)) * 17
    (tmp_path / "src").write_bytes(data)
    (tmp_path / "dst").write_bytes(b"TIFF-head")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR)
    yield data, src, dst, tmp_path / "dst"
    os.close(src)
    os.close(dst)


@pytest.mark.parametrize("copy", [copy_range, copy_by_sendfile, copy_by_reads], ids=["copy_file_range", "sendfile", "reads"])
def test_every_copy_path_places_the_same_bytes(files, copy):
    data, src, dst, out = files
    copy(src, dst, 1000, len(data) - 1001, 4096 + 1000)
    got = out.read_bytes()
    assert got[:9] == b"TIFF-head" and got[9 : 4096 + 1000] == bytes(4096 + 1000 - 9)  # a hole reads as zeros
    assert got[4096 + 1000 :] == data[1000:-1]


@pytest.mark.parametrize("copy", [copy_range, copy_by_sendfile, copy_by_reads], ids=["copy_file_range", "sendfile", "reads"])
def test_a_source_shorter_than_its_frames_is_a_decode_error(files, copy):
    data, src, dst, _out = files
    with pytest.raises(DecodeError, match="truncated"):
        copy(src, dst, len(data) - 10, 100, 0, "level-0.dcm")
