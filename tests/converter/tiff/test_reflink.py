"""Copy mode on a file system that shares blocks (XFS with reflink, as RHEL formats it; Btrfs).

There `cp` of a 1 GB file takes milliseconds: it shares the blocks instead of copying them. The
kernel shares only whole blocks at block-aligned offsets on both sides, so converter.tiff.copier
places every copied range at its source's place in a 4 KiB block and copies the bytes up to the
next boundary first (without that, all of a 1 GB range was copied: 6 s). These tests mount a small
XFS image over a loop device (root, xfsprogs) and measure the blocks a copy takes; without those
they skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from converter.tiff.copier import Run, copy_places, plan_places
from tests.converter.conversion.test_spliced_copy import _convert, _tiles_equal_frames


@pytest.fixture
def xfs(tmp_path):
    """A freshly made 512 MB XFS (reflink=1) mounted at tmp_path/xfs; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("needs root and xfsprogs (apt-get install xfsprogs) to mount an XFS image over a loop device")
    image, mount = tmp_path / "xfs.img", tmp_path / "xfs"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    made = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                                                      capture_output=True, text=True)
    if not mounted or mounted.returncode != 0:
        pytest.skip(f"could not make or loop-mount an XFS image here: {(made.stderr or getattr(mounted, 'stderr', '')).strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _used(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_copied_range_shares_its_blocks_and_holds_the_same_bytes(xfs):
    src = xfs / "frames.bin"
    data = os.urandom(64 << 20)
    src.write_bytes(data)
    os.sync()
    runs = [Run(str(src), 1234, 40_000_123), Run(str(src), 40_001_000, len(data) - 99)]
    places, _end = plan_places(runs, 16)
    before = _used(xfs)
    fd = os.open(xfs / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copy_places(places, fd)
        os.fsync(fd)
        for p in places:
            assert os.pread(fd, p.run.stop - p.run.start, p.at) == data[p.run.start:p.run.stop]
    finally:
        os.close(fd)
    grew = _used(xfs) - before
    assert grew < 1 << 20, f"the copy took {grew >> 10} KiB of new blocks for 64 MB: its blocks were copied, not shared"


def test_a_copy_mode_conversion_on_xfs_shares_the_frames_blocks(xfs):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    from gen_big import big_spec, write_big_series

    src = xfs / "in"
    write_big_series(big_spec(8000, 6000), src, pool_size=6)
    os.sync()
    pixels = sum(f.stat().st_size for f in src.rglob("*.dcm"))
    before = _used(xfs)
    report, instances = _convert(src, xfs / "out.tiff")
    assert report.ok, report.error
    os.sync()
    grew = _used(xfs) - before
    assert all(lv.action == "copy" for lv in report.levels), [lv.action for lv in report.levels]
    assert grew < pixels // 4, f"the output took {grew >> 10} KiB of new blocks for {pixels >> 10} KiB of frames"
    compared, _fills = _tiles_equal_frames(xfs / "out.tiff", instances)
    assert compared == sum(i.number_of_frames for i in instances)


def _copy_while_receiving(folder, size: int):
    """copy_places of `size` bytes in `folder` while a receiver keeps the mark fresh; the Pace used."""
    import threading

    from converter.inbox.receiving import Pace

    src = folder / "frames.bin"
    src.write_bytes(os.urandom(size))
    os.sync()  # received bytes already written (a shared range of dirty pages is written out first)
    mark = folder / "receiving.mark"
    mark.touch()
    done = threading.Event()

    def receiver():
        while not done.wait(0.1):
            os.utime(mark)

    pace = Pace(mark)
    places, _end = plan_places([Run(str(src), 1234, size)], 16)
    fd = os.open(folder / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
    t = threading.Thread(target=receiver, daemon=True)
    t.start()
    try:
        copy_places(places, fd, pace=pace)
        assert os.pread(fd, 4096, places[0].at) == src.read_bytes()[1234:1234 + 4096]
    finally:
        done.set()
        t.join()
        os.close(fd)
    return pace


def test_a_shared_copy_is_not_paced_for_receivers_but_a_real_copy_is(xfs, tmp_path):
    # Receivers first (converter/inbox/receiving.py) keeps a conversion's copy to 128 MB/s while bytes
    # arrive, to leave them the disk; a shared copy writes nothing, so pacing it would only delay it.
    shared = _copy_while_receiving(xfs, 192 << 20)
    assert shared.slept == 0.0, f"a reflinked copy waited {shared.slept:.2f} s for the receivers"
    plain = tmp_path / "plain"
    plain.mkdir()
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(plain)], capture_output=True, text=True).stdout.strip()
    if kind not in ("ext2/ext3", "tmpfs", "overlayfs"):
        pytest.skip(f"the contrast needs a file system that copies bytes; {plain} is on {kind}")
    copied = _copy_while_receiving(plain, 192 << 20)  # the test's own file system (ext4 here): bytes copied
    assert copied.slept > 0.3, f"a copying file system's copy was not paced ({copied.slept:.2f} s)"
