"""Which referenced instances are committed: a function of where the node keeps them. Pure: no I/O.

An instance is committed (PS3.4 J.3.3: the SCP has taken responsibility for it) when the node holds
it durably under the same SOP Class: in the inbox (received, fsynced, not converted yet), in the
archive (converted; the original kept), or converted into a published TIFF whose report lists it.
Everything else fails with a J.3.3 Failure Reason: unknown (never received, or refused at receipt)
0x0112, or 0x0122 when the node does not store that SOP Class at all; received under another SOP
Class 0x0119; kept in quarantine because it could not be converted 0x0110 (the sender should keep
its copy). Where an instance is comes from :mod:`scp.commitment.locate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scp.commitment.report import (CLASS_INSTANCE_CONFLICT, NO_SUCH_OBJECT_INSTANCE, PROCESSING_FAILURE,
                                   SOP_CLASS_NOT_SUPPORTED, Outcome)
from scp.commitment.request import Reference

COMMITTED_PLACES = ("inbox", "archive", "converted")


@dataclass(frozen=True)
class Located:
    """Where the node has one SOP Instance."""

    sop_class_uid: str
    series_uid: str
    place: str
    """inbox | archive | converted | quarantine."""


def check(references: Iterable[Reference], found: dict[str, Located],
          supported_classes: frozenset[str] | None = None) -> Outcome:
    """The outcome for `references`, given what `found` (SOP Instance UID -> Located) says the node holds.
    `supported_classes`: the SOP Classes the node stores (None: any)."""
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for ref in references:
        where = found.get(ref.sop_instance_uid)
        if where is None:
            unsupported = supported_classes is not None and ref.sop_class_uid not in supported_classes
            failed.append((ref, SOP_CLASS_NOT_SUPPORTED if unsupported else NO_SUCH_OBJECT_INSTANCE))
        elif where.sop_class_uid != ref.sop_class_uid:
            failed.append((ref, CLASS_INSTANCE_CONFLICT))
        elif where.place not in COMMITTED_PLACES:
            failed.append((ref, PROCESSING_FAILURE))
        else:
            committed.append(ref)
    return Outcome(tuple(committed), tuple(failed))


def committed_series(outcome: Outcome, found: dict[str, Located]) -> dict[str, frozenset[str]]:
    """Series UID -> the SOP Instance UIDs of it the request committed; empty when anything failed (a request
    with failures is no sign that a slide is complete)."""
    if outcome.failed:
        return {}
    out: dict[str, set[str]] = {}
    for ref in outcome.committed:
        out.setdefault(found[ref.sop_instance_uid].series_uid, set()).add(ref.sop_instance_uid)
    return {uid: frozenset(sops) for uid, sops in out.items()}
