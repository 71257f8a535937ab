"""The folders of an inbox pipeline under a test's tmp_path, and its settings."""

from __future__ import annotations

from pathlib import Path

from config.settings import BatchSettings


def inbox_settings(tmp: Path, max_concurrent: int = 2) -> BatchSettings:
    """Settings for a pipeline on folders under `tmp` (created), re-encoding, no settle time."""
    s = BatchSettings(inbox=tmp / "inbox", serving=tmp / "serving", archive=tmp / "archive", quarantine=tmp / "quarantine",
                      state_dir=tmp / "state", settle_seconds=0, max_concurrent=max_concurrent, mode="reencode")
    for d in (s.inbox, s.serving, s.archive, s.quarantine, s.state_dir):
        d.mkdir(parents=True, exist_ok=True)
    return s
