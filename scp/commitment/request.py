"""Parse and validate one N-ACTION "Request Storage Commitment" (PS3.4 J.3.2). Pure: no I/O.

The Action Information (PS3.4 Table J.3-1) holds the Transaction UID (0008,1195) and the Referenced
SOP Sequence (0008,1199), one item per SOP Instance with Referenced SOP Class UID (0008,1150) and
Referenced SOP Instance UID (0008,1155). A request that cannot be understood is refused in the
N-ACTION response with a PS3.7 10.1.4.1.10 status and an ErrorComment; one that can is answered
0x0000 and its outcome comes later in the N-EVENT-REPORT (J.3.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scp.commitment import STORAGE_COMMITMENT_INSTANCE

ACTION_REQUEST_COMMITMENT = 1
"""Action Type ID 1: Request Storage Commitment (PS3.4 J.3.2, Table J.3-1)."""

# N-ACTION statuses, PS3.7 10.1.4.1.10 (Annex C) as used for J.3.2.
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
INVALID_SOP_INSTANCE = 0x0117
INVALID_ARGUMENT = 0x0115
NO_SUCH_ACTION = 0x0123
NOT_AUTHORISED = 0x0124
DUPLICATE_INVOCATION = 0x0210
RESOURCE_LIMITATION = 0x0213

MAX_REFERENCES = 100_000
"""More references than this in one request are refused 0x0213 (a slide has a few hundred instances at most)."""

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: object) -> bool:
    """PS3.5 9.1: digits and dots, at most 64 characters, no leading zero in a component."""
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text)) and not any(len(p) > 1 and p.startswith("0") for p in text.split("."))


@dataclass(frozen=True)
class Reference:
    """One referenced SOP Instance (an item of the Referenced SOP Sequence)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class Refusal:
    """The N-ACTION answer to a request that cannot be accepted: status and ErrorComment (<= 64 characters)."""

    status: int
    comment: str


def parse(action_type_id: object, requested_instance_uid: object, dataset: object) -> CommitmentRequest | Refusal:
    """The request, or the refusal to send back. `dataset` is the decoded Action Information (a pydicom
    Dataset or anything with .get), or None when it was missing or could not be decoded."""
    if action_type_id != ACTION_REQUEST_COMMITMENT:
        return Refusal(NO_SUCH_ACTION, f"Action Type ID {action_type_id} is not 1 (PS3.4 J.3.2)")
    if requested_instance_uid is not None and str(requested_instance_uid) != STORAGE_COMMITMENT_INSTANCE:
        return Refusal(INVALID_SOP_INSTANCE, f"Requested SOP Instance must be {STORAGE_COMMITMENT_INSTANCE}")
    if dataset is None:
        return Refusal(INVALID_ARGUMENT, "no Action Information (Transaction UID, Referenced SOP Sequence)")
    tuid = _text(dataset, "TransactionUID")
    if not tuid:
        return Refusal(INVALID_ARGUMENT, "missing Transaction UID (0008,1195)")
    if not valid_uid(tuid):
        return Refusal(INVALID_ARGUMENT, "Transaction UID (0008,1195) is not a valid UID")
    try:
        items = dataset.get("ReferencedSOPSequence", None)
    except Exception:
        items = None
    if items is None or isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        return Refusal(INVALID_ARGUMENT, "missing Referenced SOP Sequence (0008,1199)")
    if len(items) == 0:
        return Refusal(INVALID_ARGUMENT, "empty Referenced SOP Sequence (0008,1199)")
    if len(items) > MAX_REFERENCES:
        return Refusal(RESOURCE_LIMITATION, f"more than {MAX_REFERENCES} references in one request")
    refs: list[Reference] = []
    seen: set[str] = set()
    for n, item in enumerate(items, 1):
        if not hasattr(item, "get"):
            return Refusal(INVALID_ARGUMENT, f"Referenced SOP Sequence item {n} is not an item")
        cls, inst = _text(item, "ReferencedSOPClassUID"), _text(item, "ReferencedSOPInstanceUID")
        if not cls or not inst:
            missing = "SOP Class UID" if not cls else "SOP Instance UID"
            return Refusal(INVALID_ARGUMENT, f"item {n}: no Referenced {missing}")
        if not (valid_uid(cls) and valid_uid(inst)):
            return Refusal(INVALID_ARGUMENT, f"item {n}: Referenced SOP UID is not a valid UID")
        if inst not in seen:  # the same instance twice is committed once
            seen.add(inst)
            refs.append(Reference(cls, inst))
    return CommitmentRequest(tuid, tuple(refs))


def _text(ds: object, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")  # type: ignore[attr-defined]
    except Exception:  # a malformed value: treated as missing
        return ""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and hasattr(value, "append")):
        return ""  # a multi-valued UID is malformed here
    return str(value or "").strip().rstrip("\x00")
