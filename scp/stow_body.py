"""The body of one STOW-RS request: multipart/related parts streamed to temporary files, then stored.

The body is parsed as it arrives (python-multipart's streaming MultipartParser fed in chunks
by the endpoint in stow.py), and every part goes straight to a temporary file in
`inbox/.incoming/` (same filesystem as the inbox, ignored by the scanner), so memory stays
bounded whatever the request size. The temporary file is a space-guarded scp.incoming.IncomingFile,
registered under the request: a part that meets the disk reserve, the per-part size cap or a full
disk is read and discarded and fails with 0xA700, and whatever the request leaves behind when it
ends (in any way) is removed by `discard`. The head of a part is checked to be DICOM Part 10 before
anything parses it; a complete part is stored exactly like a C-STORE instance
(`InstanceStore.store_file`) and reported through the receiver's events. Separate from the
HTTP endpoint because this side is synchronous, runs in a worker thread, and knows nothing of HTTP
beyond the `Reject` a malformed body ends with.
"""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from scp.dimse import WSI_TRANSFER_SYNTAXES
from scp.events import ReceiverEvents
from scp.incoming import IncomingFile, IncomingFiles
from scp.storage import InstanceStore, StoreResult, stow_failure_reason
from scp.stow_response import (CANNOT_UNDERSTAND, DOES_NOT_MATCH, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED,
                               TRANSFER_SYNTAX_NOT_SUPPORTED, Reject)

log = logging.getLogger("wsi_node.stow")

_REASON_KEYS = {OUT_OF_RESOURCES: "no-space", DOES_NOT_MATCH: "does-not-match", CANNOT_UNDERSTAND: "invalid",
                SOP_CLASS_NOT_SUPPORTED: "not-wsi", TRANSFER_SYNTAX_NOT_SUPPORTED: "transfer-syntax"}

PREAMBLE_LIMIT = 64 << 10  # bytes searched for the first boundary (RFC 2046 allows a preamble before it)
DICM_HEAD = 140  # 128-byte preamble, "DICM", and the tag and VR of the first file meta element


def _part10_head(head: bytes) -> bool:
    """Preamble + "DICM" + a group 0002 element in explicit VR little endian, as PS3.10 requires.

    Checked before anything parses the part, so garbage after a "DICM" prefix is refused without
    being read as a data set (a random element length could make a parser allocate gigabytes).
    """
    return head[128:132] == b"DICM" and head[132:134] == b"\x02\x00" and head[136:138].isalpha() and head[136:138].isupper()


