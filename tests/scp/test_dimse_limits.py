"""The DIMSE receiver under faults and hostile peers: full disks, huge PDUs, silent and idle connections.

Real senders over 127.0.0.1 (DCMTK storescu/echoscu, pynetdicom, raw sockets for PDUs no library
would send) against the node running in this process; every wait has a timeout.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from converter.testkit import SlideSpec, write_series
from scp.dimse import WSI_STORAGE
from tests.support.node import (RunningNode, pynetdicom_send, raw_association, read_pdu, storescu, tmpfs,
                                vm_rss_mb)

ECHOSCU = "/usr/bin/echoscu"
EXPLICIT = "1.2.840.10008.1.2.1"
MB = 1 << 20


def _incoming(n: RunningNode) -> list[str]:
    return sorted(p.name for p in (n.data / "inbox" / ".incoming").iterdir())


def _stored(n: RunningNode) -> list:
    return [p for p in (n.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _send_with_comments(port: int, files, aet: str = "PYSENDER") -> list[tuple[int, str]]:
    ae = AE(ae_title=aet)
    ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(WSI_STORAGE, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
    assert assoc.is_established
    out = []
    for f in files:
        st = assoc.send_c_store(f)
        out.append((int(st.Status), str(st.get("ErrorComment", ""))))
    assert assoc.is_established, "the association must survive refused instances"
    assoc.release()
    return out


def test_below_the_reserve_a_new_association_gets_a700_with_the_reason(tmp_path, caplog):
    files = write_series(SlideSpec(width=1024, height=768, seed=1001, transfer_syntax="explicit"), tmp_path / "src")
    n = RunningNode(tmp_path, disk_reserve_mb=(shutil.disk_usage(tmp_path).free >> 20) + 100_000)
    try:
        results = _send_with_comments(n.port, files)
        assert [s for s, _ in results] == [0xA700] * len(files)
        for _, comment in results:
            assert comment == f"free disk below the reserve of {n.settings.disk_reserve_mb} MB", comment
            assert len(comment) <= 64 and "/" not in comment
        # DCMTK sees a DIMSE status too (no TCP error, exit 0 after the association is released).
        done = storescu(n.port, *files, extra=("-v", "-nh"))
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("Refused: OutOfResources") + done.stdout.count("Refused: OutOfResources") == len(files), done.stderr
        assert not _stored(n)
        _wait(lambda: not _incoming(n), 5, f"left in .incoming: {_incoming(n)}")
        sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
        assert re.search(rf"C-STORE of {re.escape(sop)} from PYSENDER@127\.0\.0\.1 refused \(0xA700\)", caplog.text)
    finally:
        n.stop()


def test_instance_over_the_size_cap_is_refused_and_the_association_goes_on(tmp_path):
    files = write_series(SlideSpec(width=2048, height=1536, seed=1002, transfer_syntax="explicit", downsamples=(1, 8)), tmp_path / "src")
    small, big = sorted(files, key=lambda f: f.stat().st_size)[0], max(files, key=lambda f: f.stat().st_size)
    assert big.stat().st_size > 4 * MB > small.stat().st_size
    n = RunningNode(tmp_path, max_instance_bytes=4 * MB)
    try:
        results = _send_with_comments(n.port, [big, small])
        assert results[0] == (0xA700, "instance over the size limit of 4 MB")
        assert results[1][0] == 0x0000
        assert len(_stored(n)) == 1
        _wait(lambda: not _incoming(n), 5, f"left in .incoming: {_incoming(n)}")
    finally:
        n.stop()


def test_106_mb_into_a_60_mb_inbox_every_instance_gets_a_status(tmp_path):
    """The issue's case: storescu -R -xy +sd, 106 MB, 60 MB inbox, 20 MB reserve."""
    files = write_series(SlideSpec(width=6144, height=5632, seed=1003, transfer_syntax="explicit",
                                   downsamples=(1, 8, 32), concatenation_parts=8), tmp_path / "src")
    assert 100 * MB < sum(f.stat().st_size for f in files) < 112 * MB and len(files) == 10
    with tmpfs(tmp_path / "data" / "inbox", 60):
        n = RunningNode(tmp_path, disk_reserve_mb=20)
        try:
            done = storescu(n.port, tmp_path / "src", extra=("-v", "-nh"))
            out = done.stdout + done.stderr
            assert "TCP I/O Error" not in out and "Association Aborted" not in out, out
            assert done.returncode == 0, out
            statuses = re.findall(r"Received Store Response \(([^)]*)\)", out)
            assert len(statuses) == len(files), out
            assert set(statuses) <= {"Success", "Refused: OutOfResources"}, statuses
            ok = statuses.count("Success")
            assert 1 <= ok < len(files), statuses  # some fit, some did not
            # Acknowledged instances are intact, nothing partial is left.
            stored = _stored(n)
            assert len(stored) == ok
            by_sop = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
            for p in stored:
                ds = pydicom.dcmread(p)
                src = pydicom.dcmread(by_sop[str(ds.SOPInstanceUID)])
                assert ds.PixelData == src.PixelData
            _wait(lambda: not _incoming(n), 5, f"left in .incoming: {_incoming(n)}")
            # The association was not broken, and the node still answers.
            assert pynetdicom_echo(n.port)
        finally:
            n.stop()


