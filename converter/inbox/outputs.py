"""The published output of a series: where in serving it goes, and whether it is already there.

A series keeps the output path it was first given (re-opened series are converted onto it). New
names come from the drop (``naming: drop-name``) or the SeriesInstanceUID, and never take a file
that another series published. The output's sidecar records the SOPInstanceUIDs it was made from
(the fingerprint), so a run that stopped between publishing and archiving can tell, on restart,
that the output is already there for exactly these instances and need not convert again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from converter.conversion.run import sidecar_path
from converter.inbox import naming
from converter.inbox.state import FileRow, StateStore
from converter.source.instance import WsiInstance

log = logging.getLogger("wsi_node.batch")


def sop_fingerprint(instances: list[WsiInstance]) -> list[str]:
    """The instances an output is made from, as its sidecar and the state database record them."""
    return sorted(i.sop_instance_uid for i in instances)


def unique_by_sop(instances: list[WsiInstance]) -> list[WsiInstance]:
    seen: dict[str, WsiInstance] = {}
    for inst in instances:
        seen.setdefault(inst.sop_instance_uid, inst)
    return list(seen.values())


def target_for(uid: str, members: list[FileRow], serving: Path, naming_rule: str, store: StateStore) -> Path:
    """The output path of series `uid` (whose inbox files are `members`) in `serving`.

    Names follow :mod:`converter.inbox.naming`: a drop's name is kept as it is (Unicode, spaces,
    dots); a dropped file loses only its extension (``a.b.dcm`` -> ``a.b.tiff``). A drop name the
    rules refuse (control characters, ...) is not used: the output is named by the UID and the
    reason is logged. Two series never get one name: several series in one drop, or a name another
    series published, get ``-<8 hex digits of sha1(uid)>`` before ``.tiff``.
    """
    current = store.series(uid)
    if current and current.get("output"):
        return Path(current["output"])
    tag = hashlib.sha1(uid.encode()).hexdigest()[:8]
    name = naming.with_extension(naming.uid_name(uid), ".tiff")
    if naming_rule == "drop-name":
        unit = members[0].rel.split("/", 1)[0]
        base = unit if "/" in members[0].rel else naming.split_name(unit)[0]
        why = naming.refusal(base + ".tiff")
        if why is not None:
            log.warning("series %s: the drop name cannot name the output (%s); using the SeriesInstanceUID. "
                        "Fix: rename the drop", uid, why)
        else:
            name = naming.with_extension(base, ".tiff")
            others = {r.series_uid for r in store.files().values() if r.kind == "dicom" and r.rel.split("/", 1)[0] == unit}
            if len(others) > 1:
                name = naming.tagged(name, tag)
    target = serving / name
    if target.exists() and _sidecar_uid(target) not in (None, uid):
        target = serving / naming.tagged(name, tag)
    return target


def _sidecar_uid(target: Path) -> str | None:
    try:
        return json.loads(sidecar_path(target).read_text()).get("series_uid")
    except (OSError, ValueError):
        return None


def sidecar_matches(target: Path, uid: str, fingerprint: list[str]) -> bool:
    """Whether `target` is published for series `uid` from exactly the instances of `fingerprint`."""
    if not target.exists():
        return False
    try:
        data = json.loads(sidecar_path(target).read_text())
    except (OSError, ValueError):
        return False
    used = data.get("source", {}).get("input_sop_instance_uids")
    return data.get("series_uid") == uid and data.get("status") == "published" and used == fingerprint
