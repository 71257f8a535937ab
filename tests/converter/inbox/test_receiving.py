"""converter.inbox.receiving: the receivers' mark, and the pace a conversion's kernel copy keeps while it is fresh."""

from __future__ import annotations

import os
import time

from converter.inbox.receiving import TOUCH_EVERY, Pace, ReceivingMark, mark_path, receiving
from converter.tiff import copier as copier_module
from converter.tiff.copier import Copier, Run


def test_mark_is_touched_at_most_every_fifth_of_a_second(tmp_path):
    mark = ReceivingMark(mark_path(tmp_path))
    assert not receiving(mark.path)
    mark.touch()
    assert mark.path.exists() and receiving(mark.path)
    os.utime(mark.path, (1, 1))
    mark.touch()  # right after the last touch: not written again
    assert mark.path.stat().st_mtime == 1 and not receiving(mark.path)
    time.sleep(TOUCH_EVERY + 0.05)
    mark.touch()
    assert receiving(mark.path)


def test_pace_sleeps_only_while_a_receiver_writes(tmp_path):
    path = mark_path(tmp_path)
    pace = Pace(path, rate=100 << 20)
    assert not pace(50 << 20) and not pace(50 << 20) and pace.slept == 0  # no mark: full speed
    ReceivingMark(path).touch()
    t = time.monotonic()
    assert pace(50 << 20) and pace(50 << 20)
    assert pace.slept > 0.3 and time.monotonic() - t >= 0.3  # 50 MiB at 100 MiB/s: ~0.5 s between steps
    os.utime(path, (1, 1))  # the receiver is done
    slept = pace.slept
    assert not pace(50 << 20) and pace.slept == slept


def test_a_paced_copy_is_still_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(copier_module, "_STEP", 1 << 20)  # three steps of 1 MiB at 8 MiB/s
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    path = mark_path(tmp_path)
    ReceivingMark(path).touch()
    pace = Pace(path, rate=8 << 20)
    copier = Copier(tmp_path / "out.bin", [Run(str(src), 0, 3 << 20)], 16, pace)
    copier.join()
    at = copier.places[0].at
    assert (tmp_path / "out.bin").read_bytes()[at:] == src.read_bytes()
    assert pace.slept > 0.15  # two waits of ~1/8 s between the three steps
