"""The STOW-RS receiver under faults and hostile clients: malformed parts, full disks, limits, silent clients.

Real clients over 127.0.0.1 (curl, http.client, raw sockets) against the node in this process;
every wait has a timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from converter.testkit import SlideSpec, write_series
from tests.support.node import CONTENT_TYPE, RunningNode, multipart, tmpfs

REFERENCED, FAILED, REASON, SOP_UID = "00081199", "00081198", "00081197", "00081155"
MB = 1 << 20


def post(node: RunningNode, body: bytes, timeout: float = 60) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=timeout)
    try:
        conn.request("POST", "/dicom-web/studies", body=body, headers={"Content-Type": CONTENT_TYPE})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def curl_post(node: RunningNode, body: Path) -> tuple[int, str]:
    if not shutil.which("curl"):
        pytest.skip("curl not installed (apt-get install curl)")
    out = body.with_suffix(".response")
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "120", "-o", str(out), "-w", "%{http_code}",
                        "--data-binary", f"@{body}", "-H", f"Content-Type: {CONTENT_TYPE}", f"{node.http_url}/studies"],
                       capture_output=True, text=True, timeout=150)
    return int(r.stdout or 0), out.read_text() if out.exists() else r.stderr


def reasons(text: str) -> list[int]:
    return [item[REASON]["Value"][0] for item in json.loads(text).get(FAILED, {}).get("Value", [])]


def referenced(text: str) -> int:
    return len(json.loads(text).get(REFERENCED, {}).get("Value", []))


def leftovers(node: RunningNode, timeout: float = 5) -> list[str]:
    incoming = node.data / "inbox" / ".incoming"
    deadline = time.monotonic() + timeout
    while any(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(p.name for p in incoming.iterdir())


def stored(node: RunningNode) -> list[Path]:
    return [p for p in (node.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]


# --- malformed parts, built byte by byte from a valid instance ------------------------------------
def _split(raw: bytes) -> tuple[bytes, bytes]:
    """(preamble + DICM + file meta, data set) of a Part 10 file."""
    group_length = struct.unpack("<I", raw[140:144])[0]  # (0002,0000) UL, explicit VR LE
    end = 144 + group_length
    return raw[:end], raw[end:]


def _element(raw: bytes, tag: tuple[int, int]) -> int:
    at = raw.find(struct.pack("<HH", *tag), 132)
    assert at > 0, f"tag {tag} not in the test instance"
    return at


def _meta(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    """A file meta group from (element, VR, value) triples, with its group length."""
    body = b""
    for element, vr, value in elements:
        if vr in (b"OB",):
            body += struct.pack("<HH", 2, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            body += struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value
    return b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(body)) + body


def _uid(text: str) -> bytes:
    b = text.encode()
    return b + b"\0" if len(b) % 2 else b


def malformed(valid: Path) -> dict[str, bytes]:
    raw = valid.read_bytes()
    meta, data = _split(raw)
    ds = pydicom.dcmread(valid, stop_before_pixels=True)
    sop_class, sop = _uid(str(ds.SOPClassUID)), _uid(str(ds.SOPInstanceUID))
    cases: dict[str, bytes] = {}
    flipped = bytearray(raw)
    for i in range(len(meta), len(meta) + 64):  # the first elements of the data set, tags and lengths
        flipped[i] ^= 0xFF
    cases["byte flips in the header"] = bytes(flipped)
    cases["file meta without TransferSyntaxUID"] = _meta([(1, b"OB", b"\0\1"), (2, b"UI", sop_class), (3, b"UI", sop)]) + data
    cases["unknown transfer syntax"] = _meta([(1, b"OB", b"\0\1"), (2, b"UI", sop_class), (3, b"UI", sop),
                                              (0x10, b"UI", _uid("1.2.3.4.5.6.7"))]) + data
    at = _element(raw, (0x0028, 0x0008))  # NumberOfFrames, IS
    length = struct.unpack("<H", raw[at + 6:at + 8])[0]
    cases["NumberOfFrames abc"] = raw[:at + 8] + (b"abc" * length)[:length] + raw[at + 8 + length:]
    at = _element(raw, (0x0028, 0x0010))  # Rows, US
    cases["Rows with VR LO"] = raw[:at + 4] + b"LO" + raw[at + 6:]
    nest = b""
    for _ in range(3000):  # (0008,0006) SQ, undefined length, one item of undefined length, nested
        nest += struct.pack("<HH", 0x0008, 0x0006) + b"SQ\0\0" + b"\xff\xff\xff\xff"
        nest += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    for _ in range(3000):
        nest += struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    cases["3000 nested sequences"] = meta + nest + data
    return cases


def test_malformed_parts_get_failure_reasons_not_500_and_one_log_line_each(node, tmp_path, caplog):
    files = write_series(SlideSpec(width=1024, height=768, seed=2001, transfer_syntax="explicit", downsamples=(1, 4)), tmp_path / "src")
    valid = max(files, key=lambda f: f.stat().st_size)
    cases = malformed(valid)
    good = min(files, key=lambda f: f.stat().st_size)
    with caplog.at_level(logging.INFO):
        for name, part in cases.items():
            caplog.clear()
            status, text = post(node, multipart([part, good]))
            assert status == 202, f"{name}: HTTP {status}: {text}"
            got = reasons(text)
            assert len(got) == 1 and got[0] in (0xC000, 0xA900, 0xC122), f"{name}: {got}"
            if name == "unknown transfer syntax":
                assert got == [0xC122]
            if name == "file meta without TransferSyntaxUID":
                assert got == [0xC000]
            assert referenced(text) == 1
            lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(lines) <= 3, f"{name}: {len(lines)} warning lines: {[r.getMessage()[:120] for r in lines[:5]]}"
            assert len(caplog.records) < 20, f"{name}: {len(caplog.records)} log lines"
            refusals = [r for r in caplog.records if r.name == "wsi_node.stow" and "refused" in r.getMessage()]
            assert len(refusals) == 1, f"{name}: {[r.getMessage() for r in refusals]}"
            assert str(node.data) not in refusals[0].getMessage()
    assert leftovers(node) == []


def test_part_size_and_part_count_limits(tmp_path):
    files = write_series(SlideSpec(width=2048, height=1536, seed=2002, transfer_syntax="explicit", downsamples=(1, 8)), tmp_path / "src")
    small, big = min(files, key=lambda f: f.stat().st_size), max(files, key=lambda f: f.stat().st_size)
    assert big.stat().st_size > 4 * MB > small.stat().st_size
    n = RunningNode(tmp_path, http={"max_part_bytes": 4 * MB, "max_parts": 3})
    try:
        status, text = post(n, multipart([big, small]))
        assert status == 202 and reasons(text) == [0xA700] and referenced(text) == 1, text
        status, text = post(n, multipart([small] * 5))
        assert status == 413 and "more than 3 parts (--http-max-parts)" in text, text
        assert leftovers(n) == []
    finally:
        n.stop()


def test_a_series_into_a_60_mb_inbox_partly_stored_then_507(tmp_path):
    files = write_series(SlideSpec(width=6144, height=5632, seed=2003, transfer_syntax="explicit",
                                   downsamples=(1, 8, 32), concatenation_parts=8), tmp_path / "src")
    with tmpfs(tmp_path / "data" / "inbox", 60):
        n = RunningNode(tmp_path, disk_reserve_mb=20)
        try:
            body = tmp_path / "series.multipart"
            body.write_bytes(multipart(sorted(files, key=lambda f: f.stat().st_size)))
            status, text = curl_post(n, body)
            assert status == 202, text
            assert 1 <= referenced(text) < len(files)
            assert set(reasons(text)) == {0xA700} and referenced(text) + len(reasons(text)) == len(files)
            assert leftovers(n) == []
            for p in stored(n):
                pydicom.dcmread(p).PixelData  # complete
            # Nothing fits any more: every part fails for space, and the request is 507 (PS3.18 10.5.3).
            biggest = max(files, key=lambda f: f.stat().st_size)
            free = shutil.disk_usage(n.data / "inbox").free
            if free >= 20 * MB:
                status, text = post(n, multipart([biggest] * 4))
                assert status == 507 and set(reasons(text)) == {0xA700}, text
            else:
                status, text = post(n, multipart([biggest]))
                assert status == 507, text
            assert leftovers(n) == []
        finally:
            n.stop()


def test_a_large_upload_to_a_full_node_reads_its_503_not_a_reset(tmp_path):
    """Over the connection limit, the node answers 503 and reads the rest of the body before closing
    (lingering close, scp/http.py): a client that sends its whole upload before reading the answer,
    as http.client and requests do, gets the 503 instead of a broken pipe or a reset."""
    files = write_series(SlideSpec(width=2048, height=1536, seed=2006, transfer_syntax="explicit"), tmp_path / "src")
    body = multipart(files)
    assert len(body) > 8 << 20  # far more than the socket buffers hold
    n = RunningNode(tmp_path, http={"max_concurrent": 2, "idle_timeout": 20.0})
    silent = [socket.create_connection(("127.0.0.1", n.http_port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.5)
        for _ in range(3):
            status, text = post(n, body)
            assert status == 503, (status, text[:200])
        for _ in range(10):  # a body that ends before the answer is sent: answered, then closed at once
            status, text = post(n, multipart([]))
            assert status == 503, (status, text[:200])
        assert not list((n.data / "inbox").rglob("*.dcm"))  # nothing of the refused uploads was stored
    finally:
        for s in silent:
            s.close()
        n.stop()


def test_silent_and_slow_clients_are_closed_and_excess_gets_503(tmp_path):
    IDLE = 3.0
    files = write_series(SlideSpec(width=800, height=600, seed=2004, transfer_syntax="explicit"), tmp_path / "src")
    n = RunningNode(tmp_path, http={"max_concurrent": 2, "idle_timeout": IDLE})
    silent = [socket.create_connection(("127.0.0.1", n.http_port), timeout=10) for _ in range(2)]
    # The smallest instance: uvicorn answers 503 and closes at once, and a body larger than the
    # socket buffers would then meet a broken pipe before the answer could be read (a flake in CI).
    small = [min(files, key=lambda f: Path(f).stat().st_size)]
    try:
        time.sleep(0.5)  # both accepted by the server (well within the idle timeout)
        status, text = post(n, multipart(small))
        assert status == 503, (status, text)
        for s in silent:  # closed by the node after the idle timeout
            s.settimeout(IDLE + 3)
            assert s.recv(1) == b""
        status, text = post(n, multipart(files[:1]))
        assert status == 200, text
        # Headers that trickle in (one byte every 0.3 s) are cut off after the timeout too.
        slow = socket.create_connection(("127.0.0.1", n.http_port), timeout=10)
        t0 = time.monotonic()
        closed = False
        try:
            for byte in b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                slow.send(bytes([byte]))
                time.sleep(0.3)
                if time.monotonic() - t0 > IDLE + 3:
                    break
        except OSError:
            closed = True
        if not closed:
            slow.settimeout(2)
            try:
                closed = slow.recv(1) == b""
            except OSError:
                closed = True
        slow.close()
        assert closed and time.monotonic() - t0 < IDLE + 4, "a slow-headers client was not closed"
    finally:
        for s in silent:
            s.close()
        n.stop()


def test_a_stalled_body_is_abandoned_with_408_and_nothing_left(tmp_path):
    files = write_series(SlideSpec(width=2048, height=1536, seed=2005, transfer_syntax="explicit", downsamples=(1, 8)), tmp_path / "src")
    body = multipart([max(files, key=lambda f: f.stat().st_size)])
    n = RunningNode(tmp_path, http={"idle_timeout": 1.5})
    try:
        s = socket.create_connection(("127.0.0.1", n.http_port), timeout=10)
        head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        s.sendall(head + body[: 2 * MB])  # then nothing
        s.settimeout(1.5 + 5)
        answer = b""
        while b"--http-idle-timeout" not in answer:
            more = s.recv(4096)
            if not more:
                break
            answer += more
        answer = answer.decode("latin-1")
        s.close()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "--http-idle-timeout" in answer
        assert leftovers(n) == [] and stored(n) == []
    finally:
        n.stop()


def test_a_body_malformed_at_its_start_is_400_while_more_of_it_is_still_read(node):
    """The feed that finds the error runs while the next 4 MiB are read (scp/stow.py _receive): still a 400, nothing left."""
    from tests.support.node import BOUNDARY

    body = f"--{BOUNDARY}\r\nContent Type application/dicom\r\n\r\n".encode() + bytes(12 * MB)  # no colon: not a header
    status, text = post(node, body)
    assert status == 400 and "malformed multipart body" in text
    assert leftovers(node) == [] and stored(node) == []
