"""Disk full: inbox, serving, archive and state on a 60 MB tmpfs, with --disk-reserve-mb 20.

As root only (mount); skipped with the reason otherwise. Cases: a 106 MB series pushed into it (the
instance that cannot fit is refused with 0xA700 and an ErrorComment, the association stays usable,
the temporary file is gone at once, instances already acknowledged stay); a new association below
the reserve (0xA700 for each instance, STOW-RS 507, /readyz not ready on disk_space); and recovery
once a filler file is removed (the refused instances re-sent succeed and the slide is published).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pynetdicom import AE

from converter.testkit import SlideSpec
from tests.faults.audit import node_answers
from tests.support.node import tmpfs
from tests.faults.harness import WSI_STORAGE, c_store, multipart, readyz, stow, wait_for

BIG = SlideSpec(width=5888, height=6000, seed=701, transfer_syntax="explicit", downsamples=(1, 4, 16))
SMALL = SlideSpec(width=1024, height=768, seed=702, downsamples=(1, 4))


@pytest.fixture
def small_fs(tmp_path):
    with tmpfs(tmp_path / "small", 60) as mnt:
        yield mnt


def fill(mnt: Path, leave_mb: float) -> Path:
    """A filler file that leaves about `leave_mb` MB free on the small filesystem."""
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free + (filler.stat().st_size if filler.exists() else 0)
    filler.unlink(missing_ok=True)
    with open(filler, "wb") as fp:
        os.posix_fallocate(fp.fileno(), 0, max(0, int(free - leave_mb * (1 << 20))))
    return filler


def test_push_larger_than_the_disk_then_recovery(small_fs, node_process, series_factory):
    big = series_factory(BIG)
    node = node_process(data=small_fs / "data", disk_reserve_mb=20)
    sizes = [f.stat().st_size for f in big[1]]
    assert max(sizes) > 60 << 20 and sum(sizes) > 100 << 20
    outcomes = c_store(node.port, big[1])
    expected = [0xA700 if s > 40 << 20 else 0 for s in sizes]
    assert [o.status for o in outcomes] == expected, outcomes
    assert all(o.comment for o in outcomes if o.status), outcomes
    assert node.incoming() == [], node.incoming()
    node_answers(node)
    # DCMTK storescu sees the same: a status for every instance, no broken association.
    r = subprocess.run(["/usr/bin/storescu", "-aec", "WSINODE", "-R", "+sd", "127.0.0.1", str(node.port), str(big[0])],
                       capture_output=True, text=True, timeout=120)
    assert "TCP I/O Error" not in r.stderr and "Association Aborted" not in r.stderr, r.stderr[-1500:]
    assert node.incoming() == []
    assert node.published(big[3]) is None


def test_below_the_reserve_then_recovery(small_fs, node_process, series_factory):
    small = series_factory(SMALL)
    node = node_process(data=small_fs / "data", disk_reserve_mb=20)
    filler = fill(small_fs, 10)
    outcomes = c_store(node.port, small[1])
    assert [o.status for o in outcomes] == [0xA700, 0xA700] and all(o.comment for o in outcomes), outcomes
    assert stow(node.stow_url, multipart([f.read_bytes() for f in small[1]])).http == 507
    status, body = readyz(node.url)
    assert status == 503 and "disk_space" in body["failing"], body
    assert node.incoming() == []
    filler.unlink()
    outcomes = c_store(node.port, small[1])
    assert [o.status for o in outcomes] == [0, 0], outcomes
    node.wait_published(small[3], small[4], timeout=60)
    assert readyz(node.url)[0] == 200
    node_answers(node)


MID = SlideSpec(width=2048, height=2048, seed=703, transfer_syntax="explicit", downsamples=(1, 4, 16))

def test_disk_fills_while_converting_nothing_partial_then_published(small_fs, node_process, series_factory):
    mid = series_factory(MID)
    node = node_process("--mode", "reencode", data=small_fs / "data", disk_reserve_mb=20)
    ae = AE(ae_title="HOLDER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(WSI_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="WSINODE")
    assert assoc.is_established
    assert [int(assoc.send_c_store(f).Status) for f in mid[1]] == [0] * len(mid[1])
    filler = fill(small_fs, 0.2)  # the slide is in; its conversion will find no room in serving
    assoc.release()  # the slide is complete: the conversion starts
    # The conversion runs into the full disk and the series is kept queued (not the slide's fault).
    wait_for(lambda: any(f"series {mid[3]}: " in line and "Retrying in" in line for line in node.log_text().splitlines()),
             60, 0.2, "the conversion to find no space and the series to be kept queued")
    serving = node.folder("serving")
    assert node.published(mid[3]) is None
    assert [p.name for p in serving.iterdir()] == [], list(serving.iterdir())  # nothing partial
    assert not any(node.folder("quarantine").rglob("*.dcm")), "the slide was quarantined for a full disk"
    status, body = readyz(node.url)
    assert status == 503 and "disk_space" in body["failing"], body
    filler.unlink()
    node.wait_published(mid[3], mid[4], timeout=90)
    node_answers(node)
