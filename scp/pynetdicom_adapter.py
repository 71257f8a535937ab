"""The few places where wsi-node reaches into pynetdicom's internals, in one reviewed file.

pynetdicom has no setting for four things the node needs, so they are changed here, and only
for the pynetdicom versions this file was written against (checked at start: another version
fails loudly, naming this file, instead of misbehaving quietly):

1. Where a received C-STORE data set is streamed (dimse_messages.NamedTemporaryFile, called
   by DIMSEMessage.decode_msg in the DUL thread): a factory that returns a space-guarded
   `scp.incoming.IncomingFile` of the association whose DUL thread asks for it.
2. How a PDU is read (DULServiceProvider._read_pdu_data): pynetdicom reads a PDU's whole body
   with `recv(pdu_length)`, whatever length the peer announces. Here the announced length is
   checked first, against the maximum PDU length the node advertised (PS3.8 D.1: the maximum
   length of the variable field of a P-DATA-TF PDU) for P-DATA-TF, and against a small cap for
   every other PDU type; a longer PDU is answered with A-ABORT (PS3.8 9.3.8, source
   service-provider, invalid PDU parameter value) and the connection is closed before its body
   is read. The body is read with recv_into into one preallocated buffer, 1 MiB at a time,
   under the association's network timeout, instead of pynetdicom's 4 KiB loop without one. A
   P-DATA-TF body is then decoded without copies (_decode_p_data_tf: each PDV value is a memoryview
   of the received buffer, so the data set fragment DIMSEMessage.decode_msg writes is that buffer;
   pynetdicom's own decode copies every byte four times), the others by pynetdicom.
3. Which associations count towards `maximum_associations`, and when. acse.py counts every
   acceptor thread (so TCP connections that never send an A-ASSOCIATE-RQ lock real senders out),
   and counts in each association's own thread with nothing between the count and the accept (so
   several requests negotiated at once each see a stale count). Here the acceptor negotiation
   (ACSE._negotiate_as_acceptor: count, then accept or A-ASSOCIATE-RJ) runs under one lock per
   `NodeAE`, and the count is the associations accepted and not yet ended, plus the one
   negotiating: check and count are one step. Over the limit the peer gets A-ASSOCIATE-RJ result
   2 (rejected-transient), source 3 (service-provider, presentation related), reason 2 (local
   limit exceeded), PS3.8 9.3.4 table 9-21. Connections that send nothing are not counted and
   are closed by the ARTIM timer after the ACSE timeout (PS3.8 9.1.5).
4. How soon the acceptor stops. AE.start_server(block=False) runs socketserver's
   `serve_forever()` with its default poll interval of 0.5 s, so every node stop (SIGTERM from
   systemd or Docker) waited up to 0.5 s for the listening thread to look at its stop flag.
   `NodeAE.start_server` builds the same server through the public `AE.make_server(server_class=)`
   hook, as `PromptServer`, which polls every 50 ms, and registers it in `AE._servers` (private:
   `AE.shutdown` and `ThreadedAssociationServer.shutdown` use that list) as start_server does.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Callable

import pynetdicom
from pynetdicom import AE, dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from config.errors import WsiNodeError

log = logging.getLogger("wsi_node.dimse")

SUPPORTED_VERSIONS = ("3.0.4",)
OTHER_PDU_LIMIT = 256 << 10
"""Largest A-ASSOCIATE-RQ (or any PDU but P-DATA-TF) read; Orthanc's ~127 contexts take ~15 KB."""
RECV_CHUNK = 1 << 20
STOP_POLL_S = 0.05
"""How often the acceptor thread looks at its stop flag (socketserver's default is 0.5 s)."""
_UINT4 = struct.Struct(">L")

_original_read_pdu_data = DULServiceProvider._read_pdu_data
_original_negotiate_as_acceptor = ACSE._negotiate_as_acceptor
_installed = False


class PynetdicomVersionError(WsiNodeError):
    """The installed pynetdicom is not a version scp/pynetdicom_adapter.py was written for."""


def check_version(version: str | None = None) -> None:
    version = version or pynetdicom.__version__
    if version not in SUPPORTED_VERSIONS:
        raise PynetdicomVersionError(
            f"pynetdicom {version} is installed, but scp/pynetdicom_adapter.py was written for pynetdicom "
            f"{', '.join(SUPPORTED_VERSIONS)} (it replaces DULServiceProvider._read_pdu_data and "
            "dimse_messages.NamedTemporaryFile, serialises ACSE._negotiate_as_acceptor, relies on acse.py "
            "counting AE.active_associations and registers its servers in AE._servers).",
            f"Install pynetdicom=={SUPPORTED_VERSIONS[-1]}, or review scp/pynetdicom_adapter.py against pynetdicom "
            f"{version}'s dul.py, dimse_messages.py, acse.py and ae.py (start_server) and add the version to "
            "SUPPORTED_VERSIONS.")


