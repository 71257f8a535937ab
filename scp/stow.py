"""The DICOMweb receiver: STOW-RS (PS3.18 10.5) on Starlette.

`POST /dicom-web/studies` and `POST /dicom-web/studies/{StudyInstanceUID}` with a
`multipart/related; type="application/dicom"` body, sent with Content-Length or chunked.
The body is parsed as it arrives (python-multipart's streaming MultipartParser fed from
`request.stream()`), and every part goes straight to a temporary file in `inbox/.incoming/`
(same filesystem as the inbox, ignored by the scanner), so memory stays bounded whatever the
request size. A complete part is then stored exactly like a C-STORE instance
(`InstanceStore.store_file`: validation, fsync, atomic rename, duplicates rule) and reported
to the tracker through the same callbacks as the DIMSE receiver, with one "association" key
per HTTP request.

Parsing and storing run in a worker thread (one chunk of about 1 MiB at a time), never on the
event loop: a slow disk slows the sender down (TCP back-pressure), not the other requests.
The response is the PS3.18 Annex I store instances response in `application/dicom+json`;
request-level errors are `text/plain` with the reason.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import itertools
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydicom
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from scp.storage import InstanceStore, StoreResult, valid_uid

log = logging.getLogger("wsi_node.stow")

# FailureReason (0008,1197) values, PS3.18 Annex I / PS3.4 storage statuses.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # data set does not match SOP class; also: Study Instance UID does not match the URL
CANNOT_UNDERSTAND = 0xC000  # not DICOM Part 10, unparsable, missing/invalid UIDs, part media type not application/dicom
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a whole-slide image

FAILURE = {
    "no-space": OUT_OF_RESOURCES,
    "error": OUT_OF_RESOURCES,
    "invalid": CANNOT_UNDERSTAND,
    "not-wsi": SOP_CLASS_NOT_SUPPORTED,
}

FEED_BYTES = 1 << 20  # body bytes handed to the parser thread at a time
PREAMBLE_LIMIT = 64 << 10  # bytes searched for the first boundary (RFC 2046 allows a preamble before it)
ROOM_CHECK_BYTES = 64 << 20  # free disk is re-checked every this many bytes of a part
MAX_BOUNDARY = 200
DICM_HEAD = 140  # 128-byte preamble, "DICM", and the tag and VR of the first file meta element


@dataclass
class HttpSettings:
    bind: str = "0.0.0.0"
    port: int = 8080
    max_request_bytes: int = 32 << 30
    """Largest accepted request body; 0: no limit."""
    tokens: tuple[str, ...] = ()
    """Accepted bearer tokens. With neither tokens nor users, no authentication is asked."""
    users: dict[str, str] = field(default_factory=dict)
    """HTTP basic users: name -> password."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    graceful_seconds: float = 30.0
    """On stop, requests still running are given this long to finish, then cancelled."""

    @property
    def auth_required(self) -> bool:
        return bool(self.tokens or self.users)


