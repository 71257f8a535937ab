"""Hostile clients: malformed STOW-RS requests and multipart framing, many parts, slow and vanishing
clients, raw-socket DICOM upper layer abuse, and more associations than the node allows.

One node process for the module (max 10 associations, the default). Each test asserts the exact
answer the client sees (HTTP status and PS3.18 failure reasons; A-ASSOCIATE-RJ result/source/
reason, PS3.8 9.3.4; A-ABORT or a closed connection) and then that the node still answers C-ECHO
and /healthz with nothing left in inbox/.incoming (`check_after`). The last test checks that
every valid slide sent here was published and nothing else.
"""

from __future__ import annotations

import io
import socket
import threading
import time

import pydicom
import pytest
import requests
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.faults import mutations as m
from tests.faults import rawdicom as raw
from tests.faults.campaign import CANNOT_UNDERSTAND, DOES_NOT_MATCH, campaign_fixture, check_after, check_published, valid_pair
from tests.faults.harness import CONTENT_TYPE, c_echo, multipart, proc_rss_kb, stow, wait_for


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    yield from campaign_fixture(tmp_path_factory)


def _raw_http(c, head: str, body: bytes = b"", read_timeout: float = 10) -> int:
    """Send a hand-written HTTP request; the status code of the answer."""
    with socket.create_connection(("127.0.0.1", c.node.http_port), timeout=read_timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


# --- STOW-RS request level -------------------------------------------------------------------------
@pytest.mark.parametrize("content_type,status", [
    ("application/json", 415),
    ('multipart/related; type="image/jpeg"; boundary="x"', 415),
    ('multipart/related; type="application/dicom"', 400),  # no boundary
])
def test_stow_wrong_content_type(campaign, content_type, status):
    _, parts = valid_pair(campaign, f"ct-{status}-{content_type[:12]}", publish=False)
    assert stow(campaign.node.stow_url, multipart(parts), content_type=content_type).http == status
    check_after(campaign, "wrong content type")


def test_stow_body_with_another_boundary(campaign):
    _, parts = valid_pair(campaign, "other-boundary", publish=False)
    out = stow(campaign.node.stow_url, multipart(parts, boundary="not-the-declared-one"))
    assert out.http == 400, out
    check_after(campaign, "other boundary")


def test_stow_empty_body(campaign):
    assert stow(campaign.node.stow_url, b"").http == 400
    check_after(campaign, "empty body")


def test_stow_part_that_is_not_application_dicom(campaign):
    a, parts = valid_pair(campaign, "part-text-plain", publish=False)
    out = stow(campaign.node.stow_url, multipart(parts[:1], part_type="text/plain"))
    assert (out.http, out.failed) == (409, [CANNOT_UNDERSTAND]), out
    check_after(campaign, "text/plain part")


def test_stow_part_of_random_bytes(campaign):
    out = stow(campaign.node.stow_url, multipart([bytes(range(256)) * 64]))
    assert (out.http, out.failed) == (409, [CANNOT_UNDERSTAND]), out
    check_after(campaign, "random part")


def test_stow_empty_part(campaign):
    out = stow(campaign.node.stow_url, multipart([b""]))
    assert (out.http, out.failed) == (409, [CANNOT_UNDERSTAND]), out
    check_after(campaign, "empty part")


def test_stow_absurd_content_length_is_refused_before_the_body(campaign):
    status = _raw_http(campaign, f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
                                 f"Content-Length: {10**13}\r\n", b"--x")
    assert status == 413
    check_after(campaign, "absurd Content-Length")


def test_stow_study_in_url_is_not_a_uid(campaign):
    _, parts = valid_pair(campaign, "bad-url-uid", publish=False)
    out = stow(f"{campaign.node.stow_url}/1.2.abc", multipart(parts))
    assert out.http == 400, out
    check_after(campaign, "bad study UID in the URL")


def test_stow_instance_of_another_study_than_the_url(campaign):
    _, parts = valid_pair(campaign, "url-mismatch", publish=False)
    out = stow(f"{campaign.node.stow_url}/{m.uid_for('some', 'other', 'study')}", multipart(parts[:1]))
    assert (out.http, out.failed) == (409, [DOES_NOT_MATCH]), out
    check_after(campaign, "study mismatch")


def test_stow_mixed_valid_and_invalid_parts(campaign):
    _, parts = valid_pair(campaign, "mixed")
    out = stow(campaign.node.stow_url, multipart([parts[0], b"not dicom at all", parts[1]]))
    assert (out.http, out.referenced, out.failed) == (202, 2, [CANNOT_UNDERSTAND]), out
    check_after(campaign, "mixed parts")


def test_stow_200_parts_in_one_request(campaign):
    # A sender that repeats itself: the two instances of one slide, 100 times each. All referenced, stored once.
    a, parts = valid_pair(campaign, "200-parts")
    out = stow(campaign.node.stow_url, multipart(parts * 100), timeout=120)
    assert (out.http, out.referenced, out.failed) == (200, 200, []), out
    study, series = str(a.StudyInstanceUID), str(a.SeriesInstanceUID)
    sops = sorted(str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID) for p in parts)
    campaign.node.wait_published(series, sops, timeout=60)
    check_after(campaign, "200 parts")


