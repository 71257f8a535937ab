"""Runs an ASGI app on uvicorn in a background thread with its own event loop.

The listening socket is bound in the caller's thread, so a port already in use fails
`start()` at once (like the DIMSE server) and port 0 gets a real port to report. `stop()`
stops accepting connections, gives requests still running `graceful_seconds` to finish,
then cancels them and joins the thread.

Connection limits: at most `max_concurrent` connections and requests (uvicorn's
limit_concurrency; more get 503, with a lingering close so an upload still being sent
does not turn the 503 into a reset), and no connection stays silent for longer than
`idle_timeout`: uvicorn closes idle keep-alive connections itself, but it never times
out a connection that sends nothing, or headers that trickle in, so the protocol class
here adds a deadline for the request headers from the moment a connection opens and
after each response (a slow-loris client is closed, not kept for ever).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

log = logging.getLogger("wsi_node.http")

DEFAULT_MAX_CONCURRENT = 32
DEFAULT_IDLE_TIMEOUT = 30.0


def deadline_protocol(timeout: float):
    """uvicorn's httptools protocol with a deadline for each request's headers (None: httptools is missing)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.warning("HTTP client %s sent no complete request headers for %g s: connection closed",
                            "%s:%d" % self.client if self.client else "?", timeout)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        _lingering = None

        def on_headers_complete(self) -> None:
            self._disarm()
            over = self.limit_concurrency is not None and (
                len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency)
            super().on_headers_complete()
            if over and self.cycle is not None and not self.cycle.response_complete:
                # uvicorn answers 503 without reading the body and closes at once; a client still sending
                # (a STOW-RS upload) then meets a reset before it reads the answer. Lingering close
                # (RFC 9112 section 9.6): send the 503 and a FIN, read and drop the rest of the body, close
                # when the request ends (or at the header deadline, armed when the response completes).
                self.cycle.transport = self._lingering = _Lingering(self.transport)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self._lingering:
                self._lingering.body_read()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


class _Lingering:
    """The transport of a 503 cycle: closed once both the answer is sent (close()) and the body is read.

    Until the body is read, close() only shuts down the sending side; a body that ended before the
    answer was sent (a small request) closes at once when the answer is done.
    """

    def __init__(self, transport) -> None:
        self._transport = transport
        self._answered = self._read = False

    def close(self) -> None:
        self._answered = True
        if self._read or not self._transport.can_write_eof():  # TLS cannot half-close: close as uvicorn would
            self._transport.close()
        else:
            self._transport.write_eof()

    def body_read(self) -> None:
        self._read = True
        if self._answered and not self._transport.is_closing():
            self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class HttpServer:
    def __init__(self, app, bind: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None,
                 graceful_seconds: float = 30.0, max_concurrent: int | None = None, idle_timeout: float | None = None) -> None:
        # Limits not given: the StowReceiver's HttpSettings on the app, else the defaults.
        settings = getattr(getattr(app, "state", None), "http_settings", None)
        self.max_concurrent = max_concurrent or getattr(settings, "max_concurrent", DEFAULT_MAX_CONCURRENT)
        self.idle_timeout = idle_timeout or getattr(settings, "idle_timeout", DEFAULT_IDLE_TIMEOUT)
        self.app = app
        self.bind = bind
        self.requested_port = port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.graceful_seconds = graceful_seconds
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.sock: socket.socket | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1] if self.sock is not None else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        try:
            self.sock = socket.create_server((self.bind, self.requested_port), family=family, backlog=128, reuse_port=False)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for HTTP on {self.bind}:{self.requested_port}: {exc.strerror}") from exc
        # uvicorn's own INFO lines (started, running on, shutting down) would duplicate ours.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn.Config(
            self.app, host=self.bind, port=self.port, log_config=None, access_log=False, lifespan="off",
            server_header=False, timeout_graceful_shutdown=int(self.graceful_seconds) or None,
            limit_concurrency=self.max_concurrent, timeout_keep_alive=self.idle_timeout,  # type: ignore[arg-type]  (call_later takes a float)
            http=deadline_protocol(self.idle_timeout) or "auto",
            ssl_certfile=str(self.tls_cert) if self.tls_cert else None,
            ssl_keyfile=str(self.tls_key) if self.tls_key else None,
        )
        try:
            config.load()  # here, so a bad certificate or key fails start() with its own message
        except Exception:
            self.sock.close()
            self.sock = None
            raise
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="wsi-node-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the HTTP server on {self.bind}:{self.requested_port} did not start (see the log above)")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(self.graceful_seconds + 10)
                if self.thread.is_alive():
                    log.warning("the HTTP server thread did not stop in time")
        if self.sock is not None:
            self.sock.close()
        self.server = self.thread = self.sock = None
