"""The DICOMweb receiver: STOW-RS (PS3.18 10.5) on Starlette; the HTTP endpoint and its settings.

`POST /dicom-web/studies` and `POST /dicom-web/studies/{StudyInstanceUID}` with a
`multipart/related; type="application/dicom"` body, sent with Content-Length or chunked.
This module does what happens before and around the body: authentication (bearer tokens,
basic users), the Content-Type and size checks, free disk, and the answer. The body itself is
fed from `request.stream()` to a StowRequest (stow_body.py), which streams every part to a
temporary file in `inbox/.incoming/` and stores it exactly like a C-STORE instance
(`InstanceStore.store_file`: validation, fsync, atomic rename, duplicates rule), reported to
the tracker through the same ReceiverEvents as the DIMSE receiver, with one "association" key
per HTTP request.

Parsing and storing run in a worker thread (about 4 MiB of body at a time, the next read while the
last is parsed; the part's bytes then go to its write-behind thread, scp/write_behind.py), never on
the event loop: a slow disk slows the sender down (TCP back-pressure), not the other requests.
The response is the PS3.18 Annex I store instances response in `application/dicom+json`
(stow_response.py); request-level errors are `text/plain` with the reason.

Limits (HttpSettings): request body size (413 from Content-Length, or as soon as it is crossed),
parts per request (413), part size (the part fails with 0xA700), free disk (507 before the body;
a part that meets the reserve fails with 0xA700, and a request where nothing could be stored for
lack of space is 507, PS3.18 10.5.3), a body that stalls for `idle_timeout` (408). Concurrent
connections/requests and silent connections are limited in http.py. Temporary files belong to the
request (scp.incoming.IncomingFiles) and are removed however it ends.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import asyncio
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from scp.events import ReceiverEvents
from scp.incoming import IncomingFiles, SpaceRules
from scp.storage import InstanceStore, valid_uid
from scp.stow_body import StowRequest
from scp.stow_response import OUT_OF_RESOURCES, Reject, dicom_json_response

log = logging.getLogger("wsi_node.stow")

FEED_BYTES = 4 << 20  # body bytes handed to the parser thread at a time (one thread hop per 4 MiB)
MAX_BOUNDARY = 200


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
    max_concurrent: int = 32
    """Simultaneous connections and requests (uvicorn limit_concurrency); more get 503 (--http-max-concurrent)."""
    max_parts: int = 1000
    """Parts per STOW-RS request; more get 413 (--http-max-parts)."""
    max_part_bytes: int = 8 << 30
    """Largest part; a larger one is discarded and fails with 0xA700 (--max-instance-mb); 0: no cap."""
    idle_timeout: float = 30.0
    """A connection silent this long is closed: idle keep-alive, unfinished headers, a stalled body (--http-idle-timeout)."""

    @property
    def auth_required(self) -> bool:
        return bool(self.tokens or self.users)


class StowReceiver:
    """STOW-RS endpoint. `events` feed the tracker, as for DIMSE, with one key per request."""

    def __init__(self, settings: HttpSettings, store: InstanceStore, events: ReceiverEvents = ReceiverEvents()) -> None:
        self.s = settings
        self.store = store
        self.events = events
        self._ids = itertools.count(1)
        self.incoming = IncomingFiles(SpaceRules(store.incoming, store.reserve_bytes, settings.max_part_bytes,
                                                  store.mark))
        self.app = Starlette(routes=[
            Route("/dicom-web/studies", self.stow, methods=["POST"]),
            Route("/dicom-web/studies/{study}", self.stow, methods=["POST"]),
        ])
        self.app.state.http_settings = settings  # read by scp.http.HttpServer when it is not given its limits

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
            self.events.refused("stow", f"http-{exc.status}")
            response = Response(exc.reason + "\n", exc.status, media_type="text/plain")
            if exc.status == 401:
                self._challenge(response)
            return response
        peer = f"STOW{'/' + user if user else ''}@{client.rsplit(':', 1)[0]}"
        key = f"STOW{'/' + user if user else ''}@{client}#{next(self._ids)}"
        body = StowRequest(self.store, self.events, boundary, study, key, peer, self.incoming, self.s.max_parts)
        try:
            await self._receive(request, body)
        except ClientDisconnect:
            return self._failed_request(body, client, 400, "truncated request: the client closed the connection before the end of the body")
        except Reject as exc:
            return self._failed_request(body, client, exc.status, exc.reason)
        except OSError as exc:  # the temporary file could not be created or written
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            return self._failed_request(body, client, 507 if full else 500,
                                        f"cannot write the received data ({errno.errorcode.get(exc.errno or 0, 'I/O error')})")
        except Exception as exc:  # never a bare 500: the reason, one log line with the trace, a metric
            log.exception("STOW-RS from %s failed unexpectedly (%s)", client, exc.__class__.__name__)
            return self._failed_request(body, client, 500, f"internal error ({exc.__class__.__name__}); see the node log")
        finally:
            body.discard()
            self.events.on_closed(key)
        if not body.referenced and not body.failed:
            return self._failed_request(body, client, 400, "the multipart body holds no part")
        if body.referenced or not body.failed:
            status = 200 if not body.failed else 202
        elif all(reason == OUT_OF_RESOURCES for _, _, reason in body.failed):
            status = 507  # nothing stored, for lack of space (PS3.18 10.5.3)
        else:
            status = 409
        framing = "chunked" if "chunked" in request.headers.get("transfer-encoding", "").lower() else "Content-Length"
        log.info("STOW-RS from %s: %d instance(s) stored, %d failed (HTTP %d; %d bytes, %s)",
                 client, len(body.referenced), len(body.failed), status, body.received, framing)
        return Response(json.dumps(dicom_json_response(body.referenced, body.failed)), status, media_type="application/dicom+json")

    async def _receive(self, request: Request, body: StowRequest) -> None:
        """Feed the body to the parser thread FEED_BYTES at a time, reading the next while the last is parsed.

        One feed at a time and in order (StowRequest is not re-entrant), but never waited for before
        the next FEED_BYTES have arrived, so the network read and the parsing/writing overlap. A failed
        feed (a malformed body) is raised here at the latest one FEED_BYTES later.
        """
        limit = self.s.max_request_bytes
        chunks: list[bytes] = []
        size = 0
        feeding: asyncio.Future | None = None
        try:
            async for chunk in _with_idle_timeout(request.stream(), self.s.idle_timeout):
                body.received += len(chunk)
                if limit and body.received > limit:
                    raise Reject(413, f"request body is over the limit of {limit} bytes (--http-max-request-mb)")
                chunks.append(chunk)
                size += len(chunk)
                if size >= FEED_BYTES:
                    data, chunks, size = b"".join(chunks), [], 0
                    if feeding is not None:
                        await feeding
                    feeding = asyncio.ensure_future(run_in_threadpool(body.feed, data))
            if feeding is not None:
                await feeding
                feeding = None
            if chunks:
                await run_in_threadpool(body.feed, b"".join(chunks))
            await run_in_threadpool(body.finish)
        finally:
            if feeding is not None and not feeding.done():
                # The request ends with a feed in flight: body.discard (the caller) cleans up once it is
                # done; its outcome no longer matters, so it is not left "never retrieved".
                feeding.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _failed_request(self, body: StowRequest, client: str, status: int, reason: str) -> Response:
        self.events.refused("stow", f"http-{status}")
        if body.referenced:
            reason += f" ({len(body.referenced)} complete instance(s) received before were stored and stay stored)"
        log.warning("STOW-RS from %s failed (HTTP %d): %s", client, status, reason)
        return Response(reason + "\n", status, media_type="text/plain")


async def _with_idle_timeout(stream, timeout: float | None):
    """The body chunks, ending the request with 408 when no byte arrives for `timeout` seconds."""
    it = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), timeout) if timeout else await it.__anext__()
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Reject(408, f"no body data for {timeout:g} s (--http-idle-timeout): request abandoned") from None
        yield chunk
