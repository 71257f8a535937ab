"""The DIMSE receiver: C-STORE and C-ECHO SCP on pynetdicom.

Small handlers bound to pynetdicom events, nothing else. Instances are
received in chunks straight to a temporary file on the inbox's filesystem
(pynetdicom's STORE_RECV_CHUNKED_DATASET), so memory stays flat whatever the
instance size, then handed to the InstanceStore for validation and the
durable write. The success status is sent only after that write.
"""

from __future__ import annotations

import functools
import logging
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.sop_class import Verification

from scp.events import ReceiverEvents
from scp.storage import InstanceStore, StoreResult

log = logging.getLogger("wsi_node.dimse")

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
WSI_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
]

STATUS = {
    "stored": 0x0000,
    "duplicate": 0x0000,
    "replaced": 0x0000,
    "no-space": 0xA700,  # Refused: Out of Resources
    "error": 0xA700,
    "invalid": 0xC000,  # Error: Cannot understand
    "not-wsi": 0xA900,  # Error: Data Set does not match SOP Class
}


@dataclass
class DimseSettings:
    ae_title: str = "WSINODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    """Empty: any calling AE title is accepted."""
    allowed_peers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional: calling AE title -> the peer addresses it may connect from."""
    require_called_aet: bool = True
    max_associations: int = 10
    accept_other_storage: bool = False
    """Also accept other storage SOP classes (stored to quarantine) instead of rejecting them at negotiation."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client_cert: bool = False
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0


def _ssl_context(s: DimseSettings) -> ssl.SSLContext | None:
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key) if s.tls_key else None)
    if s.tls_ca:
        ctx.load_verify_locations(str(s.tls_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if s.tls_require_client_cert else (ssl.CERT_OPTIONAL if s.tls_ca else ssl.CERT_NONE)
    return ctx


class DimseReceiver:
    """C-STORE/C-ECHO SCP. `events` feed the tracker, keyed by association."""

    def __init__(self, settings: DimseSettings, store: InstanceStore, events: ReceiverEvents = ReceiverEvents()) -> None:
        self.s = settings
        self.store = store
        self.events = events
        self.server = None
        # Chunked receive writes each dataset to a NamedTemporaryFile. Put those on the inbox's
        # filesystem, in a folder the scanner ignores, so the final placement is an atomic rename.
        # (pynetdicom has no setting for the folder; we give its module a NamedTemporaryFile bound
        # to ours rather than changing tempfile.tempdir for the whole process.)
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=str(store.incoming))

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.s.ae_title)
        ae.maximum_associations = self.s.max_associations
        ae.require_called_aet = self.s.require_called_aet
        ae.network_timeout = self.s.network_timeout
        ae.acse_timeout = self.s.acse_timeout
        ae.dimse_timeout = self.s.dimse_timeout
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs from senders that honour it
        if self.s.allowed_calling_aets:
            ae.require_calling_aet = list(self.s.allowed_calling_aets)
        ae.add_supported_context(Verification)
        ae.add_supported_context(WSI_STORAGE, WSI_TRANSFER_SYNTAXES)
        if self.s.accept_other_storage:
            from pynetdicom import AllStoragePresentationContexts

            for cx in AllStoragePresentationContexts:
                if cx.abstract_syntax != WSI_STORAGE:
                    ae.add_supported_context(cx.abstract_syntax, WSI_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_closed),
            (evt.EVT_ABORTED, self._handle_closed),
            (evt.EVT_CONN_CLOSE, self._handle_closed),
        ]
        ae = self._make_ae()
        self.server = ae.start_server(
            (self.s.bind, self.s.port), block=False, evt_handlers=handlers, ssl_context=_ssl_context(self.s)
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.s.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # --- handlers -------------------------------------------------------------------------------
    @staticmethod
    def _key(event) -> str:
        a = event.assoc
        return f"{a.requestor.ae_title}@{a.requestor.address}:{a.requestor.port}#{id(a)}"

    def _handle_accepted(self, event) -> None:
        a = event.assoc
        if self.s.allowed_peers:
            allowed = self.s.allowed_peers.get(a.requestor.ae_title)
            if allowed is None or a.requestor.address not in allowed:
                log.warning("association from %s at %s aborted: that AE title may not connect from this address",
                            a.requestor.ae_title, a.requestor.address)
                a.abort()
                return
        refused = [cx for cx in a.rejected_contexts]
        if refused:
            names = sorted({str(cx.abstract_syntax.name if hasattr(cx.abstract_syntax, "name") else cx.abstract_syntax) for cx in refused})
            log.warning("association from %s at %s: refused presentation contexts for %s", a.requestor.ae_title, a.requestor.address, ", ".join(names))
        log.info("association from %s at %s accepted", a.requestor.ae_title, a.requestor.address)

    def _handle_rejected(self, event) -> None:
        a = event.assoc
        log.warning("association from %s at %s rejected (called AE %s)", a.requestor.ae_title, a.requestor.address, a.acceptor.ae_title)

    def _handle_closed(self, event) -> None:
        self.events.on_closed(self._key(event))

    def _handle_echo(self, event) -> int:
        log.info("C-ECHO from %s at %s", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return 0x0000

    def _handle_store(self, event) -> Dataset | int:
        peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        try:
            result = self.store.store_file(Path(event.dataset_path), peer)
        except OSError as exc:
            log.error("C-STORE from %s: write failed: %s", peer, exc)
            result = StoreResult("error", f"write failed: {exc}")
        status = Dataset()
        status.Status = STATUS[result.status]
        if result.ok:
            log.info("stored %s from %s (%s)", result.sop_instance_uid, peer, result.status)
            self.events.on_stored(result, self._key(event))
        else:
            status.ErrorComment = result.message[:64]
            log.warning("C-STORE from %s refused (0x%04X): %s", peer, status.Status, result.message)
        return status