class _Part:
    """One body part on its way to a temporary file."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.field = bytearray()
        self.value = bytearray()
        self.fp: IncomingFile | None = None
        self.path: Path | None = None
        self.head = bytearray()
        self.written = 0
        self.failure: tuple[int, str] | None = None

    def close(self, delete: bool) -> None:
        if self.fp is not None:
            if delete:
                self.fp.remove()
                self.fp = None
            else:
                self.fp.close()


class StowRequest:
    """The body of one STOW-RS request: parser callbacks, one part at a time, and the outcome.

    `feed` and `finish` run in a worker thread, one call at a time.
    """

    def __init__(self, store: InstanceStore, events: ReceiverEvents, boundary: bytes, study: str | None, key: str,
                 peer: str, incoming: IncomingFiles, max_parts: int = 0) -> None:
        self.store, self.events = store, events
        self.incoming = incoming
        self.max_parts = max_parts
        self.boundary = boundary
        self.study = study
        self.key = key
        self.peer = peer
        self.prefix: bytearray | None = bytearray()
        self.part: _Part | None = None
        self.ended = False
        self.parts = 0
        self.received = 0
        self.referenced: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    # --- feeding (worker thread) -----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        with self.lock:
            if self.prefix is not None:  # still looking for the first boundary
                self.prefix += data
                dash = b"--" + self.boundary
                at = 0 if self.prefix.startswith(dash) else self.prefix.find(b"\n" + dash)
                if at < 0:
                    if len(self.prefix) > PREAMBLE_LIMIT:
                        raise Reject(400, "malformed multipart body: the boundary given in Content-Type does not occur in the first 64 KiB of the body")
                    return
                data = bytes(self.prefix[at + (1 if at else 0):])
                self.prefix = None
            if self.ended:
                return  # epilogue after the closing boundary
            try:
                self.parser.write(data)
            except MultipartParseError as exc:
                raise Reject(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> None:
        with self.lock:
            if self.prefix is not None:
                raise Reject(400, "malformed multipart body: the boundary given in Content-Type does not occur in the body")
            if not self.ended:
                raise Reject(400, "truncated multipart body: it ends before the closing boundary")

    def discard(self) -> None:
        """Delete the temporary file of a part that did not complete (the request failed or was cut off)."""
        if not self.lock.acquire(blocking=False):
            # A worker is still inside this request (cancelled at shutdown, or a client gone mid-feed):
            # remove what it has made once it is done; clean_incoming covers a process that dies first.
            threading.Thread(target=self._discard_later, name="stow-discard", daemon=True).start()
            return
        try:
            self._discard_now()
        finally:
            self.lock.release()

    def _discard_later(self) -> None:
        with self.lock:
            self._discard_now()

    def _discard_now(self) -> None:
        if self.part is not None:
            self.part.close(delete=True)
            self.part = None
        self.incoming.release(self.key)

    # --- parser callbacks ------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self.parts += 1
        if self.max_parts and self.parts > self.max_parts:
            self.events.refused("stow", "too-many-parts")
            raise Reject(413, f"the request holds more than {self.max_parts} parts (--http-max-parts); send the rest in another request")
        self.part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.value += data[start:end]

    def _header_end(self) -> None:
        p = self.part
        p.headers[p.field.decode("latin-1").strip().lower()] = p.value.decode("latin-1").strip()
        p.field.clear()
        p.value.clear()

    def _headers_finished(self) -> None:
        p = self.part
        media = parse_options_header(p.headers.get("content-type", ""))[0].decode("latin-1")
        if media and media != "application/dicom":
            p.failure = (CANNOT_UNDERSTAND, f"part media type {media} is not application/dicom")
            return
        p.fp = self.incoming.open(self.key, prefix="stow-", suffix=".part")
        p.path = p.fp.path
        if p.fp.discarding:
            p.failure = (OUT_OF_RESOURCES, p.fp.refusal)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        p = self.part
        if p.fp is None or p.failure is not None:
            return  # failed part: its remaining bytes are skipped
        chunk = memoryview(data)[start:end]
        if len(p.head) < DICM_HEAD:
            p.head += chunk[: DICM_HEAD - len(p.head)]
            if len(p.head) == DICM_HEAD and not _part10_head(bytes(p.head)):
                p.failure = (CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no 128-byte preamble, DICM prefix and file meta information)")
                p.close(delete=True)
                return
        p.fp.write(chunk)
        p.written += len(chunk)
        if p.fp.discarding:  # below the reserve, over the part cap, or a full disk: the file is gone already
            p.failure = (OUT_OF_RESOURCES, p.fp.refusal)

    def _part_end(self) -> None:
        p, self.part = self.part, None
        try:
            p.close(delete=False)  # waits for the part's writer thread
            if p.failure is None and p.fp is not None and p.fp.discarding:  # a write that failed late
                p.failure = (OUT_OF_RESOURCES, p.fp.refusal)
            if p.failure is None and p.written < DICM_HEAD:
                p.failure = (CANNOT_UNDERSTAND, "not a DICOM Part 10 file (shorter than a preamble, DICM prefix and file meta information)")
            if p.failure is not None:
                self._fail("", "", *p.failure)
            else:
                self._store_or_fail(p.path)
        finally:
            if p.fp is not None:
                p.fp.remove()  # consumed (renamed) by a successful store; left over otherwise

    def _end(self) -> None:
        self.ended = True

    # --- storing ---------------------------------------------------------------------------------
    def _fail(self, sop_class: str, sop_uid: str, reason: int, message: str) -> None:
        self.failed.append((sop_class, sop_uid, reason))
        self.events.refused("stow", _REASON_KEYS.get(reason, "error"))
        log.warning("STOW-RS from %s: part %d%s refused (0x%04X): %s", self.peer, self.parts,
                    f" ({sop_uid})" if sop_uid else "", reason, message)

    def _store_or_fail(self, path: Path) -> None:
        """Store one complete part; whatever goes wrong becomes this part's failure, never the request's."""
        try:
            self._store(path)
        except Exception as exc:  # an unforeseen input: one log line with the trace, a failure reason
            log.exception("STOW-RS from %s: part %d failed unexpectedly (%s)", self.peer, self.parts, exc.__class__.__name__)
            self._fail("", "", CANNOT_UNDERSTAND, f"internal error ({exc.__class__.__name__}); see the node log")

    def _transfer_syntax_problem(self, path: Path) -> tuple[int, str] | None:
        """The part's file meta must name a transfer syntax the DIMSE receiver accepts too (PS3.10 7.1)."""
        try:
            meta = read_file_meta_info(path)
        except Exception as exc:
            return CANNOT_UNDERSTAND, f"the file meta information cannot be parsed ({exc.__class__.__name__})"
        ts = str(meta.get("TransferSyntaxUID", "") or "").strip()
        if not ts:
            return CANNOT_UNDERSTAND, "the file meta information has no Transfer Syntax UID (0002,0010)"
        if ts not in WSI_TRANSFER_SYNTAXES:
            return TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts[:64]} is not supported"
        return None

    def _store(self, path: Path) -> None:
        problem = self._transfer_syntax_problem(path)
        if problem is not None:
            self._fail("", "", *problem)
            return
        if self.study is not None:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"])
                study = str(ds.get("StudyInstanceUID", ""))
            except Exception:  # unreadable: store_file below says why
                ds, study = None, self.study
            if study != self.study:
                self._fail(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), DOES_NOT_MATCH,
                           f"Study Instance UID {study} does not match the request URL's {self.study}")
                return
        try:
            result = self.store.store_file(path, self.peer)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("STOW-RS from %s: part %d: write failed: %s", self.peer, self.parts, exc.strerror or exc)
            result = StoreResult("no-space" if full else "error", "disk full while storing" if full else "write failed")
        if result.ok:
            log.info("stored %s from %s (%s)", result.sop_instance_uid, self.peer, result.status)
            self.referenced.append((result.sop_class_uid, result.sop_instance_uid))
            self.events.on_stored(result, self.key)
        else:
            message = (result.detail or result.message).replace(str(path), "the part").replace(path.name, "the part")
            self._fail(result.sop_class_uid, result.sop_instance_uid, stow_failure_reason(result), message)
