"""The DIMSE receiver: C-STORE and C-ECHO SCP on pynetdicom.

Small handlers bound to pynetdicom events, nothing else. Instances are
received in chunks straight to a temporary file on the inbox's filesystem
(pynetdicom's STORE_RECV_CHUNKED_DATASET), so memory stays flat whatever the
instance size, then handed to the InstanceStore for validation and the
durable write. The success status is sent only after that write.

The temporary file is a space-guarded scp.incoming.IncomingFile (given to
pynetdicom by scp/pynetdicom_adapter.py): below the disk reserve, over the size
cap, or on a full disk, the instance is read and discarded and the sender gets
0xA700 with the reason (PS3.4 B.2.3), the association stays usable. Every
handler answers with a status, never with an exception. Limits per connection:
the advertised and enforced maximum PDU length, the ACSE timeout (ARTIM, PS3.8
9.1.5) for peers that connect and say nothing, and an idle timeout (network
timeout) for associations with no PDU.
"""

from __future__ import annotations

import errno
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.sop_class import Verification

from scp.commitment import STORAGE_COMMITMENT_PUSH
from scp.commitment.handler import handle_n_action
from scp.commitment.service import CommitmentService, CommitmentSettings
from scp.events import ReceiverEvents
from scp.incoming import IncomingFile, IncomingFiles, SpaceRules
from scp.pynetdicom_adapter import NodeAE, dataset_writer, install
from scp.storage import InstanceStore, StoreResult, dimse_status

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

# The C-STORE status of a store result: scp.storage.dimse_status (STATUS_CODES, one table with STOW-RS).


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
    network_timeout: float = 30.0
    """Idle timeout: an association with no PDU for this long is aborted (--idle-timeout)."""
    acse_timeout: float = 10.0
    """A peer must send its A-ASSOCIATE-RQ within this time after connecting (--acse-timeout)."""
    dimse_timeout: float = 60.0
    max_pdu_bytes: int = 256 << 10
    """Maximum PDU length advertised (PS3.8 D.1) and enforced; a longer PDU aborts the association (--max-pdu-kb)."""
    max_instance_bytes: int = 8 << 30
    """Largest instance received; a larger one is read, discarded and refused 0xA700 (--max-instance-mb); 0: no cap."""
    commitment: CommitmentSettings = field(default_factory=CommitmentSettings)
    """Storage Commitment SCP (scp/commitment/): reply addresses (--commitment-peer), retries."""

