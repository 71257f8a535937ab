"""Where the node holds SOP Instances: the state database and the folders (read only).

Received instances are stored as `<SOPInstanceUID>.dcm` (scp/storage.py) and registered by the node's
main loop in the state database's `files` table (converter/inbox/state.py) with their cached header;
converted ones move to the archive with their row (state 'archived'); a series whose conversion failed
leaves its rows and goes to quarantine. This module opens its own read-only connection and never writes.
Each file's header is checked (SOP Instance and Class UID) and the file itself must exist; an
instance whose original is gone but which a published output lists (series fingerprint) counts as
converted.

Cost: one pass over the `files` rows per request (no index on the file name), then one header per
referenced instance; measured at about 1 s per million rows.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path, PurePosixPath

from scp.commitment.check import Located


class NodeLocator:
    def __init__(self, state_db: Path, quarantine: Path | None = None) -> None:
        self.state_db = Path(state_db)
        self.quarantine = Path(quarantine) if quarantine else None

    def _connect(self) -> sqlite3.Connection | None:
        if not self.state_db.exists():
            return None
        return sqlite3.connect(f"file:{self.state_db}?mode=ro", uri=True, timeout=30)

    def locate(self, sop_uids: set[str]) -> dict[str, Located]:
        found: dict[str, Located] = {}
        db = self._connect()
        if db is not None:
            try:
                found.update(self._from_state(db, sop_uids))
            finally:
                db.close()
        missing = sop_uids - set(found)
        if missing and self.quarantine is not None and self.quarantine.is_dir():
            for path in self.quarantine.rglob("*.dcm"):
                if path.stem in missing:
                    found[path.stem] = self._quarantined(path)
        return found

    def _from_state(self, db: sqlite3.Connection, wanted: set[str]) -> dict[str, Located]:
        found: dict[str, Located] = {}
        candidates = []
        for rel, location, series_uid, state in db.execute(
                "SELECT rel, location, series_uid, state FROM files WHERE kind='dicom'"):
            stem = PurePosixPath(rel.split(":", 1)[-1]).stem
            if stem in wanted:
                candidates.append((rel, location, series_uid, state))
        for rel, location, series_uid, state in candidates:
            row = db.execute("SELECT header FROM files WHERE rel=?", (rel,)).fetchone()
            header = _header(row[0] if row else None)
            if header is None or getattr(header, "sop_instance_uid", None) not in wanted:
                continue
            if not Path(location).is_file():
                continue
            place = "archive" if state == "archived" else "inbox"
            if self.quarantine is not None and Path(location).is_relative_to(self.quarantine):
                place = "quarantine"
            found[header.sop_instance_uid] = Located(str(header.sop_class_uid), str(series_uid or header.series_uid), place)
        if len(found) < len(wanted):
            found.update(self._converted(db, wanted - set(found)))
        return found

    @staticmethod
    def _converted(db: sqlite3.Connection, wanted: set[str]) -> dict[str, Located]:
        """Instances whose file is gone but that a published output was made from (the series fingerprint)."""
        out: dict[str, Located] = {}
        for uid, fingerprint in db.execute("SELECT uid, fingerprint FROM series WHERE state='published' AND fingerprint IS NOT NULL"):
            try:
                sops = set(json.loads(fingerprint))
            except ValueError:
                continue
            hit = sops & wanted
            if not hit:
                continue
            classes = {}
            for (blob,) in db.execute("SELECT header FROM files WHERE series_uid=?", (uid,)):
                h = _header(blob)
                if h is not None:
                    classes[h.sop_instance_uid] = str(h.sop_class_uid)
            for sop in hit:
                if sop in classes:  # the class must be known to commit it
                    out[sop] = Located(classes[sop], uid, "converted")
        return out

    @staticmethod
    def _quarantined(path: Path) -> Located:
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"])
            return Located(str(ds.get("SOPClassUID", "")), str(ds.get("SeriesInstanceUID", "")), "quarantine")
        except Exception:
            return Located("", "", "quarantine")


def _header(blob: bytes | None) -> object | None:
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None
