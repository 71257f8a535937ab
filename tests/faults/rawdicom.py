"""Hand-made DICOM upper layer PDUs (PS3.8 9.3) for protocol-level hostile clients.

pynetdicom will not send a malformed or oversized PDU, so the campaign builds A-ASSOCIATE-RQ and
P-DATA-TF PDUs by hand: an association request announcing any maximum length, a P-DATA-TF whose
length field claims 4 GB, and the parts of the A-ASSOCIATE-AC the node answers (its advertised
Maximum Length, PS3.8 D.1).
"""

from __future__ import annotations

import socket
import struct

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
WSI_STORAGE = b"1.2.840.10008.5.1.4.1.1.77.1.6"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(called: str = "WSINODE", calling: str = "RAWSCU", max_length: int = 16384,
                 abstract: bytes = VERIFICATION, syntaxes: tuple[bytes, ...] = (IMPLICIT_LE,)) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with one presentation context (id 1) and a Maximum Length sub-item."""
    pc = bytes([1, 0, 0, 0]) + _item(0x30, abstract) + b"".join(_item(0x40, ts) for ts in syntaxes)
    user = _item(0x51, struct.pack(">I", max_length)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999")
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT) + _item(0x20, pc) + _item(0x50, user))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket, limit: int = 1 << 20) -> tuple[int, bytes] | None:
    """(PDU type, body) of the next PDU from the node, or None when it closed the connection."""
    head = _recv_exact(sock, 6)
    if head is None:
        return None
    kind, _, length = struct.unpack(">BBI", head)
    body = _recv_exact(sock, min(length, limit)) or b""
    return kind, body


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except (ConnectionResetError, socket.timeout):
            return None
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def accepted_max_length(ac_body: bytes) -> int | None:
    """The Maximum Length the node advertises in its A-ASSOCIATE-AC (user information item 0x50, sub-item 0x51)."""
    at = 68  # protocol version, reserved, 16+16 AE fields, 32 reserved
    while at + 4 <= len(ac_body):
        kind, _, length = struct.unpack(">BBH", ac_body[at:at + 4])
        if kind == 0x50:
            sub = at + 4
            while sub + 4 <= at + 4 + length:
                skind, _, slen = struct.unpack(">BBH", ac_body[sub:sub + 4])
                if skind == 0x51:
                    return struct.unpack(">I", ac_body[sub + 4:sub + 8])[0]
                sub += 4 + slen
        at += 4 + length
    return None


def p_data_header(announced: int) -> bytes:
    """The 6-byte header of a P-DATA-TF (PS3.8 9.3.5) whose length field says `announced` bytes."""
    return struct.pack(">BBI", 0x04, 0, announced)
