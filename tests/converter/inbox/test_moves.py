"""Tests of converter/inbox/moves.py: nothing is overwritten, quarantined files come with a reason."""

from __future__ import annotations

from pathlib import Path

from converter.inbox.moves import archive_files, quarantine_file, quarantine_series, unique_path
from converter.inbox.state import StateStore


def test_unique_path_never_takes_an_existing_name(tmp_path: Path) -> None:
    assert unique_path(tmp_path / "a.dcm") == tmp_path / "a.dcm"
    (tmp_path / "a.dcm").write_bytes(b"x")
    assert unique_path(tmp_path / "a.dcm") == tmp_path / "a-2.dcm"
    (tmp_path / "a-2.dcm").write_bytes(b"x")
    assert unique_path(tmp_path / "a.dcm") == tmp_path / "a-3.dcm"
    (tmp_path / "s.ome.tiff").write_bytes(b"x")
    assert unique_path(tmp_path / "s.ome.tiff") == tmp_path / "s-2.ome.tiff"  # the whole format suffix is kept
    (tmp_path / "m").mkdir()  # a MIRAX data folder takes its slide's name
    assert unique_path(tmp_path / "m.mrxs") == tmp_path / "m-2.mrxs"


def _row(store: StateStore, inbox: Path, rel: str):
    path = inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    store.put_file(rel, str(path), 4, 0, "passthrough")
    return store.files()[rel]


def test_archive_and_quarantine_move_and_record(tmp_path: Path) -> None:
    inbox, archive, quarantine = tmp_path / "inbox", tmp_path / "archive", tmp_path / "quarantine"
    store = StateStore(tmp_path / "state.sqlite")
    try:
        archived = _row(store, inbox, "drop/a.svs")
        (archive / "drop").mkdir(parents=True)
        (archive / "drop" / "a.svs").write_bytes(b"older")
        archive_files([archived], archive, store)
        assert (archive / "drop" / "a-2.svs").read_bytes() == b"data" and not (inbox / "drop" / "a.svs").exists()
        row = store.files(["archive:drop/a-2.svs"])["archive:drop/a-2.svs"]  # archived rows are kept, not listed as pending
        assert (row.state, row.location) == ("archived", str(archive / "drop" / "a-2.svs"))

        bad = _row(store, inbox, "b.svs")
        quarantine_file(bad, "cannot read it", quarantine, store)
        assert (quarantine / "b.svs").read_bytes() == b"data"
        reason = (quarantine / "b.svs.reason.txt").read_text()
        assert reason.startswith("b.svs\n\ncannot read it\n") and "Nothing was deleted" in reason
        assert "b.svs" not in store.files()

        parts = [_row(store, inbox, "c/1.dcm"), _row(store, inbox, "c/2.dcm")]
        quarantine_series("1.2.3", parts, "conversion failed", quarantine, store)
        assert sorted(p.name for p in (quarantine / "1.2.3" / "c").iterdir()) == ["1.dcm", "2.dcm"]
        assert (quarantine / "1.2.3.reason.txt").read_text().startswith("series 1.2.3\n\nconversion failed\n")
        assert not {"c/1.dcm", "c/2.dcm"} & set(store.files())
    finally:
        store.close()
