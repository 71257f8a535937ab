"""Moving originals out of the inbox: to the archive once their output is published, to the
quarantine (with a reason file) when they cannot be converted.

Nothing is deleted and nothing is overwritten: every destination gets a free name
(:func:`unique_path`), every move is durable (:func:`converter.durable.durable_move`), and the
quarantine's reason file says what went wrong and how to retry. The state database follows each
move, so a restart knows where every original is. Paths follow :mod:`converter.inbox.naming`: the
archive keeps every name as it is and refuses one that could leave the folder (the file stays in
the inbox, with an error in the log); the quarantine, which must take anything, escapes such names.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from converter.durable import atomic_write_text, durable_move
from converter.inbox import naming
from converter.inbox.passthrough import companion_folder
from converter.inbox.state import FileRow, StateStore

log = logging.getLogger("wsi_node.batch")


def archive_files(rows: list[FileRow], archive: Path, store: StateStore) -> None:
    """Move the originals of a published output into `archive` (same relative paths)."""
    for row in rows:
        src = Path(row.location)
        if not src.exists():
            continue
        try:
            dest = unique_path(archive / naming.relative(row.rel))
            durable_move(src, dest)
        except naming.UnsafeNameError as exc:
            log.error("cannot archive %s: %s It stays in the inbox.", naming.escaped(row.rel), exc)
            continue
        except OSError as exc:
            # The output is published; the original stays in the inbox and the next pass retries.
            log.error("cannot archive %s to %s: %s; it stays in the inbox and will be retried. Fix: check the archive folder",
                      row.rel, dest, exc)
            continue
        store.move_file(row.rel, f"archive:{dest.relative_to(archive).as_posix()}", str(dest), "archived")


def quarantine_file(row: FileRow, reason: str, quarantine: Path, store: StateStore) -> None:
    """Move one file (and a MIRAX companion folder) into `quarantine`, with a reason file beside it."""
    src = Path(row.location)
    dest = unique_path(quarantine / naming.relative(row.rel, quarantine=True))
    log.error("quarantined %s: %s", naming.escaped(row.rel), reason)
    if src.exists():
        folder = companion_folder(src)
        durable_move(src, dest)
        if folder is not None:
            for item in sorted(folder.rglob("*")):
                if item.is_file():
                    durable_move(item, dest.with_name(dest.name[: -len(".mrxs")]) / item.relative_to(folder))
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest.with_name(dest.name + ".reason.txt"), _reason_text(naming.escaped(row.rel), reason))
    store.forget_files([row.rel])


def quarantine_series(uid: str, rows: list[FileRow], reason: str, quarantine: Path, store: StateStore) -> None:
    """Move the files of a failed series into one folder of `quarantine`, with a reason file beside it."""
    folder = quarantine / naming.uid_name(uid)
    for row in rows:
        src = Path(row.location)
        if src.exists():
            durable_move(src, unique_path(folder / naming.relative(row.rel, quarantine=True)))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder.with_name(folder.name + ".reason.txt"), _reason_text(f"series {uid}", reason))
    store.forget_files([r.rel for r in rows])


def unique_path(path: Path) -> Path:
    """`path`, or the same name with -2, -3, ... when something is already there (nothing is overwritten)."""
    suffix = naming.split_name(path.name)[1]

    def taken(p: Path) -> bool:
        return p.exists() or (suffix.lower() == ".mrxs" and p.with_name(p.name[: -len(suffix)]).exists())

    if not taken(path):
        return path
    n = 2
    while taken(candidate := path.with_name(naming.numbered(path.name, n))):
        n += 1
    return candidate


def _reason_text(what: str, reason: str) -> str:
    return (
        f"{what}\n\n{reason}\n\n"
        f"Quarantined by wsi-node at {time.strftime('%Y-%m-%d %H:%M:%S %z')}.\n"
        "Nothing was deleted. After fixing the cause, move the file(s) back into the inbox.\n"
    )
