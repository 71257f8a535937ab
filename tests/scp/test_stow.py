"""The DICOMweb STOW-RS receiver with real clients over 127.0.0.1: dicomweb-client, curl, raw sockets, Orthanc."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from converter.testkit import SlideSpec, series_uids, write_non_wsi, write_series
from tests.support.orthanc import DICOMWEB_PLUGIN, running_orthanc
from tests.support.node import BOUNDARY, CONTENT_TYPE, RunningNode, assert_published, free_port, make_pki, multipart

REFERENCED, FAILED, REASON, SOP_UID = "00081199", "00081198", "00081197", "00081155"


def curl(url: str, body: Path, content_type: str = CONTENT_TYPE, chunked: bool = False, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    if not shutil.which("curl"):
        pytest.skip("curl not installed (apt-get install curl)")
    out = body.with_suffix(".response")
    cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", "60", "-o", str(out), "-w", "%{http_code}",
           "--data-binary", f"@{body}", "-H", f"Content-Type: {content_type}", *extra]
    if chunked:
        cmd += ["-H", "Transfer-Encoding: chunked"]
    r = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    return int(r.stdout or 0), out.read_text() if out.exists() else r.stderr


def post(node: RunningNode, body: bytes, content_type: str = CONTENT_TYPE, path: str = "/studies",
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPResponse, str]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("POST", f"/dicom-web{path}", body=body, headers={"Content-Type": content_type, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp, resp.read().decode()
    finally:
        conn.close()


def sops(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def inbox_dcm(node: RunningNode) -> list[Path]:
    return [p for p in (node.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]


def assert_nothing_partial(node: RunningNode, timeout: float = 10) -> None:
    """No temporary part is left in inbox/.incoming, and every instance visible in the inbox is complete."""
    incoming = node.data / "inbox" / ".incoming"
    deadline = time.monotonic() + timeout
    while any(incoming.iterdir()):
        assert time.monotonic() < deadline, f"left in .incoming: {sorted(p.name for p in incoming.iterdir())}"
        time.sleep(0.05)
    for p in inbox_dcm(node):
        pydicom.dcmread(p).PixelData  # a truncated file fails here


def client(node: RunningNode, **kw) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    return DICOMwebClient(node.http_url, session=session, **kw)


# --- pushes that succeed ------------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_dicomweb_client_pushes_a_whole_series(node, tmp_path, framing):
    spec = SlideSpec(width=1500, height=1100, seed=301 if framing == "chunked" else 302, label=True)
    files = write_series(spec, tmp_path / "src")
    # dicomweb-client switches to chunked transfer encoding above chunk_size bytes.
    c = client(node, chunk_size=64 << 10 if framing == "chunked" else 1 << 30)
    result = c.store_instances([pydicom.dcmread(f) for f in files])
    assert sorted(item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence) == sorted(sops(files))
    assert "FailedSOPSequence" not in result
    assert_published(node, spec, files)


@pytest.mark.parametrize("chunked", [False, True])
def test_curl_pushes_a_hand_built_body(node, tmp_path, chunked):
    spec = SlideSpec(width=1200, height=900, seed=311 + chunked, transfer_syntax="jpeg2000")
    files = write_series(spec, tmp_path / "src")
    body = tmp_path / "body"
    boundary = "XbOuNdArY" + "7" * 60  # unquoted in the header this time
    body.write_bytes(b"preamble text, ignored\r\n" + multipart(files, boundary))
    code, text = curl(f"{node.http_url}/studies/{series_uids(spec)[0]}", body,
                      f"multipart/related; type=application/dicom; boundary={boundary}", chunked=chunked)
    assert code == 200, text
    answer = json.loads(text)
    assert sorted(item[SOP_UID]["Value"][0] for item in answer[REFERENCED]["Value"]) == sorted(sops(files))
    assert_published(node, spec, files)


def test_non_wsi_and_non_dicom_parts_fail_with_reasons_the_rest_is_stored(node, tmp_path):
    spec = SlideSpec(width=1000, height=800, seed=321)
    files = write_series(spec, tmp_path / "src")
    ct = write_non_wsi("ct", tmp_path / "ct", *series_uids(spec))
    body = tmp_path / "body"
    body.write_bytes(multipart([*files, ct, b"this is not DICOM at all" * 20]))
    code, text = curl(f"{node.http_url}/studies", body)
    assert code == 202, text
    answer = json.loads(text)
    assert len(answer[REFERENCED]["Value"]) == len(files)
    failed = answer[FAILED]["Value"]
    assert [f[REASON]["Value"][0] for f in failed] == [0x0122, 0xC000]
    assert failed[0][SOP_UID]["Value"][0] == sops([ct])[0]
    assert failed[0]["00081150"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert_published(node, spec, files)
    assert not list((node.data / "quarantine").rglob("*.dcm"))


def test_study_uid_in_the_url_must_match(node, tmp_path):
    spec = SlideSpec(width=800, height=600, seed=331)
    files = write_series(spec, tmp_path / "src")
    other_study = series_uids(SlideSpec(width=800, height=600, seed=332))[0]
    status, _, text = post(node, multipart(files), path=f"/studies/{other_study}")
    assert status == 409, text
    failed = json.loads(text)[FAILED]["Value"]
    assert sorted(f[SOP_UID]["Value"][0] for f in failed) == sorted(sops(files))
    assert {f[REASON]["Value"][0] for f in failed} == {0xA900}
    assert not inbox_dcm(node)
    # Mixed: the matching part is stored, the other one fails.
    ct_other = write_non_wsi("ct", tmp_path / "ct", other_study, series_uids(spec)[1])
    status, _, text = post(node, multipart([files[0], ct_other]), path=f"/studies/{series_uids(spec)[0]}")
    assert status == 202, text
    assert [f[REASON]["Value"][0] for f in json.loads(text)[FAILED]["Value"]] == [0xA900]
    assert len(inbox_dcm(node)) == 1
    status, _, text = post(node, b"", path="/studies/1.2.3.x")
    assert status == 400 and "not a valid Study Instance UID" in text


# --- refused requests ---------------------------------------------------------------------------

def test_wrong_media_types_and_malformed_bodies(node, tmp_path):
    files = write_series(SlideSpec(width=800, height=600, seed=341), tmp_path / "src")
    good = multipart(files)
    for content_type in ("application/dicom", "multipart/form-data; boundary=" + BOUNDARY,
                         f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', ""):
        status, _, text = post(node, good, content_type)
        assert status == 415, (content_type, text)
        assert "multipart/related" in text or "application/dicom" in text
    for content_type, body, why in (
        ('multipart/related; type="application/dicom"', good, "boundary"),  # no boundary parameter
        (CONTENT_TYPE.replace(BOUNDARY, "another-boundary"), good, "boundary"),  # not the body's boundary
        (CONTENT_TYPE, os.urandom(200_000), "boundary"),  # garbage
        (CONTENT_TYPE, good[: len(good) // 2], "truncated"),  # ends before the closing boundary
        (CONTENT_TYPE, f"--{BOUNDARY}\r\nContent-Type application/dicom\r\n\r\n".encode() + good, "malformed"),
    ):
        status, _, text = post(node, body, content_type)
        assert status == 400, (content_type, text)
        assert why in text, text
    assert_nothing_partial(node)
    # The truncated body's first complete part was stored; the cut part was not.
    assert {p.stem for p in inbox_dcm(node)} <= set(sops(files)[:-1])


def test_authentication_tokens_and_basic_users(tmp_path):
    n = RunningNode(tmp_path, http={"tokens": ("tok-one", "tok-two"), "users": {"orthanc": "pa:ss"}})
    try:
        spec = SlideSpec(width=800, height=600, seed=351)
        files = write_series(spec, tmp_path / "src")
        body = multipart(files)
        status, resp, text = post(n, body)
        assert status == 401 and "authentication required" in text
        challenges = resp.headers.get_all("WWW-Authenticate")
        assert any(c.startswith("Bearer") for c in challenges) and any(c.startswith("Basic") for c in challenges)
        assert post(n, body, headers={"Authorization": "Bearer wrong"})[0] == 403
        for wrong in ("orthanc:nope", "nobody:pa:ss"):
            assert post(n, body, headers={"Authorization": "Basic " + base64.b64encode(wrong.encode()).decode()})[0] == 403
        assert not inbox_dcm(n)
        # The right token (dicomweb-client) and the right user (curl -u) are accepted.
        result = client(n, headers={"Authorization": "Bearer tok-two"}).store_instances([pydicom.dcmread(files[0])])
        assert len(result.ReferencedSOPSequence) == 1
        path = tmp_path / "body"
        path.write_bytes(multipart(files[1:]))
        code, text = curl(f"{n.http_url}/studies", path, extra=("-u", "orthanc:pa:ss"))
        assert code == 200, text
        assert_published(n, spec, files)
    finally:
        n.stop()


def test_request_size_limit(tmp_path):
    n = RunningNode(tmp_path, http={"max_request_bytes": 1 << 20})
    try:
        spec = SlideSpec(width=2000, height=1500, seed=361, transfer_syntax="explicit", downsamples=(1, 4))
        files = write_series(spec, tmp_path / "src")
        body = tmp_path / "body"
        body.write_bytes(multipart(files))
        assert body.stat().st_size > 4 << 20
        code, text = curl(f"{n.http_url}/studies", body)  # refused from Content-Length, before the body is sent
        assert code == 413 and "over the limit" in text, text
        # Chunked: refused once the limit is crossed while streaming. The sender stops just past the
        # limit and waits for the answer (a sender that keeps sending gets a reset instead).
        sock = socket.create_connection(("127.0.0.1", n.http_port), timeout=30)
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        data = body.read_bytes()[: (1 << 20) + (64 << 10)]
        for i in range(0, len(data), 16 << 10):
            chunk = data[i:i + (16 << 10)]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = sock.recv(65536).decode("latin-1")
        sock.close()
        assert answer.startswith("HTTP/1.1 413"), answer
        assert_nothing_partial(n)
        assert not inbox_dcm(n)
    finally:
        n.stop()


def test_not_enough_disk_is_507(node, tmp_path):
    node.node.store.reserve_bytes = shutil.disk_usage(tmp_path).free * 10  # never enough
    files = write_series(SlideSpec(width=800, height=600, seed=371), tmp_path / "src")
    status, _, text = post(node, multipart(files))
    assert status == 507 and "free disk space" in text
    assert not inbox_dcm(node)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_cut_off_mid_part_leaves_nothing_partial(node, tmp_path, framing):
    spec = SlideSpec(width=4000, height=3000, seed=381, transfer_syntax="explicit", downsamples=(1, 4, 16))
    files = write_series(spec, tmp_path / "src")
    small, big = files[-1], files[0]  # level 2 (complete), then level 0 cut at 60 %
    body = multipart([small, big])
    cut = len(multipart([small], closing=False)) + int(big.stat().st_size * 0.6)
    sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=30)
    head = f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
    if framing == "chunked":
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        for i in range(0, cut, 1 << 20):
            chunk = body[i:min(i + (1 << 20), cut)]
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # and never the final 0-length chunk
    else:
        sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:cut])
    # The cut part is being streamed to a temporary file (not held in memory) ...
    incoming = node.data / "inbox" / ".incoming"
    deadline = time.monotonic() + 20
    while not any(p.stat().st_size > 4 << 20 for p in incoming.iterdir()):
        assert time.monotonic() < deadline, "the part never reached inbox/.incoming"
        time.sleep(0.02)
    sock.close()  # ... when the sender goes away.
    assert_nothing_partial(node)
    assert sorted(p.stem for p in inbox_dcm(node)) == sops([small])  # the complete first part stays


def test_https_with_a_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    n = RunningNode(tmp_path, http={"tls_cert": pki["server.crt"], "tls_key": pki["server.key"]})
    try:
        assert n.http_url.startswith("https://127.0.0.1:")
        spec = SlideSpec(width=800, height=600, seed=391)
        files = write_series(spec, tmp_path / "src")
        body = tmp_path / "body"
        body.write_bytes(multipart(files))
        code, text = curl(f"{n.http_url}/studies", body, extra=("--cacert", str(pki["ca.crt"])))
        assert code == 200, text
        assert_published(n, spec, files)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            conn = http.client.HTTPConnection("127.0.0.1", n.http_port, timeout=10)
            conn.request("POST", "/dicom-web/studies", body=b"x", headers={"Content-Type": CONTENT_TYPE})
            conn.getresponse()
    finally:
        n.stop()


# --- Orthanc's DICOMweb plugin as the sender ----------------------------------------------------

def test_orthanc_pushes_a_stored_series_with_stow(tmp_path, caplog):
    if DICOMWEB_PLUGIN is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    caplog.set_level("INFO", logger="wsi_node.stow")
    n = RunningNode(tmp_path, http={"tokens": ("orthanc-token",)})
    try:
        with running_orthanc(tmp_path, free_port(), DicomPort=free_port(), DicomServerEnabled=False, Plugins=[DICOMWEB_PLUGIN],
                             DicomWeb={"Enable": True, "Servers": {"wsinode": {
                                 "Url": f"{n.http_url}/", "HttpHeaders": {"Authorization": "Bearer orthanc-token"}}}}) as (session, base):
            spec = SlideSpec(width=1500, height=1100, seed=401, label=True)
            files = write_series(spec, tmp_path / "src")
            series = {session.post(f"{base}/instances", data=f.read_bytes(), timeout=30).json()["ParentSeries"] for f in files}
            assert len(series) == 1
            r = session.post(f"{base}/dicom-web/servers/wsinode/stow", json={"Resources": list(series), "Synchronous": True}, timeout=60)
            assert r.status_code == 200, r.text + (tmp_path / "orthanc.log").read_text()
            assert_published(n, spec, files)
            summaries = [rec.getMessage() for rec in caplog.records if "instance(s) stored" in rec.getMessage()]
            assert summaries and f"{len(files)} instance(s) stored, 0 failed (HTTP 200" in summaries[-1], summaries
    finally:
        n.stop()


# --- configuration ------------------------------------------------------------------------------

def test_http_options_secrets_from_files_and_environment(tmp_path, monkeypatch):
    from config.errors import ConfigError
    from scp.cli import _http_settings, _node_parser

    (tmp_path / "tokens").write_text("# one per line\ntok-file\n\n")
    (tmp_path / "users").write_text("scanner:pw:with:colons\n")
    monkeypatch.setenv("WSI_NODE_HTTP_TOKENS", "tok-env1, tok-env2")
    monkeypatch.setenv("WSI_NODE_HTTP_PORT", "8443")
    monkeypatch.setenv("WSI_NODE_HTTP_BIND", "127.0.0.1")

    def parse(*argv: str):
        return _http_settings(_node_parser().parse_known_args(list(argv))[0])

    s = parse("--http-token", "tok-arg", "--http-token-file", str(tmp_path / "tokens"), "--http-users-file", str(tmp_path / "users"),
              "--http-user", "pacs:secret", "--http-max-request-mb", "10")
    assert (s.bind, s.port, s.max_request_bytes) == ("127.0.0.1", 8443, 10 << 20)
    assert s.tokens == ("tok-arg", "tok-env1", "tok-env2", "tok-file")
    assert s.users == {"pacs": "secret", "scanner": "pw:with:colons"}
    assert parse("--http-port", "0") is None  # 0 disables the HTTP receiver
    for bad in (("--http-user", "nopassword"), ("--http-token-file", str(tmp_path / "missing")),
                ("--http-tls-cert", str(tmp_path / "missing.pem")), ("--http-port", "70000")):
        with pytest.raises(ConfigError):
            parse(*bad)
