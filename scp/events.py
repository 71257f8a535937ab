"""What a receiver tells the node: an instance was stored, an association or request ended.

Every receiver (DIMSE C-STORE in dimse.py, DICOMweb STOW-RS in stow.py) stores instances
through the same InstanceStore and reports to the node's tracker the same way, keyed by one
"association" string per DIMSE association or per HTTP request. The node builds one
ReceiverEvents per receiver; the callbacks run in the receivers' threads and must only queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from scp.storage import StoreResult


def _ignore_stored(result: StoreResult, association: str) -> None:
    pass


def _ignore_closed(association: str, released: bool = True) -> None:
    pass


def _ignore_refused(protocol: str, reason: str) -> None:
    pass


@dataclass(frozen=True)
class ReceiverEvents:
    on_stored: Callable[[StoreResult, str], None] = _ignore_stored
    """`on_stored(result, association)`: a successful store (stored, duplicate or replaced)."""
    on_closed: Callable[..., None] = _ignore_closed
    """`on_closed(association, released=True)`: the association or request is over; the series may settle.
    released=False: it was aborted or its connection dropped, which says nothing about the slide being whole
    (the association-end completion rule only counts released associations)."""
    refused: Callable[[str, str], None] = _ignore_refused
    """`refused(protocol, reason)`: an instance or request was refused ("dimse"/"stow"; a short reason
    key such as "no-space", "too-large", "invalid", "error", "limit"), for the /metrics refusal counter."""