def install(writer_factory: Callable[[object], object]) -> None:
    """Check the version, then route chunked C-STORE data sets to `writer_factory(association)` and bound PDU reads.

    `writer_factory` is called in pynetdicom's DUL thread with the Association (or None when
    called from elsewhere) and returns an object with `write`, `name`, `file.flush()`, `close`.
    """
    global _installed
    check_version()

    def named_temporary_file(*_args: object, **_kwargs: object) -> object:
        thread = threading.current_thread()
        assoc = thread.assoc if isinstance(thread, DULServiceProvider) else None
        return writer_factory(assoc)

    dimse_messages.NamedTemporaryFile = named_temporary_file
    DULServiceProvider._read_pdu_data = _read_pdu_data_bounded
    ACSE._negotiate_as_acceptor = _negotiate_as_acceptor_counted
    _installed = True


def dataset_writer(event) -> object | None:
    """The writer that received this C-STORE event's data set (what `install`'s factory returned)."""
    return getattr(event.request, "_dataset_file", None)


def pdu_limit(dul: DULServiceProvider, pdu_type: int) -> int:
    """The longest PDU body accepted from the peer: the advertised maximum for P-DATA-TF, a small cap otherwise."""
    if pdu_type != 0x04:
        return OTHER_PDU_LIMIT
    assoc = dul.assoc
    advertised = assoc.ae.maximum_pdu_size if assoc.is_acceptor else assoc.requestor.maximum_length
    return int(advertised or 0)  # 0: the node advertised no limit


def _recv_exactly(sock, n: int, timeout: float | None) -> bytearray:
    """n bytes from a socket into one buffer (shorter if the peer closed); raises on timeout or error."""
    buf = bytearray(n)
    view = memoryview(buf)
    if timeout is not None and sock.gettimeout() is None:
        sock.settimeout(timeout)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, RECV_CHUNK))
        if not k:
            del view
            del buf[got:]
            return buf
        got += k
    return buf