def test_stow_slow_client_sending_in_small_chunks(campaign):
    a, parts = valid_pair(campaign, "slow-stow")
    body = multipart(parts)

    def trickle():
        for i in range(0, len(body), 4096):
            time.sleep(0.02)
            yield body[i:i + 4096]

    r = requests.post(campaign.node.stow_url, data=trickle(), headers={"Content-Type": CONTENT_TYPE}, timeout=60)
    assert r.status_code == 200, r.text
    check_after(campaign, "slow client")


def test_stow_client_that_vanishes_mid_body(campaign):
    _, parts = valid_pair(campaign, "vanishing", publish=False)
    body = multipart(parts)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", campaign.node.http_port), timeout=10) as s:
        s.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.3)
    wait_for(lambda: campaign.node.incoming() == [], 10, 0.1, "the vanished client's temporary file to be removed")
    check_after(campaign, "vanishing client")


def test_stow_missing_closing_boundary(campaign):
    # The body ends after the last complete part without the closing delimiter (RFC 2046 5.1.1): a truncated request.
    _, parts = valid_pair(campaign, "no-closing", publish=False)
    out = stow(campaign.node.stow_url, multipart(parts[:1], closing=False))
    assert out.http == 400, out
    check_after(campaign, "no closing boundary")


# --- DICOM upper layer, raw sockets ----------------------------------------------------------------------
def test_garbage_instead_of_an_association_request(campaign):
    with socket.create_connection(("127.0.0.1", campaign.node.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(200))
        answer = raw.read_pdu(s)
    # PS3.8 9.3.1: an unrecognised PDU type is answered with A-ABORT (type 0x07) or the connection is closed.
    assert answer is None or answer[0] == 0x07, answer
    check_after(campaign, "garbage PDU")


def test_ct_context_is_refused_at_negotiation(campaign):
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", campaign.node.port, ae_title="WSINODE")
    assert assoc.is_established
    try:
        refused = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == CTImageStorage]
        assert refused and refused[0].result == 0x03  # PS3.8 9.3.3.2: abstract syntax not supported
    finally:
        assoc.release()
    check_after(campaign, "CT context")


def test_wrong_called_ae_title_is_rejected(campaign):
    with socket.create_connection(("127.0.0.1", campaign.node.port), timeout=10) as s:
        s.sendall(raw.associate_rq(called="NOTTHENODE"))
        answer = raw.read_pdu(s)
    assert answer is not None and answer[0] == 0x03, answer  # A-ASSOCIATE-RJ
    result, source, reason = answer[1][1], answer[1][2], answer[1][3]
    assert (result, source, reason) == (1, 1, 7), (result, source, reason)  # permanent, service user, called AE not recognized
    check_after(campaign, "wrong called AE")


def _associate_raw(c, max_length: int = 16384) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", c.node.port), timeout=10)
    s.sendall(raw.associate_rq(max_length=max_length, abstract=raw.WSI_STORAGE, syntaxes=(raw.EXPLICIT_LE,)))
    answer = raw.read_pdu(s)
    assert answer is not None and answer[0] == 0x02, answer  # A-ASSOCIATE-AC
    c.last_ac = answer[1]
    return s