# A-ASSOCIATE-RJ (result source, reason/diag.), PS3.8 9.3.4 table 9-21.
REJECT_REASONS = {
    (1, 1): "no reason given", (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)", (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion", (3, 2): "local limit exceeded",
}


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
        self.commitment: CommitmentService | None = None
        """Set by the node: the Storage Commitment Push Model SCP (PS3.4 Annex J); None: not offered."""
        # Chunked receive writes each dataset to what pynetdicom takes for a NamedTemporaryFile: a
        # space-guarded file in inbox/.incoming (same filesystem: the final placement is a rename;
        # the scanner ignores the folder), registered per association so any end removes it.
        self.incoming = IncomingFiles(SpaceRules(store.incoming, store.reserve_bytes, settings.max_instance_bytes,
                                                  store.mark))
        _config.STORE_RECV_CHUNKED_DATASET = True
        install(lambda assoc: self.incoming.open(assoc, prefix="dimse-"))

    def _make_ae(self) -> NodeAE:
        ae = NodeAE(ae_title=self.s.ae_title)
        ae.maximum_associations = self.s.max_associations
        ae.require_called_aet = self.s.require_called_aet
        ae.network_timeout = self.s.network_timeout
        ae.acse_timeout = self.s.acse_timeout
        ae.dimse_timeout = self.s.dimse_timeout
        ae.maximum_pdu_size = self.s.max_pdu_bytes  # advertised in A-ASSOCIATE-AC, enforced by the adapter
        if self.s.allowed_calling_aets:
            ae.require_calling_aet = list(self.s.allowed_calling_aets)
        ae.add_supported_context(Verification)
        ae.add_supported_context(WSI_STORAGE, WSI_TRANSFER_SYNTAXES)
        if self.commitment is not None:
            ae.add_supported_context(STORAGE_COMMITMENT_PUSH, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        if self.s.accept_other_storage:
            from pynetdicom import AllStoragePresentationContexts

            for cx in AllStoragePresentationContexts:
                if cx.abstract_syntax != WSI_STORAGE:
                    ae.add_supported_context(cx.abstract_syntax, WSI_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_STORE, self._store_or_status),
            (evt.EVT_C_ECHO, self._handle_echo),
            (evt.EVT_N_ACTION, lambda event: handle_n_action(event, self.commitment, self.events.refused)),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_closed),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_CONN_CLOSE, self._handle_aborted),  # after EVT_RELEASED a no-op; alone: the peer vanished
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

    @staticmethod
    def _peer(event) -> str:
        r = event.assoc.requestor
        return f"{r.ae_title}@{r.address}"

    def _handle_accepted(self, event) -> None:
        a = event.assoc
        if self.s.allowed_peers:
            allowed = self.s.allowed_peers.get(a.requestor.ae_title)
            if allowed is None or a.requestor.address not in allowed:
                log.warning("association from %s at %s aborted: that AE title may not connect from this address",
                            a.requestor.ae_title, a.requestor.address)
                self.events.refused("dimse", "peer-not-allowed")
                a.abort()
                return
        refused = [cx for cx in a.rejected_contexts]
        if refused:
            names = sorted({str(cx.abstract_syntax.name if hasattr(cx.abstract_syntax, "name") else cx.abstract_syntax) for cx in refused})
            log.warning("association from %s at %s: refused presentation contexts for %s", a.requestor.ae_title, a.requestor.address, ", ".join(names))
        if not a.accepted_contexts:
            log.warning("association from %s at %s accepted with no acceptable presentation context: nothing can be "
                        "sent on it (VL Whole Slide Microscopy Image Storage in a supported transfer syntax is needed; "
                        "DCMTK storescu needs -R and -xy/-xv)", a.requestor.ae_title, a.requestor.address)
            self.events.refused("dimse", "no-acceptable-context")
            return
        log.info("association from %s at %s accepted", a.requestor.ae_title, a.requestor.address)

    def _handle_rejected(self, event) -> None:
        a = event.assoc
        rj = a.acceptor.primitive
        source, diag = getattr(rj, "result_source", None), getattr(rj, "diagnostic", None)
        called = getattr(a.requestor.primitive, "called_ae_title", "?")
        if (source, diag) == (1, 3):
            why = f"calling AE title {a.requestor.ae_title!r} is not allowed (--allowed-aet)"
            key = "calling-aet-not-allowed"
        elif (source, diag) == (1, 7):
            why = f"called AE title {called!r} is not this node's {self.s.ae_title!r} (or pass --no-called-aet-check)"
            key = "called-aet-wrong"
        elif (source, diag) == (3, 2):
            why = f"too many associations: {self.s.max_associations} at once (--max-associations); the sender may retry"
            key = "too-many-associations"
        else:
            why = REJECT_REASONS.get((source, diag), f"source {source}, reason {diag}")
            key = "rejected"
        log.warning("association from %s at %s rejected (A-ASSOCIATE-RJ result %s, source %s, reason %s): %s",
                    a.requestor.ae_title, a.requestor.address, getattr(rj, "result", "?"), source, diag, why)
        self.events.refused("dimse", key)

    def _handle_closed(self, event, released: bool = True) -> None:
        removed = self.incoming.release(event.assoc)
        if removed:
            log.warning("association from %s ended in the middle of an instance: its partial transfer was removed",
                        self._peer(event))
        self.events.on_closed(self._key(event), released)

    def _handle_aborted(self, event) -> None:
        self._handle_closed(event, released=False)

    def _handle_echo(self, event) -> int:
        log.info("C-ECHO from %s at %s", event.assoc.requestor.ae_title, event.assoc.requestor.address)
        return 0x0000

    def _store_or_status(self, event) -> Dataset:
        """EVT_C_STORE: always a status, whatever happens (an exception here would be 0xC211 without a reason)."""
        writer = dataset_writer(event)
        if isinstance(writer, IncomingFile):
            self.incoming.forget(event.assoc, writer)  # this handler owns it now, and removes it below
        try:
            return self._handle_store(event, writer)
        except Exception as exc:  # never escapes: a clear status, a log line, a metric
            sop = _sop_uid(event)
            log.exception("C-STORE of %s from %s failed unexpectedly: %s", sop, self._peer(event), exc.__class__.__name__)
            self.events.refused("dimse", "error")
            status = Dataset()
            status.Status = 0xA700 if isinstance(exc, OSError) else 0xC000
            status.ErrorComment = _comment(f"internal error ({exc.__class__.__name__}); see the node log")
            return status
        finally:
            if isinstance(writer, IncomingFile):
                writer.remove()  # gone already if stored (renamed into the inbox)

    def _handle_store(self, event, writer: object) -> Dataset:
        peer = self._peer(event)
        status = Dataset()
        if isinstance(writer, IncomingFile):
            writer.close()  # waits for its writer thread: a write that failed late is a refusal here
        if isinstance(writer, IncomingFile) and writer.discarding:
            # PS3.4 B.2.3: 0xA700 Refused: Out of Resources; the data set was read and thrown away.
            status.Status = 0xA700
            status.ErrorComment = _comment(writer.refusal)
            log.warning("C-STORE of %s from %s refused (0xA700): %s (%d bytes received and discarded)",
                        _sop_uid(event), peer, writer.refusal, writer.written)
            self.events.refused("dimse", writer.reason or "no-space")
            return status
        path = Path(event.dataset_path)
        try:
            result = self.store.store_file(path, peer)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("C-STORE of %s from %s: write failed: %s", _sop_uid(event), peer, exc.strerror or exc)
            result = StoreResult("no-space" if full else "error", "disk full while storing" if full else
                                 f"write failed ({errno.errorcode.get(exc.errno or 0, exc.errno)})")
        status.Status = dimse_status(result)
        if result.ok:
            log.info("stored %s from %s (%s)", result.sop_instance_uid, peer, result.status)
            self.events.on_stored(result, self._key(event))
        else:
            status.ErrorComment = _comment(result.message, path)
            log.warning("C-STORE of %s from %s refused (0x%04X): %s", result.sop_instance_uid or _sop_uid(event),
                        peer, status.Status, _strip_path(result.detail or result.message, path))
            self.events.refused("dimse", result.status)
        return status


def _sop_uid(event) -> str:
    try:
        return str(event.request.AffectedSOPInstanceUID or "?")
    except Exception:
        return "?"


def _strip_path(message: str, temp: Path | None = None) -> str:
    """The message without the temporary file's path (the sender cannot use it; the log has the UID)."""
    if temp is not None:
        message = message.replace(str(temp), "the instance").replace(temp.name, "the instance")
    return message


def _comment(message: str, temp: Path | None = None) -> str:
    """An ErrorComment (0000,0902): LO, at most 64 characters, no backslash or control characters (PS3.5 6.2, PS3.7 C)."""
    text = _strip_path(message, temp)
    text = "".join(c if c.isprintable() and c != "\\" else " " for c in text).strip()
    return text if len(text) <= 64 else text[:61].rstrip() + "..."