def _read_pdu_data_bounded(self: DULServiceProvider) -> None:
    """DULServiceProvider._read_pdu_data (pynetdicom 3.0.4 dul.py) with the announced length checked first."""
    wrapper = self.socket
    sock = wrapper.socket if wrapper is not None else None
    if sock is None:
        self.event_queue.put("Evt17")
        return
    timeout = self.assoc.network_timeout
    try:
        header = _recv_exactly(sock, 6, timeout)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")  # transport closed or timed out
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        log.warning("DICOM peer %s sent an unknown PDU type 0x%02X: association aborted", _peer(self), pdu_type)
        self.event_queue.put("Evt19")
        return
    limit = pdu_limit(self, pdu_type)
    if limit and pdu_length > limit:
        log.warning("DICOM peer %s announced a PDU (type 0x%02X) of %d bytes, over the %d bytes accepted: "
                    "aborted before reading it (a sender must honour the maximum PDU length the node advertises)",
                    _peer(self), pdu_type, pdu_length, limit)
        _abort_and_close(self)
        return
    try:
        body = _recv_exactly(sock, pdu_length, timeout)
    except (OSError, TimeoutError):
        log.warning("DICOM peer %s: connection closed or silent for %s s in the middle of a PDU", _peer(self), timeout)
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        self.event_queue.put("Evt17")
        return
    try:
        if pdu_type == 0x04:
            pdu, event = _decode_p_data_tf(self, header, body)
        else:
            header += body
            del body
            pdu, event = self._decode_pdu(header)
    except Exception as exc:
        log.warning("DICOM peer %s sent a PDU that cannot be decoded (%s): association aborted", _peer(self), exc)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _decode_p_data_tf(dul: DULServiceProvider, header: bytearray, body: bytearray) -> tuple[P_DATA_TF, str]:
    """A P-DATA-TF PDU whose PDV values are views of `body` (pynetdicom's PDU.decode copies each one four times).

    PS3.8 9.3.5.1: each Presentation Data Value Item is a 4-byte item length, then the presentation
    context ID (1 byte) and the PDV (message control header and fragment, PS3.8 E.2), so an item
    length is at least 2 and the items fill the PDU exactly; anything else is refused as
    pynetdicom's decoder refuses it (an exception, answered with A-ABORT by the caller). What reads
    the PDVs (DIMSEMessage.decode_msg: `data[0]`, `data[1:]` written to the data set's file or a
    BytesIO) takes a memoryview as it takes bytes, and `data[1:]` is then no copy either.
    EVT_DATA_RECV, which wants the raw bytes, is triggered (with a copy) only when a handler is bound.
    """
    if dul.assoc.get_handlers(evt.EVT_DATA_RECV):
        evt.trigger(dul.assoc, evt.EVT_DATA_RECV, {"data": bytes(header + body)})
    view = memoryview(body)
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ValueError(f"a PDV item header cut at byte {offset} of a {end}-byte P-DATA-TF PDU")
        (length,) = _UINT4.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ValueError(f"a PDV item length of {length} at byte {offset} of a {end}-byte P-DATA-TF PDU")
        item = PresentationDataValueItem()
        item.presentation_context_id = body[offset + 4]
        item.presentation_data_value = view[offset + 5:offset + 4 + length]
        items.append(item)
        offset += 4 + length
    pdu = P_DATA_TF()
    pdu.presentation_data_value_items = items
    evt.trigger(dul.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
    return pdu, "Evt10"  # P-DATA-TF PDU received (PS3.8 9.2, table 9-10)


def _abort_and_close(dul: DULServiceProvider) -> None:
    """Send A-ABORT (source service-provider, reason invalid PDU parameter value) and close the transport."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x06
    try:
        dul.socket.send(pdu.encode())
    except Exception:  # the peer may be gone already
        pass
    dul.socket.close()  # puts Evt17 on the event queue: the association ends (AA-4 / AA-5)


def _peer(dul: DULServiceProvider) -> str:
    try:
        r = dul.assoc.requestor
        return f"{r.ae_title or '?'}@{r.address}:{r.port}"
    except Exception:
        return "?"


def _negotiate_as_acceptor_counted(self: ACSE) -> None:
    """ACSE._negotiate_as_acceptor (pynetdicom 3.0.4 acse.py) under the NodeAE's admission lock.

    Inside it pynetdicom counts `ae.active_associations`, then sends A-ASSOCIATE-AC and sets
    is_established, or sends A-ASSOCIATE-RJ (0x02, 0x03, 0x02): with the lock, no other request
    is counted between one association's count and its accept, so at most maximum_associations
    are ever established at once.
    """
    ae = self.assoc.ae
    if not isinstance(ae, NodeAE):
        _original_negotiate_as_acceptor(self)
        return
    with ae.admission_lock:
        ae._counting.assoc = self.assoc
        try:
            _original_negotiate_as_acceptor(self)
        finally:
            ae._counting.assoc = None


class NodeAE(AE):
    """An AE whose association limit is checked and counted in one step, counting only accepted associations.

    acse.py (_negotiate_as_acceptor) compares the acceptors in `active_associations` with
    `maximum_associations` (more than the maximum, itself included: rejected). While an acceptor
    negotiates (under `admission_lock`, see _negotiate_as_acceptor_counted) this list holds the
    negotiating association and the acceptors already accepted and not ended; connections still
    silent (no request yet), being rejected or gone are left out, so they cannot lock real
    senders out. Everywhere else (shutdown, str) it is pynetdicom's full list.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.admission_lock = threading.Lock()
        self._counting = threading.local()

    @property
    def active_associations(self) -> list[Association]:
        every = super().active_associations
        negotiating = getattr(self._counting, "assoc", None)
        if negotiating is None:
            return every
        return [a for a in every if not a.is_acceptor or a is negotiating or _holds_a_slot(a)]

    def start_server(self, address, block: bool = True, ssl_context=None, evt_handlers=None, ae_title=None,
                     contexts=None):
        """AE.start_server, with a `PromptServer` in its own thread when not blocking (what the node uses)."""
        if block:
            return super().start_server(address, block=True, ssl_context=ssl_context, evt_handlers=evt_handlers,
                                        ae_title=ae_title, contexts=contexts)
        server = self.make_server(address, ae_title=ae_title, contexts=contexts, ssl_context=ssl_context,
                                  evt_handlers=evt_handlers, server_class=PromptServer)
        thread = threading.Thread(target=make_target(server.serve_forever), daemon=True,
                                  name=f"AcceptorServer@{server.server_address[1]}")
        thread.start()
        self._servers.append(server)
        return server

    def accepted_count(self) -> int:
        """Acceptor associations established and not ended (what the limit counts, besides a negotiating one)."""
        return sum(1 for a in super().active_associations if a.is_acceptor and _holds_a_slot(a))


class PromptServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, looking at its stop flag every STOP_POLL_S seconds."""

    def serve_forever(self, poll_interval: float = STOP_POLL_S) -> None:
        super().serve_forever(poll_interval)


def _holds_a_slot(a: Association) -> bool:
    return a.is_established and not (a.is_aborted or a.is_released or a.is_rejected)