def test_node_advertises_a_maximum_pdu_length(campaign):
    # PS3.8 D.1: Maximum Length 0 means "no limit"; the node must advertise a bound it enforces.
    with _associate_raw(campaign) as s:
        advertised = raw.accepted_max_length(campaign.last_ac)
    assert advertised is not None and 0 < advertised <= 16 << 20, advertised
    check_after(campaign, "max PDU advertised")


def test_p_data_announcing_4_gb_is_aborted_without_buffering(campaign):
    # A P-DATA-TF whose length field says 4 GB, then 64 MB of it: the node must abort (A-ABORT or close)
    # as soon as the length exceeds what it advertised, without holding what arrives in memory.
    rss0 = proc_rss_kb(campaign.node.proc.pid)
    sent = 0
    with _associate_raw(campaign) as s:
        s.settimeout(5)
        try:
            s.sendall(raw.p_data_header(0xFFFFFFF0))
            chunk = bytes(1 << 20)
            while sent < 64 << 20:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        peak = proc_rss_kb(campaign.node.proc.pid)
    assert sent < 64 << 20, f"the node read all {sent >> 20} MB of an oversized PDU"
    assert peak - rss0 < 32 << 10, f"node RSS grew by {(peak - rss0) >> 10} MB"
    check_after(campaign, "4 GB PDU")


def test_idle_connections_do_not_lock_out_senders(campaign):
    # 12 TCP connections that send nothing (more than the 10 associations allowed): a real sender still
    # gets in within 10 s (an idle connection must not hold a slot until the 30 s ACSE timeout).
    idle = [socket.create_connection(("127.0.0.1", campaign.node.port), timeout=10) for _ in range(12)]
    try:
        time.sleep(0.5)
        deadline = time.monotonic() + 10
        ok = False
        while time.monotonic() < deadline and not ok:
            ok = c_echo(campaign.node.port, timeout=3)
        assert ok, "no association possible while 12 idle connections are open"
    finally:
        for s in idle:
            s.close()
    check_after(campaign, "idle connections")


def test_twenty_concurrent_associations(campaign):
    # max_associations is 10: ten are accepted and store, the other ten are rejected with A-ASSOCIATE-RJ result 2
    # (rejected-transient), source 3 (service-provider, presentation related), reason 2 (local limit exceeded),
    # PS3.8 9.3.4 table 9-21; and the node takes new ones once they are gone. The accepted ones keep their slot
    # until every request has its answer, so "accepted" means "at the same time" even on a slow machine.
    a, parts = valid_pair(campaign, "twenty")
    barrier = threading.Barrier(20, timeout=30)
    everyone_answered = threading.Event()
    answers: list = []
    stored: list = []
    lock = threading.Lock()

    def one(i: int) -> None:
        ae = AE(ae_title=f"CONC{i}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context(m.WSI_STORAGE, "1.2.840.10008.1.2.4.50")
        barrier.wait()
        assoc = ae.associate("127.0.0.1", campaign.node.port, ae_title="WSINODE")
        if assoc.is_established:
            answer = ("ok", None)
        elif assoc.is_rejected:
            rj = assoc.acceptor.primitive
            answer = ("rejected", (rj.result, rj.result_source, rj.diagnostic))
        else:
            answer = ("failed", None)
        with lock:
            answers.append(answer)
            if len(answers) == 20:
                everyone_answered.set()
        if assoc.is_established:
            everyone_answered.wait(30)
            statuses = [int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(p))).Status) for p in parts]
            assoc.release()
            with lock:
                stored.append(statuses)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sender did not finish within 60 s"
    kinds = sorted(k for k, _ in answers)
    assert kinds.count("ok") == 10 and kinds.count("rejected") == 10, kinds
    assert {why for k, why in answers if k == "rejected"} == {(2, 3, 2)}, answers
    assert stored == [[0, 0]] * 10, stored
    check_after(campaign, "20 associations")


def test_after_hostile_clients_valid_slides_are_published_and_nothing_else(campaign):
    check_published(campaign)