def pynetdicom_echo(port: int, aet: str = "ECHOER", timeout: float = 10) -> bool:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def test_a_peer_announcing_a_1_gb_pdu_is_aborted_before_it_is_read(tmp_path, caplog):
    n = RunningNode(tmp_path)
    try:
        before = vm_rss_mb()
        sock = raw_association(n.port)
        sock.sendall(struct.pack(">BBL", 0x04, 0, 1 << 30))  # P-DATA-TF claiming 1 GiB
        sent = 0
        chunk = b"\0" * MB
        peak = before
        try:
            while sent < 300 * MB:
                sock.sendall(chunk)
                sent += len(chunk)
                peak = max(peak, vm_rss_mb())
        except OSError:
            pass  # the node closed the connection, as it should
        kind, body = read_pdu(sock, timeout=10) if sent < 300 * MB else (None, b"")
        sock.close()
        assert sent < 300 * MB, "the node kept reading a PDU longer than it advertised"
        assert kind in (0x07, 0), f"expected A-ABORT (0x07) or a closed connection, got {kind}"
        peak = max(peak, vm_rss_mb())
        print(f"1 GiB PDU announced, {sent >> 20} MB sent before the node closed: node RSS {before:.0f} -> {peak:.0f} MB")
        assert peak - before < 64, f"RSS grew from {before:.0f} to {peak:.0f} MB"
        assert "announced a PDU (type 0x04) of 1073741824 bytes, over the 262144 bytes accepted" in caplog.text
        assert pynetdicom_echo(n.port)
    finally:
        n.stop()


def test_an_oversized_association_request_is_aborted_unread(tmp_path, caplog):
    n = RunningNode(tmp_path)
    try:
        sock = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        sock.sendall(struct.pack(">BBL", 0x01, 0, 100 * MB) + b"\0" * (64 << 10))  # A-ASSOCIATE-RQ claiming 100 MB
        kind, body = read_pdu(sock, timeout=10)
        sock.close()
        assert kind in (0x07, 0), kind
        assert "announced a PDU (type 0x01) of 104857600 bytes, over the 262144 bytes accepted" in caplog.text
        assert pynetdicom_echo(n.port)
    finally:
        n.stop()


