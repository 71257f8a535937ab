"""Build the N-EVENT-REPORT of a storage commitment (PS3.4 J.3.3, Table J.3-2). Pure: no I/O.

Event Type 1 "Storage Commitment Request Successful": the Transaction UID and a Referenced SOP
Sequence of every instance. Event Type 2 "Storage Commitment Request Complete - Failures Exist": the
committed ones (Referenced SOP Sequence, when there are any) and a Failed SOP Sequence (0008,1198)
whose items carry a Failure Reason (0008,1197) from J.3.3's list.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from scp.commitment.request import Reference

EVENT_SUCCESS = 1
EVENT_FAILURES = 2

# Failure Reason values, PS3.4 J.3.3 (Storage Commitment Result), Table J.3-2 notes.
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131
RESOURCE_LIMITATION = 0x0213

FAILURE_NAMES = {
    PROCESSING_FAILURE: "processing failure",
    NO_SUCH_OBJECT_INSTANCE: "no such object instance",
    CLASS_INSTANCE_CONFLICT: "class/instance conflict",
    SOP_CLASS_NOT_SUPPORTED: "referenced SOP class not supported",
    DUPLICATE_TRANSACTION_UID: "duplicate transaction UID",
    RESOURCE_LIMITATION: "resource limitation",
}


@dataclass(frozen=True)
class Outcome:
    """What the check found: the committed references and the failed ones with their Failure Reason."""

    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, int], ...]

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES if self.failed else EVENT_SUCCESS

    def summary(self) -> str:
        """For the log: counts and the reasons, never patient data."""
        text = f"{len(self.committed)} committed, {len(self.failed)} failed"
        if self.failed:
            counts: dict[int, int] = {}
            for _, reason in self.failed:
                counts[reason] = counts.get(reason, 0) + 1
            text += " (" + ", ".join(f"{n} {FAILURE_NAMES.get(r, 'failure')} 0x{r:04X}" for r, n in sorted(counts.items())) + ")"
        return text


def _ref_item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def event_information(transaction_uid: str, outcome: Outcome, retrieve_aet: str = "") -> Dataset:
    """The Event Information dataset of the N-EVENT-REPORT for `outcome` (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if retrieve_aet:
        ds.RetrieveAETitle = retrieve_aet
    if outcome.committed or not outcome.failed:
        ds.ReferencedSOPSequence = Sequence([_ref_item(r) for r in outcome.committed])
    if outcome.failed:
        failed = []
        for ref, reason in outcome.failed:
            item = _ref_item(ref)
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = Sequence(failed)
    return ds
