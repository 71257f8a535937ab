"""The adapter's acceptor server: a real pynetdicom server on loopback that stops as soon as it is asked."""

from __future__ import annotations

import socket
import sys
import threading

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from scp.pynetdicom_adapter import STOP_POLL_S, NodeAE, PromptServer


def _serve_forever_poll(thread: threading.Thread) -> float | None:
    """The poll interval the thread's running serve_forever was given (read from its live frame)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "serve_forever" and "poll_interval" in frame.f_locals:
            return frame.f_locals["poll_interval"]
        frame = frame.f_back
    return None


def test_the_node_ae_serves_with_a_prompt_stop_and_shuts_down_cleanly():
    ae = NodeAE(ae_title="WSINODE")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        assert isinstance(server, PromptServer)
        assert server in ae._servers  # AE.shutdown and server.shutdown find it there
        port = server.server_address[1]
        [acceptor] = [t for t in threading.enumerate() if t.name == f"AcceptorServer@{port}"]
        assert _serve_forever_poll(acceptor) == STOP_POLL_S < 0.5  # socketserver's default is 0.5 s

        scu = AE(ae_title="ECHOSCU")
        scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 10
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="WSINODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        server.shutdown()
    acceptor.join(5)
    assert not acceptor.is_alive()
    assert server not in ae._servers
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port still accepts connections after shutdown"
