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
from pathlib import Path

from converter.conversion.run import sidecar_path
from converter.inbox.state import FileRow, StateStore
from converter.source.discover import safe_name
from converter.source.instance import WsiInstance


def sop_fingerprint(instances: list[WsiInstance]) -> list[str]:
    """The instances an output is made from, as its sidecar and the state database record them."""
    return sorted(i.sop_instance_uid for i in instances)


def unique_by_sop(instances: list[WsiInstance]) -> list[WsiInstance]:
    seen: dict[str, WsiInstance] = {}
    for inst in instances:
        seen.setdefault(inst.sop_instance_uid, inst)
    return list(seen.values())


def target_for(uid: str, members: list[FileRow], serving: Path, naming: str, store: StateStore) -> Path:
    """The output path of series `uid` (whose inbox files are `members`) in `serving`."""
    current = store.series(uid)
    if current and current.get("output"):
        return Path(current["output"])
    if naming == "drop-name":
        unit = members[0].rel.split("/", 1)[0]
        base = safe_name(Path(unit).stem if "/" not in members[0].rel else unit)
        others = {r.series_uid for r in store.files().values() if r.kind == "dicom" and r.rel.split("/", 1)[0] == unit}
        if len(others) > 1:
            base = f"{base}-{hashlib.sha1(uid.encode()).hexdigest()[:8]}"
    else:
        base = safe_name(uid)
    target = serving / f"{base}.tiff"
    if target.exists() and _sidecar_uid(target) not in (None, uid):
        target = serving / f"{base}-{hashlib.sha1(uid.encode()).hexdigest()[:8]}.tiff"
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
