"""Atomic, durable file placement: temp name beside the target, fsync, rename.

A tile server or a hospital backup must never see half a file, and a crash
must leave either the old state or the new one. Renames are atomic only
within one filesystem, so moves across filesystems copy to a temporary name
on the target side first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fp:
        os.fsync(fp.fileno())


def fsync_and_rename(tmp: Path, target: Path) -> None:
    """Make a fully written temporary file durable and give it its final name."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def temp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.tmp"


def atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = temp_name(target)
    try:
        with open(tmp, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave the temporary file behind
        raise
    fsync_dir(target.parent)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def durable_move(src: Path, target: Path) -> None:
    """Move a file so that `target` appears complete or not at all, even across filesystems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(src).st_dev == os.stat(target.parent).st_dev:
        fsync_file(src)
        try:
            os.replace(src, target)
            fsync_dir(target.parent)
            return
        except OSError as exc:
            # Same st_dev is not proof of one filesystem (overlayfs, bind mounts in containers).
            if exc.errno != errno.EXDEV:
                raise
    tmp = temp_name(target)
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)  # ENOSPC in the middle of the copy: the source stays, no partial copy
        raise
    fsync_dir(target.parent)
    os.unlink(src)


# Starting the write-back of a range early (the receivers' write-behind, a paced conversion copy): the
# final fsync then has only the tail left. It makes nothing durable by itself (no metadata, no device
# cache flush); durability still comes from fsync.
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def _load_sync_file_range():
    """libc's sync_file_range (Linux), or None: the fallback is fdatasync."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int, wait: bool = False) -> None:
    """Start writing [offset, offset+length) of `fd` to disk; with `wait`, also wait until it is written.

    Raises OSError as a write would (EIO, ENOSPC on some file systems).
    """
    if _sync_file_range is None:
        if not wait:  # one fdatasync per range: it waits anyway
            os.fdatasync(fd)
        return
    flags = _SYNC_FILE_RANGE_WRITE | (_SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WAIT_AFTER if wait else 0)
    if _sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
