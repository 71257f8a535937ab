"""Re-sends after publication: an instance that arrives again once its series was published.

Senders re-send on purpose (a corrected slide) and by accident (a retry after a lost status).
The receivers keep the last copy in the inbox (scp/storage.py); once the series is published its
originals are in the archive, so the inbox copy is compared with the archived one here:

- identical bytes: nothing to do; the inbox copy is removed (the archive holds the same bytes);
- different bytes: the new copy is used. The archived copy moves, never deleted, to
  `archive/replaced/<its archive path>/<name>.<time>.dcm`, a warning names both copies, and the
  series is converted again; its output is replaced atomically.
"""

from __future__ import annotations

import filecmp
import logging
import time
from pathlib import Path

from converter.durable import durable_move
from converter.inbox.moves import unique_path
from converter.inbox.state import FileRow, StateStore

log = logging.getLogger("wsi_node.batch")


def resent_copies(uid: str, members: list[FileRow], published: set[str], store: StateStore,
                  archive: Path) -> tuple[list[FileRow], int]:
    """Handle the inbox copies of instances in the published output of series `uid`.

    Returns (the members still to convert, how many of them replaced an archived copy).
    """
    rows = store.series_files(uid)
    sop_of = {r.rel: StateStore.header(r).sop_instance_uid for r in rows if r.header is not None}
    archived = {sop_of[r.rel]: r for r in rows if r.state == "archived" and r.rel in sop_of}
    keep, replaced = [], 0
    for row in members:
        sop = sop_of.get(row.rel)
        old = archived.get(sop) if sop in published else None
        if old is None or not Path(old.location).exists():
            keep.append(row)
            continue
        if filecmp.cmp(row.location, old.location, shallow=False):
            log.info("series %s: %s is identical to the published instance %s (%s); not converted again",
                     uid, row.rel, sop, old.location)
            Path(row.location).unlink(missing_ok=True)
            store.forget_files([row.rel])
            continue
        rel = Path(old.rel.removeprefix("archive:"))
        dest = unique_path(archive / "replaced" / rel.parent / f"{rel.stem}.{time.strftime('%Y%m%dT%H%M%S')}{rel.suffix}")
        durable_move(Path(old.location), dest)
        store.move_file(old.rel, f"replaced:{dest.relative_to(archive).as_posix()}", str(dest), "replaced")
        log.warning("series %s: instance %s was re-sent with different content after publication: %s replaces the "
                    "published copy, which is kept as %s; converting the series again", uid, sop, row.location, dest)
        keep.append(row)
        replaced += 1
    return keep, replaced
