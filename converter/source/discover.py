"""Finding DICOM instances in files and folders and grouping them into series.

Only headers are read. Every file that cannot be used becomes a rejection
with a message naming the file and the fix; nothing is skipped silently.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from converter.errors import InputError, InstanceRefused
from converter.inbox import naming
from converter.source.instance import WsiInstance, read_instance
from converter.source.pixel_probe import iter_files


@dataclass
class Rejection:
    path: str
    message: str
    series_uid: str | None = None
    """The series the file claims to belong to, when its header still says (e.g. truncated pixel data)."""


@dataclass
class Discovery:
    series: dict[str, list[WsiInstance]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)


def discover(inputs: Iterable[str | Path]) -> Discovery:
    found = Discovery()
    by_series: dict[str, dict[str, WsiInstance]] = defaultdict(dict)
    for path in iter_files(inputs):
        if not path.exists():
            found.rejected.append(Rejection(str(path), f"{path}: no such file or folder."))
            continue
        try:
            inst = read_instance(path)
        except InputError as exc:
            # Only an unusable WSI instance spoils its series; another SOP class beside it (a CT) does not.
            claimed = claimed_series(path) if isinstance(exc, InstanceRefused) else None
            found.rejected.append(Rejection(str(path), str(exc), claimed))
            continue
        known = by_series[inst.series_uid]
        if inst.sop_instance_uid in known:
            found.notes.setdefault(inst.series_uid, []).append(
                f"{path.name} repeats SOPInstanceUID {inst.sop_instance_uid} of {known[inst.sop_instance_uid].name}; the first copy is used"
            )
            continue
        known[inst.sop_instance_uid] = inst
    found.series = {uid: list(members.values()) for uid, members in by_series.items()}
    return found


def claimed_series(path: Path) -> str | None:
    """SeriesInstanceUID of a file that was rejected, if a plain header read still finds one.

    A series with a rejected member must not be converted as if it were whole (a truncated level 0
    would otherwise leave a smaller slide that looks complete); this tells the caller which series.
    """
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"], force=False)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - anything unreadable simply claims no series
        return None
    return uid or None


def safe_name(value: str) -> str:
    """The output file name for a file name or a UID (rules: :mod:`converter.inbox.naming`).

    A safe name is kept as it is, stem and extension (Unicode, spaces, several dots); a UID is a
    safe name. A name the rules refuse (control characters, '/', '..', not UTF-8) comes back in its
    escaped spelling (``%XX``) so that this never raises; callers that must refuse such names check
    :func:`converter.inbox.naming.refusal` first (the passthrough check does, and quarantines the file).
    """
    return naming.output_name(naming.escaped(value))
