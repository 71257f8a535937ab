"""Storing one received instance durably in the inbox.

Shared by every receiver (DIMSE C-STORE, DICOMweb STOW-RS): the instance is
validated, written as a DICOM Part 10 file under
`inbox/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm` by
fsync + rename from a temporary file on the same filesystem, and only then
reported as stored. UIDs are checked before they become path parts.

Duplicates: the same SOPInstanceUID with the same bytes is a success without
a second copy. With different bytes, the last received copy wins (the sender
re-sent it on purpose), and the earlier copy is not deleted but moved to
`archive/replaced/<Study>/<Series>/<SOP>.<time>.dcm`; both are logged.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from converter.source.instance import WsiInstance, instance_from_dataset, read_dataset_header, sop_class_name
from converter.errors import InputError, NotWsiError
from converter.durable import durable_move, fsync_dir

log = logging.getLogger("wsi_node.storage")

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(UID_RE.match(text)) and not any(
        len(part) > 1 and part.startswith("0") for part in text.split(".")
    )


@dataclass
class StoreResult:
    status: str
    """'stored', 'duplicate', 'replaced', 'invalid', 'not-wsi', 'no-space', 'error'."""
    message: str = ""
    path: Path | None = None
    instance: WsiInstance | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate", "replaced")


class InstanceStore:
    def __init__(self, inbox: Path, archive: Path, quarantine: Path, reserve_bytes: int = 1 << 30, keep_other: bool = False) -> None:
        self.inbox = Path(inbox)
        self.archive = Path(archive)
        self.quarantine = Path(quarantine)
        self.reserve_bytes = reserve_bytes
        self.keep_other = keep_other
        self.incoming = self.inbox / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.inbox).free

    def has_room(self) -> bool:
        return self.free_bytes() >= self.reserve_bytes

    def clean_incoming(self, older_than: float = 0) -> int:
        """Remove temporary files of transfers that never completed (aborted associations, crashes)."""
        removed = 0
        now = time.time()
        for item in self.incoming.iterdir():
            if now - item.stat().st_mtime >= older_than:
                item.unlink(missing_ok=True)
                removed += 1
        return removed

    def store_file(self, temp: Path, peer: str) -> StoreResult:
        """Validate a received Part 10 file and move it into the inbox. `temp` is consumed on success."""
        if not self.has_room():
            return StoreResult("no-space", f"free disk space below the reserve of {self.reserve_bytes // (1 << 20)} MB")
        try:
            ds, location = read_dataset_header(temp)
        except InputError as exc:
            return StoreResult("invalid", f"the dataset cannot be parsed: {exc.problem}")
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_uid, study, series = (str(ds.get(k, "")) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
        bad = [name for name, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study), ("SeriesInstanceUID", series)) if not valid_uid(v)]
        if bad:
            return StoreResult("invalid", f"missing or invalid {', '.join(bad)}", sop_class_uid=sop_class, sop_instance_uid=sop_uid)
        try:
            instance = instance_from_dataset(ds, str(temp), location)
        except NotWsiError:
            if not self.keep_other:
                return StoreResult("not-wsi", f"{sop_class_name(sop_class)} is not a whole-slide image", sop_class_uid=sop_class, sop_instance_uid=sop_uid)
            dest = _unique(self.quarantine / "not-wsi" / study / series / f"{sop_uid}.dcm")
            self._place(temp, dest)
            log.warning("stored %s from %s in quarantine: %s is not a whole-slide image", sop_uid, peer, sop_class_name(sop_class))
            return StoreResult("stored", "kept in quarantine (not a whole-slide image)", dest, None, sop_class, sop_uid)
        except InputError as exc:
            return StoreResult("invalid", exc.problem, sop_class_uid=sop_class, sop_instance_uid=sop_uid)

        target = self.inbox / study / series / f"{sop_uid}.dcm"
        status = "stored"
        if target.exists():
            if filecmp.cmp(temp, target, shallow=False):
                temp.unlink(missing_ok=True)
                log.info("instance %s from %s: identical copy already stored; not stored twice", sop_uid, peer)
                return StoreResult("duplicate", "identical copy already stored", target, replace(instance, path=str(target)), sop_class, sop_uid)
            replaced = _unique(self.archive / "replaced" / study / series / f"{sop_uid}.{time.strftime('%Y%m%dT%H%M%S')}.dcm")
            durable_move(target, replaced)
            log.warning("instance %s from %s differs from the copy received before; the new one is used, the old one kept as %s", sop_uid, peer, replaced)
            status = "replaced"
        self._place(temp, target)
        stored = replace(instance, path=str(target))
        return StoreResult(status, "", target, stored, sop_class, sop_uid)

    @staticmethod
    def _place(temp: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "rb") as fp:
            os.fsync(fp.fileno())
        os.replace(temp, target)
        fsync_dir(target.parent)


def _unique(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
