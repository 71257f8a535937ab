"""The checks a fault case ends with: nothing lost, duplicated or half-written, one conversion, a live node.

`audit_series` counts, for one series, the instances missing from the published output or the
archive (lost), SOP Instance UIDs held more than once (duplicates), unreadable or hidden
temporary files (partial), the TIFFs published for it and the conversions the state records;
`settled_audits` polls them until every series is archived and published.
`node_answers` checks the process is alive and answers C-ECHO and /healthz.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from tests.faults.harness import NodeProcess, c_echo, healthz


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@dataclass
class SeriesAudit:
    uid: str
    lost: list[str]
    duplicates: list[str]
    partial: list[str]
    tiffs: list[str]
    conversions: int
    state: str | None

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicates and not self.partial and len(self.tiffs) == 1 and self.conversions == 1


def audit_series(node: NodeProcess, study: str, uid: str, sops: list[str]) -> SeriesAudit:
    """Lost instances, duplicate copies, partial files, published TIFFs and conversions of one series."""
    data = node.published(uid)
    used = sorted(data["source"]["input_sop_instance_uids"]) if data else []
    archive = node.folder("archive") / study / uid
    copies: dict[str, int] = {}
    partial = []
    for f in sorted(archive.glob("*.dcm")) if archive.exists() else []:
        try:
            ds = pydicom.dcmread(f)
            _ = ds.PixelData
            copies[str(ds.SOPInstanceUID)] = copies.get(str(ds.SOPInstanceUID), 0) + 1
        except Exception:
            partial.append(str(f))
    lost = sorted(set(sops) - set(used) | {s for s in sops if s not in copies})
    duplicates = sorted(s for s, n in copies.items() if n > 1) + sorted(set(copies) - set(sops))
    serving = node.folder("serving")
    tiffs = sorted(p.name for p in serving.glob("*.tiff") if json_series(p) == uid)
    partial += [p.name for p in serving.iterdir() if p.name.startswith(".")]
    leftovers = [p for p in (node.folder("inbox") / study / uid).glob("*")] if (node.folder("inbox") / study / uid).exists() else []
    partial += [str(p) for p in leftovers]
    state = node.series_state(uid)
    conversions = (state or {}).get("conversions") or 0
    # A run killed after publishing but before recording it recognises the output by its sidecar on restart
    # ("already published for exactly these instances") and records it without a count: converted once.
    if conversions == 0 and data and any(f"series {uid}:" in line and "already published for exactly these instances" in line
                                         for line in node.log_text().splitlines()):
        conversions = 1
    return SeriesAudit(uid, lost, duplicates, partial, tiffs, conversions, (state or {}).get("state"))


def settled_audits(node: NodeProcess, series: list[tuple[str, str, list[str]]], timeout: float = 15.0) -> list[SeriesAudit]:
    """The audits once every series is archived and published, or as they stand at the deadline.

    Archiving follows publication on the node's main loop; polling for the end state instead of sleeping a
    fixed time keeps the kill -9 trials short without accepting anything less than that state."""
    deadline = time.monotonic() + timeout
    while True:
        audits = [audit_series(node, study, uid, sops) for study, uid, sops in series]
        if all(a.ok and a.state == "published" for a in audits) or time.monotonic() > deadline:
            return audits
        time.sleep(0.1)


def json_series(tiff: Path) -> str | None:
    try:
        return json.loads(tiff.with_suffix(".json").read_text()).get("series_uid")
    except (OSError, ValueError):
        return None


def node_answers(node: NodeProcess) -> None:
    """The node process is alive and answers C-ECHO and /healthz."""
    assert node.alive(), f"the node exited ({node.proc.returncode}):\n{node.log_text()[-3000:]}"
    assert c_echo(node.port), "the node does not answer C-ECHO"
    assert healthz(node.url), "the node does not answer /healthz"