class Reject(Exception):
    """Ends a request with an HTTP error: `status`, and the reason as a text/plain body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def dicom_json_response(referenced: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> dict:
    """The PS3.18 Annex I store instances response: ReferencedSOPSequence and FailedSOPSequence."""

    def ui(value: str) -> dict:
        return {"vr": "UI", "Value": [value]}

    body: dict = {}
    if failed:
        items = []
        for sop_class, sop_uid, reason in failed:
            item = {}
            if sop_class:
                item["00081150"] = ui(sop_class)
            if sop_uid:
                item["00081155"] = ui(sop_uid)
            item["00081197"] = {"vr": "US", "Value": [reason]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": [{"00081150": ui(c), "00081155": ui(u)} for c, u in referenced]}
    return body


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

    def __init__(self, receiver: "StowReceiver", boundary: bytes, study: str | None, key: str, peer: str) -> None:
        self.r = receiver
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
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=self.r.store.incoming)
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
            if not self.r.store.has_room():
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
            result = self.r.store.store_file(path, self.peer)
        except OSError as exc:
            log.error("STOW-RS from %s: write failed: %s", self.peer, exc)
            result = StoreResult("error", f"write failed: {exc}")
        if result.ok:
            log.info("stored %s from %s (%s)", result.sop_instance_uid, self.peer, result.status)
            self.referenced.append((result.sop_class_uid, result.sop_instance_uid))
            self.r.on_stored(result, self.key)
        else:
            self._fail(result.sop_class_uid, result.sop_instance_uid, FAILURE[result.status], result.message)


class StowReceiver:
    """STOW-RS endpoint. `on_stored(result, key)` and `on_closed(key)` feed the tracker, as for DIMSE."""

    def __init__(
        self,
        settings: HttpSettings,
        store: InstanceStore,
        on_stored: Callable[[StoreResult, str], None] = lambda r, a: None,
        on_closed: Callable[[str], None] = lambda a: None,
    ) -> None:
        self.s = settings
        self.store = store
        self.on_stored = on_stored
        self.on_closed = on_closed
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/dicom-web/studies", self.stow, methods=["POST"]),
            Route("/dicom-web/studies/{study}", self.stow, methods=["POST"]),
        ])

    # --- checks before the body is read ----------------------------------------------------------
    def _authenticate(self, request: Request) -> str:
        """The authenticated user ("" for a token, or when no authentication is configured); Reject otherwise."""
        if not self.s.auth_required:
            return ""
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and self.s.tokens and credentials:
            given = credentials.encode()
            if any(hmac.compare_digest(given, t.encode()) for t in self.s.tokens):
                return ""
            raise Reject(403, "the bearer token is not accepted")
        if scheme == "basic" and self.s.users and credentials:
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Reject(400, "malformed Basic credentials") from None
            expected = self.s.users.get(user)
            # Compare even for an unknown user, so the timing does not tell which users exist.
            ok = hmac.compare_digest(password.encode(), (expected if expected is not None else "\0" + password).encode())
            if ok and expected is not None:
                return user
            raise Reject(403, "user name or password not accepted")
        raise Reject(401, "authentication required: " + " or ".join(
            (["a bearer token (Authorization: Bearer ...)"] if self.s.tokens else [])
            + (["HTTP basic credentials"] if self.s.users else [])))

    def _challenge(self, response: Response) -> None:
        if self.s.tokens:
            response.headers.append("WWW-Authenticate", 'Bearer realm="wsi-node"')
        if self.s.users:
            response.headers.append("WWW-Authenticate", 'Basic realm="wsi-node", charset="UTF-8"')

    def _boundary(self, request: Request) -> bytes:
        header = request.headers.get("content-type", "")
        media, params = parse_options_header(header)
        if media != b"multipart/related":
            raise Reject(415, f'Content-Type must be multipart/related; type="application/dicom" (got {header or "none"!r})')
        kind = params.get(b"type")
        if kind is not None and kind.split(b";")[0].strip().lower() != b"application/dicom":
            raise Reject(415, f"multipart/related type {kind.decode('latin-1')!r} is not supported: only application/dicom parts are accepted")
        boundary = params.get(b"boundary", b"")
        # RFC 2046 allows 1 to 70 characters, but Orthanc sends two UUIDs (73): be lenient up to 200.
        if not 1 <= len(boundary) <= MAX_BOUNDARY or any(c < 0x21 and c != 0x20 or c > 0x7E for c in boundary):
            raise Reject(400, f"malformed multipart request: the Content-Type header has no valid boundary parameter "
                              f"(1 to {MAX_BOUNDARY} printable ASCII characters; got {boundary.decode('latin-1')!r})")
        return boundary

    def _check_size(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is None:
            return
        try:
            size = int(length)
        except ValueError:
            raise Reject(400, f"invalid Content-Length {length!r}") from None
        if self.s.max_request_bytes and size > self.s.max_request_bytes:
            raise Reject(413, f"request body of {size} bytes is over the limit of {self.s.max_request_bytes} bytes (--http-max-request-mb)")

    # --- the endpoint ----------------------------------------------------------------------------
    async def stow(self, request: Request) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        try:
            user = self._authenticate(request)
            study = request.path_params.get("study")
            if study is not None and not valid_uid(study):
                raise Reject(400, f"{study!r} in the URL is not a valid Study Instance UID")
            boundary = self._boundary(request)
            self._check_size(request)
            if not self.store.has_room():
                raise Reject(507, f"free disk space is below the reserve of {self.store.reserve_bytes >> 20} MB")
        except Reject as exc:
            log.warning("STOW-RS from %s refused (HTTP %d): %s", client, exc.status, exc.reason)
            response = Response(exc.reason + "\n", exc.status, media_type="text/plain")
            if exc.status == 401:
                self._challenge(response)
            return response
        peer = f"STOW{'/' + user if user else ''}@{client.rsplit(':', 1)[0]}"
        key = f"STOW{'/' + user if user else ''}@{client}#{next(self._ids)}"
        body = StowRequest(self, boundary, study, key, peer)
        try:
            await self._receive(request, body)
        except ClientDisconnect:
            return self._failed_request(body, client, 400, "truncated request: the client closed the connection before the end of the body")
        except Reject as exc:
            return self._failed_request(body, client, exc.status, exc.reason)
        except OSError as exc:  # the temporary file could not be created or written
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            return self._failed_request(body, client, 507 if full else 500, f"cannot write the received data: {exc}")
        finally:
            body.discard()
            self.on_closed(key)
        if not body.referenced and not body.failed:
            return self._failed_request(body, client, 400, "the multipart body holds no part")
        status = 200 if not body.failed else 202 if body.referenced else 409
        framing = "chunked" if "chunked" in request.headers.get("transfer-encoding", "").lower() else "Content-Length"
        log.info("STOW-RS from %s: %d instance(s) stored, %d failed (HTTP %d; %d bytes, %s)",
                 client, len(body.referenced), len(body.failed), status, body.received, framing)
        return Response(json.dumps(dicom_json_response(body.referenced, body.failed)), status, media_type="application/dicom+json")

    async def _receive(self, request: Request, body: StowRequest) -> None:
        limit = self.s.max_request_bytes
        pending = bytearray()
        async for chunk in request.stream():
            body.received += len(chunk)
            if limit and body.received > limit:
                raise Reject(413, f"request body is over the limit of {limit} bytes (--http-max-request-mb)")
            pending += chunk
            if len(pending) >= FEED_BYTES:
                data, pending = bytes(pending), bytearray()
                await run_in_threadpool(body.feed, data)
        if pending:
            await run_in_threadpool(body.feed, bytes(pending))
        await run_in_threadpool(body.finish)

    def _failed_request(self, body: StowRequest, client: str, status: int, reason: str) -> Response:
        if body.referenced:
            reason += f" ({len(body.referenced)} complete instance(s) received before were stored and stay stored)"
        log.warning("STOW-RS from %s failed (HTTP %d): %s", client, status, reason)
        return Response(reason + "\n", status, media_type="text/plain")