def test_the_node_advertises_its_max_pdu_and_a_100_mb_instance_keeps_memory_flat(tmp_path):
    import sys

    files = write_series(SlideSpec(width=6144, height=5632, seed=1004, transfer_syntax="explicit", downsamples=(1, 32)), tmp_path / "src")
    big = max(files, key=lambda f: f.stat().st_size)
    assert big.stat().st_size > 95 * MB
    n = RunningNode(tmp_path)
    try:
        # A pynetdicom sender that would itself take PDUs of any size, in its own process so that
        # this process's RSS is the node's.
        script = (
            "import sys; from pynetdicom import AE; ae = AE(ae_title='HUGEPDU'); ae.maximum_pdu_size = 0; "
            "ae.dimse_timeout = ae.network_timeout = 60; "
            f"ae.add_requested_context('{WSI_STORAGE}', '{EXPLICIT}'); "
            f"a = ae.associate('127.0.0.1', {n.port}, ae_title='WSINODE'); "
            "print(a.acceptor.maximum_length, int(a.send_c_store(sys.argv[1]).Status)); a.release()"
        )
        before = peak = vm_rss_mb()
        proc = subprocess.Popen([sys.executable, "-c", script, str(big)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the sender did not finish"
            peak = max(peak, vm_rss_mb())
            time.sleep(0.01)
        out = proc.stdout.read().split()
        assert out == [str(256 << 10), "0"], out  # advertised max PDU in A-ASSOCIATE-AC; stored
        print(f"{big.stat().st_size >> 20} MB instance at 256 KiB PDUs: node RSS {before:.0f} -> {peak:.0f} MB")
        assert peak - before < 32, f"node RSS grew from {before:.0f} to {peak:.0f} MB"
    finally:
        n.stop()


def test_silent_connections_do_not_lock_real_senders_out(tmp_path):
    n = RunningNode(tmp_path, max_associations=10, acse_timeout=3)
    silent = [socket.create_connection(("127.0.0.1", n.port), timeout=10) for _ in range(12)]
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        assert pynetdicom_echo(n.port), "a real sender must get through 12 silent connections"
        if shutil.which(ECHOSCU):
            done = subprocess.run([ECHOSCU, "-aec", "WSINODE", "127.0.0.1", str(n.port)], capture_output=True, text=True, timeout=20)
            assert done.returncode == 0, done.stderr
        assert time.monotonic() - t0 < 3 + 2
        # And the silent ones are closed after the ACSE timeout (ARTIM, PS3.8 9.1.5).
        for s in silent:
            s.settimeout(3 + 5)
            assert s.recv(1) == b"", "a silent connection outlived the ACSE timeout"
    finally:
        for s in silent:
            s.close()
        n.stop()


def test_idle_associations_are_aborted_and_a_full_node_says_why(tmp_path, caplog):
    n = RunningNode(tmp_path, max_associations=3, network_timeout=2)
    idle = []
    try:
        for _ in range(3):
            idle.append(raw_association(n.port, calling="IDLER"))
        ae = AE(ae_title="LATECOMER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE")
        assert assoc.is_rejected
        assert "too many associations: 3 at once (--max-associations)" in caplog.text
        # After the idle timeout the node aborts them (A-ABORT), and the sender gets through.
        for s in idle:
            kind, _ = read_pdu(s, timeout=2 + 5)
            assert kind in (0x07, 0), kind
        t0 = time.monotonic()
        while not pynetdicom_echo(n.port, "LATECOMER"):
            assert time.monotonic() - t0 < 5
            time.sleep(0.2)
    finally:
        for s in idle:
            s.close()
        n.stop()


def test_rejections_log_the_real_reason(tmp_path, caplog):
    n = RunningNode(tmp_path, allowed_calling_aets=("SCANNER1",))
    try:
        for calling, called in (("INTRUDER", "WSINODE"), ("SCANNER1", "NOTTHENODE")):
            ae = AE(ae_title=calling)
            ae.add_requested_context(Verification)
            assert ae.associate("127.0.0.1", n.port, ae_title=called).is_rejected
        assert "calling AE title 'INTRUDER' is not allowed (--allowed-aet)" in caplog.text
        assert "called AE title 'NOTTHENODE' is not this node's 'WSINODE'" in caplog.text
        assert "rejected (called AE" not in caplog.text
    finally:
        n.stop()


def test_an_unexpected_error_in_the_store_becomes_a_status_a_log_line_and_a_metric(tmp_path, caplog):
    files = write_series(SlideSpec(width=800, height=600, seed=1005, transfer_syntax="explicit"), tmp_path / "src")
    n = RunningNode(tmp_path)
    refused: list = []
    try:
        def broken(path, peer):  # a fault inside the store step, such as a bug meeting a new kind of input
            raise RuntimeError("boom")
        n.node.store.store_file = broken
        events = n.node.dimse.events
        n.node.dimse.events = type(events)(events.on_stored, events.on_closed, lambda proto, why: refused.append((proto, why)))
        results = _send_with_comments(n.port, files[:1], aet="FAULTY")
        assert results == [(0xC000, "internal error (RuntimeError); see the node log")]
        sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
        assert f"C-STORE of {sop} from FAULTY@127.0.0.1 failed unexpectedly" in caplog.text
        assert refused == [("dimse", "error")]
        _wait(lambda: not _incoming(n), 5, f"left in .incoming: {_incoming(n)}")
    finally:
        n.stop()


def test_a_sender_killed_mid_instance_leaves_no_temporary_file(tmp_path):
    import sys

    files = write_series(SlideSpec(width=6144, height=5632, seed=1006, transfer_syntax="explicit", downsamples=(1, 32)), tmp_path / "src")
    big = max(files, key=lambda f: f.stat().st_size)
    n = RunningNode(tmp_path)
    try:
        script = (
            "import sys; from pynetdicom import AE; ae = AE(ae_title='DYING'); "
            f"ae.add_requested_context('{WSI_STORAGE}', '{EXPLICIT}'); "
            f"a = ae.associate('127.0.0.1', {n.port}, ae_title='WSINODE'); a.send_c_store(sys.argv[1])"
        )
        proc = subprocess.Popen([sys.executable, "-c", script, str(big)])
        incoming = n.data / "inbox" / ".incoming"
        try:
            _wait(lambda: any(p.stat().st_size > MB for p in incoming.iterdir()), 20, "the transfer never started")
        finally:
            proc.kill()
            proc.wait(10)
        _wait(lambda: not _incoming(n), 5, f"the partial transfer stayed in .incoming: {_incoming(n)}")
        for p in _stored(n):  # only if the kill came too late (a loaded machine): then it is complete
            assert pydicom.dcmread(p).PixelData == pydicom.dcmread(big).PixelData
    finally:
        n.stop()


def _concurrent_round(port: int, count: int, tag: str, snapshot=lambda: None) -> list[tuple[str, tuple | None]]:
    """`count` associations requested at once; the accepted ones hold until every request has its answer.

    `snapshot()` is called once every request has its answer (the accepted ones still open): its
    value is in the result as ("snapshot", (value,))."""
    barrier = threading.Barrier(count, timeout=30)
    everyone_answered = threading.Event()
    results: list[tuple[str, tuple | None]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        ae = AE(ae_title=f"{tag}{i}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(Verification)
        barrier.wait()
        assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
        if assoc.is_established:
            outcome = ("accepted", None)
        elif assoc.is_rejected:
            rj = assoc.acceptor.primitive
            outcome = ("rejected", (rj.result, rj.result_source, rj.diagnostic))
        else:
            outcome = ("failed", None)
        with lock:
            results.append(outcome)
            if len(results) == count:
                results.append(("snapshot", (snapshot(),)))
                everyone_answered.set()
        if assoc.is_established:
            # Hold the slot until all requests were answered, so that "accepted" means "at the same time".
            everyone_answered.wait(30)
            ok = assoc.send_c_echo()
            assoc.release()
            with lock:
                results.append(("echo", (int(ok.Status),) if ok else None))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sender thread did not finish within 60 s"
    return results


def test_twenty_at_once_never_more_than_the_limit_five_rounds(tmp_path):
    # max_associations 10: in each round exactly 10 are accepted at once and the other 10 get A-ASSOCIATE-RJ
    # result 2 (rejected-transient), source 3 (service-provider, presentation), reason 2 (local limit exceeded),
    # PS3.8 9.3.4 table 9-21; the node itself never counts more than 10 established acceptors.
    n = RunningNode(tmp_path, max_associations=10)
    ae = n.node.dimse.server.ae
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], ae.accepted_count())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for round_ in range(5):
            results = _concurrent_round(n.port, 20, f"R{round_}C", ae.accepted_count)
            kinds = [k for k, _ in results]
            assert kinds.count("accepted") == 10 and kinds.count("rejected") == 10, (round_, kinds)
            assert {why for k, why in results if k == "rejected"} == {(2, 3, 2)}, (round_, results)
            assert [why for k, why in results if k == "echo"] == [(0,)] * 10, (round_, results)
            assert [why for k, why in results if k == "snapshot"] == [(10,)], (round_, results)
            _wait(lambda: ae.accepted_count() == 0, 10, f"round {round_}: associations still counted after release")
        assert 0 < peak[0] <= 10, f"the node had {peak[0]} associations established at once (limit 10)"
    finally:
        stop.set()
        sampler.join(5)
        n.stop()
