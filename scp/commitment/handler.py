"""The EVT_N_ACTION handler of the DIMSE receiver: answer "Request Storage Commitment" at once.

PS3.4 J.3.2: the SCP answers the N-ACTION when it has accepted the request, and reports the result
later (J.3.3). A request that cannot be accepted gets a failure status with an ErrorComment (PS3.7
10.1.4.1.10, C.4): malformed Action Information 0x0115, another action 0x0123, an AE that is not
in the commitment peers table 0x0124, a Transaction UID already in progress 0x0210. Every refusal
is a log line naming the AE title and the Transaction UID, and a count. The handler always
answers; it never raises into pynetdicom.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom.dataset import Dataset

from scp.commitment.request import (DUPLICATE_INVOCATION, INVALID_ARGUMENT, NOT_AUTHORISED, PROCESSING_FAILURE,
                                    SUCCESS, CommitmentRequest, Refusal, parse)

log = logging.getLogger("wsi_node.commitment")


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        text = "".join(c if c.isprintable() and c != "\\" else " " for c in comment).strip()
        ds.ErrorComment = text if len(text) <= 64 else text[:61] + "..."  # LO: 64 characters (PS3.5 6.2)
    return ds


def handle_n_action(event: object, service: object, refused: Callable[[str, str], None]) -> tuple[Dataset, None]:
    """(status, no Action Reply): J.3.2 defines no Action Reply for Request Storage Commitment."""
    try:
        return _handle(event, service, refused)
    except Exception as exc:
        log.exception("N-ACTION: unexpected %s; answered 0x0110", type(exc).__name__)
        return _status(PROCESSING_FAILURE, "internal error; see the node log"), None


def _handle(event, service, refused) -> tuple[Dataset, None]:
    assoc = event.assoc
    aet, address = assoc.requestor.ae_title, assoc.requestor.address
    req = event.request
    if service is None:
        return _status(PROCESSING_FAILURE, "storage commitment is not enabled on this node"), None
    try:
        info = event.action_information
    except Exception:  # undecodable Action Information
        info = None
        parsed: CommitmentRequest | Refusal = Refusal(INVALID_ARGUMENT, "Action Information cannot be decoded")
    else:
        parsed = parse(req.ActionTypeID, req.RequestedSOPInstanceUID, info)
    tuid = _tuid(info)
    if isinstance(parsed, CommitmentRequest) and not service.allowed(aet):
        parsed = Refusal(NOT_AUTHORISED, f"AE {aet} may not request storage commitment")
    if isinstance(parsed, CommitmentRequest) and not service.submit(parsed, aet, address, assoc):
        parsed = Refusal(DUPLICATE_INVOCATION, "Transaction UID already in progress")
    if isinstance(parsed, Refusal):
        log.warning("storage commitment request %s from %s at %s refused (0x%04X): %s", tuid or "(no Transaction UID)",
                    aet, address, parsed.status, parsed.comment)
        service.count("refused")
        refused("dimse", "commitment-request")
        return _status(parsed.status, parsed.comment), None
    return _status(SUCCESS), None


def _tuid(info: object) -> str:
    try:
        value = str(info.get("TransactionUID", "") or "")  # type: ignore[union-attr]
    except Exception:
        return ""
    return value if len(value) <= 64 and all(c.isdigit() or c == "." for c in value) else "(invalid)"
