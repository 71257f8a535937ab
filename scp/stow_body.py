"""The body of one STOW-RS request: multipart/related parts streamed to temporary files, then stored.

The body is parsed as it arrives (python-multipart's streaming MultipartParser fed in chunks
by the endpoint in stow.py), and every part goes straight to a temporary file in
`inbox/.incoming/` (same filesystem as the inbox, ignored by the scanner), so memory stays
bounded whatever the request size. The head of a part is checked to be DICOM Part 10 before
anything parses it; a complete part is stored exactly like a C-STORE instance
(`InstanceStore.store_file`) and reported through the receiver's events. Separate from the
HTTP endpoint because this side is synchronous, runs in a worker thread, and knows nothing of HTTP
beyond the `Reject` a malformed body ends with.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

import pydicom
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from scp.events import ReceiverEvents
from scp.storage import InstanceStore, StoreResult
from scp.stow_response import CANNOT_UNDERSTAND, DOES_NOT_MATCH, FAILURE, OUT_OF_RESOURCES, Reject

log = logging.getLogger("wsi_node.stow")

PREAMBLE_LIMIT = 64 << 10  # bytes searched for the first boundary (RFC 2046 allows a preamble before it)
ROOM_CHECK_BYTES = 64 << 20  # free disk is re-checked every this many bytes of a part
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
        self.fp = None
        self.path: Path | None = None
        self.head = bytearray()
        self.written = 0
        self.next_room_check = ROOM_CHECK_BYTES
        self.failure: tuple[int, str] | None = None

    def close(self, delete: bool) -> None:
        if self.fp is not None:
            self.fp.close()
            self.fp = None
        if delete and self.path is not None:
            self.path.unlink(missing_ok=True)


class StowRequest:
    """The body of one STOW-RS request: parser callbacks, one part at a time, and the outcome.

    `feed` and `finish` run in a worker thread, one call at a time.
    """

    def __init__(self, store: InstanceStore, events: ReceiverEvents, boundary: bytes, study: str | None, key: str,
                 peer: str) -> None:
        self.store, self.events = store, events
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
            return  # a worker is still inside this request (cancelled at shutdown): clean_incoming removes it at the next start
        try:
            if self.part is not None:
                self.part.close(delete=True)
                self.part = None
        finally:
            self.lock.release()

    # --- parser callbacks ------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self.part = _Part()
        self.parts += 1

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
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=self.store.incoming)
        p.fp = os.fdopen(fd, "wb", buffering=1 << 20)
        p.path = Path(name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        p = self.part
        if p.fp is None:
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
        if p.written >= p.next_room_check:
            p.next_room_check += ROOM_CHECK_BYTES
            if not self.store.has_room():
                p.failure = (OUT_OF_RESOURCES, "free disk space fell below the reserve while receiving")
                p.close(delete=True)

    def _part_end(self) -> None:
        p, self.part = self.part, None
        try:
            p.close(delete=False)
            if p.failure is None and p.written < DICM_HEAD:
                p.failure = (CANNOT_UNDERSTAND, "not a DICOM Part 10 file (shorter than a preamble, DICM prefix and file meta information)")
            if p.failure is not None:
                self._fail("", "", *p.failure)
            else:
                self._store(p.path)
        finally:
            if p.path is not None:
                p.path.unlink(missing_ok=True)  # consumed by a successful store; left over otherwise

    def _end(self) -> None:
        self.ended = True

    # --- storing ---------------------------------------------------------------------------------
    def _fail(self, sop_class: str, sop_uid: str, reason: int, message: str) -> None:
        self.failed.append((sop_class, sop_uid, reason))
        log.warning("STOW-RS from %s: part %d%s refused (0x%04X): %s", self.peer, self.parts,
                    f" ({sop_uid})" if sop_uid else "", reason, message)

    def _store(self, path: Path) -> None:
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
            log.error("STOW-RS from %s: write failed: %s", self.peer, exc)
            result = StoreResult("error", f"write failed: {exc}")
        if result.ok:
            log.info("stored %s from %s (%s)", result.sop_instance_uid, self.peer, result.status)
            self.referenced.append((result.sop_class_uid, result.sop_instance_uid))
            self.events.on_stored(result, self.key)
        else:
            self._fail(result.sop_class_uid, result.sop_instance_uid, FAILURE[result.status], result.message)
