"""Deliver an N-EVENT-REPORT (PS3.4 J.3.3): on the requester's association, or on a new one.

Same association: pynetdicom's Association.send_n_event_report pauses the association's reactor and
may be called from another thread, after the N-ACTION response has gone out; it fails fast when the
requester has already released. New association: the node is the association requester but plays
the SCP role of the Storage Commitment Push Model, so it proposes SCP/SCU Role Selection with
SCU-role 0 and SCP-role 1 (PS3.7 D.3.3.4; PS3.4 J.3.3 / J.6: the SCU accepts the reverse role).
The requester answers the N-EVENT-REPORT with a status; anything but 0x0000 (or no answer within
the DIMSE timeout) counts as not delivered, and the service retries.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role

from scp.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from scp.commitment.peers import Peer

log = logging.getLogger("wsi_node.commitment")

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


SAME_ASSOCIATION_WAIT = 5.0
"""Seconds to wait for the answer to a report on the requester's association."""


class NotDelivered(Exception):
    """The report could not be delivered; the message says why (for the log and the store)."""


@dataclass(frozen=True)
class Timeouts:
    acse: float = 10.0
    dimse: float = 30.0
    network: float = 30.0


def _answer(rsp: Dataset | None, where: str) -> None:
    status = getattr(rsp, "Status", None) if rsp is not None else None
    if status is None:
        raise NotDelivered(f"no N-EVENT-REPORT response {where} (timeout, abort or invalid response)")
    if int(status) != 0x0000:
        raise NotDelivered(f"the requester answered the N-EVENT-REPORT with status 0x{int(status):04X} {where}")


def send_on_association(assoc: object, event_type: int, info: Dataset) -> None:
    """On the association that carried the N-ACTION; NotDelivered if it is gone or the answer is not success."""
    if assoc is None or not getattr(assoc, "is_established", False) or _release_requested(assoc):
        raise NotDelivered("the requester's association is no longer open")
    # A requester releasing just now would ignore the report: wait for its answer only briefly, then the
    # caller goes on with a new association.
    saved = assoc.dimse_timeout
    assoc.dimse_timeout = min(saved or SAME_ASSOCIATION_WAIT, SAME_ASSOCIATION_WAIT)
    try:
        rsp, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    except (RuntimeError, ValueError) as exc:  # released meanwhile, or no usable presentation context
        raise NotDelivered(f"cannot send on the requester's association: {exc}") from None
    finally:
        assoc.dimse_timeout = saved
    _answer(rsp, "on the requester's association")


def _release_requested(assoc: object) -> bool:
    """An A-RELEASE-RQ from the requester is waiting (peeked, not consumed)."""
    try:
        from pynetdicom.pdu_primitives import A_RELEASE

        pdu = assoc.dul.peek_next_pdu()  # type: ignore[attr-defined]
        return isinstance(pdu, A_RELEASE)
    except Exception:
        return False


def send_new_association(ae_title: str, peer: Peer, event_type: int, info: Dataset, timeouts: Timeouts = Timeouts(),
                         tls: ssl.SSLContext | None = None) -> None:
    """Open an association to `peer`, proposing the SCP role (PS3.7 D.3.3.4), send, release."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = timeouts.acse, timeouts.dimse, timeouts.network
    ae.connection_timeout = timeouts.acse
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH, [EXPLICIT_LE, IMPLICIT_LE])
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    where = f"at {peer.host}:{peer.port}"
    if peer.tls and tls is None:
        raise NotDelivered(f"{peer} needs TLS but the node has no TLS certificate (--tls-cert)")
    tls_args = (tls, peer.host) if peer.tls and tls is not None else None
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role], tls_args=tls_args)
    except OSError as exc:
        raise NotDelivered(f"cannot connect to {peer.ae_title} {where}: {exc}") from None
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established (no answer)"
        raise NotDelivered(f"association to {peer.ae_title} {where} {why}")
    try:
        if not assoc.accepted_contexts:
            raise NotDelivered(f"{peer.ae_title} {where} accepted no Storage Commitment Push Model context")
        try:
            rsp, _ = assoc.send_n_event_report(info, event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
        except (RuntimeError, ValueError) as exc:
            raise NotDelivered(f"cannot send to {peer.ae_title} {where}: {exc}") from None
        _answer(rsp, f"from {peer.ae_title} {where}")
    finally:
        if assoc.is_established:
            assoc.release()
