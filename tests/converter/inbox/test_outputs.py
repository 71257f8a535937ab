"""Tests of converter/inbox/outputs.py: output names in serving and the already-published check."""

from __future__ import annotations

import json
from pathlib import Path

from converter.conversion.run import sidecar_path
from converter.inbox.outputs import sidecar_matches, target_for
from converter.inbox.state import StateStore


def test_target_names(tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    serving.mkdir()
    store = StateStore(tmp_path / "state.sqlite")
    try:
        store.put_file("case 7/a.dcm", "x", 1, 0, "dicom", "1.2.3")
        store.put_file("single.dcm", "x", 1, 0, "dicom", "1.2.4")
        rows = store.files()
        assert target_for("1.2.3", [rows["case 7/a.dcm"]], serving, "uid", store) == serving / "1.2.3.tiff"
        drop = target_for("1.2.3", [rows["case 7/a.dcm"]], serving, "drop-name", store)
        assert drop.parent == serving and drop.suffix == ".tiff" and drop.stem != "1.2.3"
        assert target_for("1.2.4", [rows["single.dcm"]], serving, "drop-name", store) == serving / "single.tiff"
        # Two series in one drop: each name gets a hash of its UID.
        store.put_file("case 7/b.dcm", "x", 1, 0, "dicom", "9.9")
        two = target_for("1.2.3", [rows["case 7/a.dcm"]], serving, "drop-name", store)
        assert two != drop and two.stem.startswith(drop.stem + "-")
        # A name another series published is not taken.
        (serving / "1.2.3.tiff").write_bytes(b"x")
        sidecar_path(serving / "1.2.3.tiff").write_text(json.dumps({"series_uid": "other"}))
        assert target_for("1.2.3", [rows["case 7/a.dcm"]], serving, "uid", store).name.startswith("1.2.3-")
        # A series keeps the output it was given.
        store.set_series("1.2.3", output=str(serving / "kept.tiff"))
        assert target_for("1.2.3", [rows["case 7/a.dcm"]], serving, "uid", store) == serving / "kept.tiff"
    finally:
        store.close()


def test_sidecar_matches_only_the_same_instances(tmp_path: Path) -> None:
    target = tmp_path / "s.tiff"
    assert not sidecar_matches(target, "1.2", ["a", "b"])
    target.write_bytes(b"x")
    assert not sidecar_matches(target, "1.2", ["a", "b"])  # no sidecar
    sidecar_path(target).write_text(json.dumps(
        {"series_uid": "1.2", "status": "published", "source": {"input_sop_instance_uids": ["a", "b"]}}))
    assert sidecar_matches(target, "1.2", ["a", "b"])
    assert not sidecar_matches(target, "1.2", ["a", "b", "c"])
    assert not sidecar_matches(target, "9.9", ["a", "b"])
