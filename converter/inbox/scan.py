"""Scanning the inbox: which files are there, which have settled, and what each one is.

The inbox is shared with whatever drops slides into it (a copy, an rsync, a scanner's export), so
a file counts only once it is whole:

- a file counts only when its mtime is at least `settle_seconds` old, and names that look
  temporary (leading dot, .part, .tmp, ...) are ignored;
- a dropped folder (a top-level entry of the inbox, its "unit") is handled only when every file in
  it has settled, so a slide being copied is not converted half-way;
- instances the node received itself are written atomically, so they do not wait: when their
  series is ready is the completeness tracker's to decide.

Each settled file is classified once (passthrough format, DICOM with its header cached, or
rejected with a reason) and remembered in the state database until it changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from converter.errors import InputError, InstanceRefused
from converter.inbox import naming
from converter.inbox.passthrough import passthrough_suffix
from converter.inbox.state import FileRow, StateStore
from converter.source.discover import claimed_series
from converter.source.instance import read_instance

if TYPE_CHECKING:
    from converter.inbox.tracker import Tracker

TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", ".download", ".incomplete")
DICOM_SUFFIXES = (".dcm", ".dicom")


def is_temporary(name: str) -> bool:
    lower = name.lower()
    return name.startswith(".") or name.startswith("~") or lower.endswith(TEMP_SUFFIXES)


@dataclass
class Entry:
    rel: str
    path: Path
    size: int
    mtime_ns: int

    @property
    def unit(self) -> str:
        return self.rel.split("/", 1)[0]


def walk_inbox(inbox: Path) -> Iterator[Entry]:
    """Every non-temporary file under the inbox (MIRAX data folders are part of their .mrxs)."""
    stack = [inbox]
    while stack:
        folder = stack.pop()
        try:
            items = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        names = {i.name.lower() for i in items}
        for item in items:
            if is_temporary(item.name):
                continue
            if item.is_dir(follow_symlinks=False):
                if f"{item.name.lower()}.mrxs" in names:
                    continue
                stack.append(Path(item.path))
            elif item.is_file(follow_symlinks=False):
                st = item.stat(follow_symlinks=False)
                path = Path(item.path)
                yield Entry(path.relative_to(inbox).as_posix(), path, st.st_size, st.st_mtime_ns)


def _has_dicm_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as fp:
            fp.seek(128)
            return fp.read(4) == b"DICM"
    except OSError:
        return False


def classify(e: Entry) -> FileRow:
    """What a settled file is: a passthrough format, a DICOM instance (header read), or rejected with a reason."""
    for part in e.rel.split("/"):
        # A name the archive would refuse (control characters, invalid UTF-8) could never leave the
        # inbox: reject it now, so it goes to quarantine under an escaped name with the reason.
        problem = naming.refusal(part, output=False)
        if problem is not None:
            reason = f"{naming.escaped(e.rel)}: {problem}. Fix: rename the file (or folder) and drop it again."
            return FileRow(e.rel, str(e.path), e.size, e.mtime_ns, "rejected", None, None, reason, "pending")
    if passthrough_suffix(e.rel):
        return FileRow(e.rel, str(e.path), e.size, e.mtime_ns, "passthrough", None, None, None, "pending")
    if e.rel.lower().endswith(DICOM_SUFFIXES) or _has_dicm_marker(e.path):
        try:
            inst = read_instance(e.path)
        except InputError as exc:
            # A WSI instance that cannot be used (truncated, invalid): the series it claims to belong to
            # must not be converted from the rest as if it were whole (InboxPipeline.run_pass). Other SOP
            # classes in the folder (a CT, an annotation) are no part of the slide and claim nothing.
            claimed = claimed_series(e.path) if isinstance(exc, InstanceRefused) else None
            return FileRow(e.rel, str(e.path), e.size, e.mtime_ns, "rejected", claimed, None, str(exc), "pending")
        return FileRow(e.rel, str(e.path), e.size, e.mtime_ns, "dicom", inst.series_uid, inst, None, "pending")
    reason = f"{e.path}: not DICOM and not a known slide format (.svs .ndpi .mrxs .scn .czi .tif .tiff .ome.tif)."
    return FileRow(e.rel, str(e.path), e.size, e.mtime_ns, "rejected", None, None, reason + " Fix: remove it from the inbox.", "pending")


def scan_inbox(inbox: Path, store: StateStore, now: float, settle_seconds: float, busy: set[str],
               tracker: Tracker | None) -> tuple[list[FileRow], set[str]]:
    """Settled files (classified, headers cached) and the drop units still being written.

    `now` is the current time (seconds, the clock of the files' mtimes); files in `busy` (part of a
    running job) are skipped; a file the state database already knows with the same size and mtime
    is not read again.
    """
    now_ns = int(now * 1e9)
    settle_ns = int(settle_seconds * 1e9)
    known = store.files()
    rows: list[FileRow] = []
    unsettled: set[str] = set()
    for e in walk_inbox(inbox):
        if e.rel in busy:
            continue
        row = known.get(e.rel)
        same = row is not None and (row.size, row.mtime_ns) == (e.size, e.mtime_ns)
        received = same and row.kind == "dicom" and tracker is not None and tracker.tracks(row.series_uid)
        if _mrxs_waiting_for_data(e, now_ns):
            unsettled.add(e.unit)
            continue
        if now_ns - e.mtime_ns < settle_ns and not received:
            # Received instances are written atomically and their series' readiness is the
            # tracker's to decide; everything else waits until it has settled.
            unsettled.add(e.unit)
            continue
        if not same:
            row = classify(e)
            store.put_file(row.rel, row.location, row.size, row.mtime_ns, row.kind, row.series_uid, row.header, row.reason)
        rows.append(row)
    return rows, unsettled


MRXS_DATA_GRACE_S = 300.0
"""How long a .mrxs waits for its data folder (copied separately, often after the index file) before
the passthrough check quarantines it for the missing folder."""


def _mrxs_waiting_for_data(e: Entry, now_ns: int) -> bool:
    if not e.rel.lower().endswith(".mrxs") or now_ns - e.mtime_ns >= MRXS_DATA_GRACE_S * 1e9:
        return False
    return not e.path.with_suffix("").is_dir()
