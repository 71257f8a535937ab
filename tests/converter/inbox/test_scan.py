"""Tests of converter/inbox/scan.py: temporary names, MIRAX data folders, classification and the settle rule.

(The whole pipeline on real folders is tested in tests/converter/cli/test_batch_converter.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from converter.inbox.scan import classify, is_temporary, scan_inbox, walk_inbox
from converter.inbox.state import StateStore
from converter.testkit import SlideSpec, write_series


@pytest.mark.parametrize(
    ("name", "temporary"),
    [(".hidden.dcm", True), ("~lock.dcm", True), ("a.dcm.part", True), ("A.TMP", True), ("slide.svs.crdownload", True),
     ("a.dcm", False), ("slide.svs", False), ("part.dcm", False)],
)
def test_is_temporary(name: str, temporary: bool) -> None:
    assert is_temporary(name) is temporary


def test_walk_inbox_skips_temporary_names_and_mirax_data_folders(tmp_path: Path) -> None:
    (tmp_path / "drop" / "sub").mkdir(parents=True)
    (tmp_path / "drop" / "sub" / "a.dcm").write_bytes(b"x")
    (tmp_path / "drop" / "b.dcm.part").write_bytes(b"x")
    (tmp_path / ".incoming").mkdir()
    (tmp_path / ".incoming" / "c.dcm").write_bytes(b"x")
    (tmp_path / "slide.mrxs").write_bytes(b"x")
    (tmp_path / "slide").mkdir()
    (tmp_path / "slide" / "Data0000.dat").write_bytes(b"x")
    entries = sorted(walk_inbox(tmp_path), key=lambda e: e.rel)
    assert [e.rel for e in entries] == ["drop/sub/a.dcm", "slide.mrxs"]
    assert [e.unit for e in entries] == ["drop", "slide.mrxs"]
    assert entries[0].size == 1
    assert list(walk_inbox(tmp_path / "absent")) == []


def test_classify(tmp_path: Path) -> None:
    paths = write_series(SlideSpec(width=64, height=64, tile_size=64), tmp_path / "s")
    no_suffix = paths[0].with_name("instance")  # recognised by the DICM marker
    paths[0].rename(no_suffix)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "slide.svs").write_bytes(b"x")
    rows = {e.rel: classify(e) for e in walk_inbox(tmp_path)}
    assert rows["s/instance"].kind == "dicom" and rows["s/instance"].series_uid
    assert rows["s/instance"].header.sop_instance_uid
    assert rows["slide.svs"].kind == "passthrough"
    assert rows["notes.txt"].kind == "rejected" and "Fix: remove it from the inbox." in rows["notes.txt"].reason
    assert rows["broken.dcm"].kind == "rejected" and rows["broken.dcm"].reason


def test_scan_waits_for_every_file_of_a_unit_to_settle(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "drop").mkdir(parents=True)
    old, new = inbox / "drop" / "old.svs", inbox / "drop" / "new.svs"
    alone = inbox / "alone.svs"
    for p in (old, new, alone):
        p.write_bytes(b"x")
    now = 1_000_000.0
    os.utime(old, (now - 100, now - 100))
    os.utime(alone, (now - 100, now - 100))
    os.utime(new, (now - 1, now - 1))
    store = StateStore(tmp_path / "state.sqlite")
    try:
        rows, unsettled = scan_inbox(inbox, store, now, 5.0, set(), None)
        assert unsettled == {"drop"}
        assert sorted(r.rel for r in rows) == ["alone.svs", "drop/old.svs"]  # the caller holds back unsettled units
        assert set(store.files()) == {"alone.svs", "drop/old.svs"}  # classified once, remembered
        rows, unsettled = scan_inbox(inbox, store, now + 10, 5.0, {"alone.svs"}, None)
        assert unsettled == set() and sorted(r.rel for r in rows) == ["drop/new.svs", "drop/old.svs"]  # busy: skipped
    finally:
        store.close()
