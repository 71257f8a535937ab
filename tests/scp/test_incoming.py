"""scp.incoming: space-guarded temporary files on real file systems (the disk, and a small tmpfs as root).

Also the pynetdicom adapter's start-up check, which guards every use of pynetdicom internals.
"""

from __future__ import annotations

import os
import shutil

import pytest

from scp.incoming import IncomingFile, IncomingFiles, SpaceRules
from scp.pynetdicom_adapter import PynetdicomVersionError, check_version
from tests.support.node import tmpfs

MB = 1 << 20


def _rules(folder, **kw) -> SpaceRules:
    folder.mkdir(parents=True, exist_ok=True)
    return SpaceRules(folder, **kw)


def test_kept_file_holds_every_byte_and_is_removed_on_request(tmp_path):
    reg = IncomingFiles(_rules(tmp_path / "in", reserve_bytes=0))
    f = reg.open("assoc-1")
    data = os.urandom(3 * MB + 17)
    for i in range(0, len(data), 64 << 10):
        assert f.write(data[i:i + (64 << 10)]) == len(data[i:i + (64 << 10)])
    f.file.flush()  # what pynetdicom calls after each write
    f.close()
    assert f.kept and f.refusal == ""
    assert f.path.read_bytes() == data
    assert reg.live("assoc-1") == 1
    f.remove()
    assert not f.path.exists() and reg.live() == 0


def test_below_the_reserve_at_open_discards_and_removes_at_once(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    f = IncomingFile(_rules(tmp_path / "in", reserve_bytes=free + (10 << 30)))
    assert f.discarding and "below the reserve" in f.refusal and f.reason == "no-space"
    assert not f.path.exists(), "the temporary file must be gone as soon as the instance is refused"
    assert f.write(b"x" * MB) == MB  # the rest is still read (the association stays usable)
    assert f.written == MB and not f.path.exists()
    assert str(tmp_path) not in f.refusal


def test_an_instance_that_would_cross_the_reserve_is_discarded_mid_way(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    free = SpaceRules(folder).free_bytes()
    f = IncomingFile(SpaceRules(folder, reserve_bytes=free - 12 * MB))  # room for about 12 MB
    chunk = b"\0" * MB
    written_before_refusal = 0
    for _ in range(40):
        f.write(chunk)
        if f.discarding:
            break
        written_before_refusal += MB
    assert f.discarding, "40 MB were written into 12 MB of room"
    assert "cross the disk reserve" in f.refusal or "below the reserve" in f.refusal
    assert written_before_refusal <= 12 * MB
    assert not f.path.exists()


def test_size_cap(tmp_path):
    f = IncomingFile(_rules(tmp_path / "in", reserve_bytes=0, max_instance_bytes=2 * MB))
    f.write(b"a" * MB)
    assert f.kept
    f.write(b"a" * (MB + 1))
    assert f.discarding and f.reason == "too-large" and "size limit of 2 MB" in f.refusal
    assert not f.path.exists()


def test_release_removes_what_an_owner_left_and_nothing_else(tmp_path):
    reg = IncomingFiles(_rules(tmp_path / "in", reserve_bytes=0))
    a1, a2, b1 = reg.open("a"), reg.open("a"), reg.open("b")
    for f in (a1, a2, b1):
        f.write(b"data")
    assert reg.release("a") == 2
    assert not a1.path.exists() and not a2.path.exists() and b1.path.exists()
    assert reg.live() == 1 and reg.live("a") == 0


def test_remove_never_deletes_another_file_that_took_the_name(tmp_path):
    f = IncomingFile(_rules(tmp_path / "in", reserve_bytes=0))
    f.write(b"mine")
    f.close()
    moved = tmp_path / "stored.dcm"
    os.replace(f.path, moved)  # what the store does on success
    f.path.write_bytes(b"someone else's transfer")  # a new file under the same name
    f.remove()
    assert f.path.read_bytes() == b"someone else's transfer"
    assert moved.read_bytes() == b"mine"


def test_a_full_disk_mid_instance_discards_and_frees_the_space(tmp_path):
    with tmpfs(tmp_path / "small", 16) as folder:
        reg = IncomingFiles(SpaceRules(folder, reserve_bytes=0))
        f = reg.open("a")
        f.write(b"\1" * MB)
        assert f.kept
        # Another writer fills the file system between two free-space checks: the next write hits ENOSPC.
        with open(folder / "other-writer", "wb") as other:
            try:
                while True:
                    other.write(b"\0" * MB)
                    other.flush()
            except OSError:
                pass
        f.write(b"\1" * MB)
        assert f.discarding and f.refusal == "disk full while receiving" and f.reason == "no-space"
        f.write(b"\1" * MB)  # still read, thrown away
        assert f.written == 3 * MB
        assert sorted(p.name for p in folder.iterdir()) == ["other-writer"], "the partial file must be removed at once"
        (folder / "other-writer").unlink()
        g = reg.open("a")  # space is back: the next instance is kept
        g.write(b"\2" * MB)
        assert g.kept
        h = reg.open("a")  # and one that cannot fit is refused from statvfs, before ENOSPC
        for _ in range(20):
            h.write(b"\3" * MB)
        assert h.discarding and h.refusal == "not enough free disk for the instance"
        assert reg.release("a") == 1 and not list(folder.iterdir())


def test_pynetdicom_adapter_refuses_a_version_it_was_not_written_for():
    check_version()  # the installed one
    with pytest.raises(PynetdicomVersionError) as err:
        check_version("9.9.9")
    assert "pynetdicom 9.9.9" in str(err.value) and "scp/pynetdicom_adapter.py" in str(err.value)
