"""converter.durable on a real full filesystem: a failed write or move leaves no temporary file behind."""

from __future__ import annotations

import errno
import os

import pytest

from converter.durable import atomic_write_bytes, durable_move
from tests.support.node import tmpfs


@pytest.fixture
def tiny_fs(tmp_path):
    with tmpfs(tmp_path / "tiny", 1) as mnt:
        yield mnt


def test_atomic_write_on_a_full_disk_leaves_nothing(tiny_fs):
    with pytest.raises(OSError) as exc:
        atomic_write_bytes(tiny_fs / "report.json", b"x" * (4 << 20))
    assert exc.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert list(tiny_fs.iterdir()) == []


def test_cross_filesystem_move_on_a_full_disk_keeps_the_source(tiny_fs, tmp_path):
    src = tmp_path / "big.dcm"
    src.write_bytes(os.urandom(3 << 20))
    with pytest.raises(OSError):
        durable_move(src, tiny_fs / "archive" / "big.dcm")
    assert src.stat().st_size == 3 << 20
    assert [p.name for p in (tiny_fs / "archive").iterdir()] == []
