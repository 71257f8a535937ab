"""The receiving node with real senders over loopback: DCMTK storescu and pynetdicom."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from config.settings import BatchSettings
from converter.testkit import SlideSpec, series_uids, write_non_wsi, write_series
from scp.dimse import WSI_STORAGE, DimseSettings
from scp.node import Node, NodeSettings
from scp.stow import HttpSettings
from tests.readers import open_openslide

STORESCU = "/usr/bin/storescu"  # DCMTK's; pynetdicom installs an app of the same name on PATH
ECHOSCU = "/usr/bin/echoscu"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningNode:
    """The node in this process: DIMSE on a free port, and the DICOMweb receiver on 127.0.0.1 at an
    OS-chosen port (`http_port`, `http_url`); `http` holds extra HttpSettings fields (auth, limits, TLS)."""

    def __init__(self, tmp: Path, http: dict | None = None, **dimse) -> None:
        self.data = tmp / "data"
        p = BatchSettings(inbox=self.data / "inbox", serving=self.data / "serving", archive=self.data / "archive",
                          quarantine=self.data / "quarantine", state_dir=self.data / "state", watch_interval=1.0, max_concurrent=1)
        for d in (p.inbox, p.serving, p.archive, p.quarantine, p.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.settings = NodeSettings(p, DimseSettings(bind="127.0.0.1", port=self.port, **dimse), disk_reserve_mb=1,
                                     settle=0.5, quiet=30, http=HttpSettings(bind="127.0.0.1", port=0, **(http or {})))
        self.node = Node(self.settings)
        self.node.start()
        self.http_port = self.node.http.port
        self.http_url = f"{self.node.http.url}/dicom-web"
        self.thread = threading.Thread(target=self.node.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.node.request_stop()
        self.thread.join(60)

    def output(self, uid: str, timeout: float = 30) -> Path:
        target = self.data / "serving" / f"{uid}.tiff"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if target.exists() and (self.data / "serving" / f"{uid}.json").exists():
                return target
            time.sleep(0.1)
        raise AssertionError(f"{target} did not appear; serving has {sorted(p.name for p in (self.data / 'serving').iterdir())}")


@pytest.fixture
def node(tmp_path):
    n = RunningNode(tmp_path)
    yield n
    n.stop()


def storescu(port: int, *paths: Path, aet: str = "STORESCU", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    if not Path(STORESCU).exists():
        pytest.skip("DCMTK storescu not installed (apt-get install dcmtk)")
    cmd = [STORESCU, "-aet", aet, "-aec", "WSINODE", "-R", "-xy", "+sd", *extra, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def pynetdicom_send(port: int, files: list[Path], aet: str = "PYSENDER", release: bool = True) -> list[int]:
    ae = AE(ae_title=aet)
    ae.dimse_timeout = ae.network_timeout = 30
    syntaxes = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files})
    for ts in syntaxes:
        ae.add_requested_context(WSI_STORAGE, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
    assert assoc.is_established
    statuses = []
    for f in files:
        status = assoc.send_c_store(f)
        statuses.append(int(status.Status))
    if release:
        assoc.release()
    return statuses


def assert_published(node: RunningNode, spec: SlideSpec, files: list[Path], timeout: float = 30) -> Path:
    """The output covers every sent instance (a slide that looked complete early is re-converted) and the originals are archived."""
    import json

    study, uid = series_uids(spec)
    out = node.output(uid)
    sops = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
    folder = node.data / "archive" / study / uid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sidecar = json.loads(out.with_suffix(".json").read_text())
        archived = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        if sidecar["source"]["input_sop_instance_uids"] == sops and archived == [f"{s}.dcm" for s in sops]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"output covers {sidecar['source']['input_sop_instance_uids']}, archive has {archived}; expected {sops}")
    with open_openslide(out) as slide:
        assert slide.dimensions == (spec.width, spec.height)
    return out


def test_storescu_whole_series_in_one_association(node, tmp_path):
    spec = SlideSpec(width=1500, height=1100, seed=101, label=True)
    files = write_series(spec, tmp_path / "src")
    result = storescu(node.port, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    assert_published(node, spec, files)


def test_series_over_several_associations_and_interleaved_senders(node, tmp_path):
    a, b = SlideSpec(width=1200, height=900, seed=111), SlideSpec(width=1000, height=800, seed=112, transfer_syntax="jpeg2000")
    files_a, files_b = write_series(a, tmp_path / "a"), write_series(b, tmp_path / "b")
    # Series a: one association per instance. Series b, from another sender, at the same time.
    errors = []

    def send_b():
        try:
            assert all(s == 0 for s in pynetdicom_send(node.port, files_b, aet="SENDERB"))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=send_b)
    t.start()
    for f in files_a:
        assert pynetdicom_send(node.port, [f], aet="SENDERA") == [0]
    t.join(60)
    assert not errors
    assert_published(node, a, files_a)
    assert_published(node, b, files_b)


def test_c_echo_with_dcmtk_and_pynetdicom(node):
    if Path(ECHOSCU).exists():
        r = subprocess.run([ECHOSCU, "-aec", "WSINODE", "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="WSINODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_ct_instance_is_rejected_at_negotiation(node, tmp_path):
    spec = SlideSpec(width=800, height=600, seed=121)
    ct = write_non_wsi("ct", tmp_path / "ct", *series_uids(spec))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="WSINODE")
    if assoc.is_established:
        assert not assoc.accepted_contexts
        with pytest.raises(ValueError):
            assoc.send_c_store(ct)
        assoc.release()
    assert not any(p.is_file() for p in (node.data / "inbox").rglob("*.dcm"))


def test_identical_resend_is_stored_once(node, tmp_path):
    spec = SlideSpec(width=800, height=600, seed=131)
    files = write_series(spec, tmp_path / "src")
    assert all(s == 0 for s in pynetdicom_send(node.port, files))
    out = assert_published(node, spec, files)
    first = out.stat().st_mtime_ns
    assert all(s == 0 for s in pynetdicom_send(node.port, files[:1]))
    time.sleep(2)
    study, uid = series_uids(spec)
    # The resent instance is already in the published output: archived (as a -2 copy), no re-conversion.
    assert out.stat().st_mtime_ns == first


def test_sender_abort_mid_instance_leaves_nothing_partial(node, tmp_path):
    spec = SlideSpec(width=4000, height=3000, seed=141, transfer_syntax="explicit", downsamples=(1, 4, 16))
    files = write_series(spec, tmp_path / "src")
    big = max(files, key=lambda f: f.stat().st_size)
    # A sender process that dies in the middle of a large instance (kill -9: no release, no abort PDU).
    script = (
        "import sys; from pynetdicom import AE; ae = AE(ae_title='DYING'); ae.maximum_pdu_size = 4096; "
        f"ae.add_requested_context('{WSI_STORAGE}', '1.2.840.10008.1.2.1'); "
        f"a = ae.associate('127.0.0.1', {node.port}, ae_title='WSINODE'); a.send_c_store(sys.argv[1])"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(big)])
    incoming = node.data / "inbox" / ".incoming"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(p.stat().st_size > 1 << 20 for p in incoming.iterdir()):
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    time.sleep(1)
    inbox = node.data / "inbox"
    visible = [p for p in inbox.rglob("*.dcm") if ".incoming" not in p.parts]
    for p in visible:  # anything visible must be a complete instance
        pydicom.dcmread(p)
    # The sender retries the whole series: it completes.
    assert all(s == 0 for s in pynetdicom_send(node.port, files))
    assert_published(node, spec, files)


def test_unknown_calling_ae_is_rejected_when_whitelisted(tmp_path):
    n = RunningNode(tmp_path, allowed_calling_aets=("SCANNER1",))
    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE")
        assert assoc.is_rejected
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE")
        assert assoc.is_established
        assoc.release()
    finally:
        n.stop()


def test_wrong_called_ae_title_is_rejected(node):
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NOTTHENODE")
    assert assoc.is_rejected


def test_no_space_returns_out_of_resources(tmp_path):
    n = RunningNode(tmp_path)
    try:
        n.node.store.reserve_bytes = shutil.disk_usage(tmp_path).free * 10  # never enough
        files = write_series(SlideSpec(width=800, height=600, seed=151), tmp_path / "src")
        assert pynetdicom_send(n.port, files[:1]) == [0xA700]
        assert not [p for p in (n.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]
    finally:
        n.stop()


def test_restart_resumes_series_in_flight(tmp_path):
    spec = SlideSpec(width=1200, height=900, seed=161, concatenation_parts=2)
    files = write_series(spec, tmp_path / "src")
    held_back = next(f for f in files if "part" in f.name)
    n = RunningNode(tmp_path)
    try:
        assert all(s == 0 for s in pynetdicom_send(n.port, [f for f in files if f != held_back]))
        time.sleep(1.5)  # past the settle time: an incomplete slide must keep waiting
    finally:
        n.stop()
    assert not (n.data / "serving" / f"{series_uids(spec)[1]}.tiff").exists()
    n2 = RunningNode(tmp_path)
    try:
        assert all(s == 0 for s in pynetdicom_send(n2.port, [held_back]))
        assert_published(n2, spec, files)
    finally:
        n2.stop()


def _make_pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed (apt-get install openssl)")
    folder.mkdir()
    p = {k: folder / f"{k}" for k in ("ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt")}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=wsi-node test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    for name, cn in (("server", "127.0.0.1"), ("client", "SCANNER1")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        ext = folder / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-out", f"{name}.crt", "-extfile", ext.name)
    return p


def test_dicom_tls_with_dcmtk_and_pynetdicom(tmp_path):
    import ssl

    pki = _make_pki(tmp_path / "pki")
    n = RunningNode(tmp_path, tls_cert=pki["server.crt"], tls_key=pki["server.key"], tls_ca=pki["ca.crt"], tls_require_client_cert=True)
    try:
        spec = SlideSpec(width=1000, height=800, seed=171)
        files = write_series(spec, tmp_path / "src")
        # DCMTK storescu with a client certificate, verifying the node's certificate.
        r = storescu(n.port, files[0], extra=("+tls", str(pki["client.key"]), str(pki["client.crt"]), "+cf", str(pki["ca.crt"])))
        assert r.returncode == 0, r.stderr
        # pynetdicom with TLS for the rest.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.crt"]))
        ctx.load_cert_chain(str(pki["client.crt"]), str(pki["client.key"]))
        ae = AE(ae_title="SCANNER1")
        ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(WSI_STORAGE, JPEG_BASELINE)
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE", tls_args=(ctx, "127.0.0.1"))
        assert assoc.is_established
        assert [int(assoc.send_c_store(f).Status) for f in files[1:]] == [0] * (len(files) - 1)
        assoc.release()
        assert_published(n, spec, files)
        # Without a client certificate the TLS handshake is refused: nothing is stored.
        bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca.crt"]))
        ae2 = AE(ae_title="NOCERT")
        ae2.network_timeout = ae2.acse_timeout = 10
        ae2.add_requested_context(Verification)
        assoc = ae2.associate("127.0.0.1", n.port, ae_title="WSINODE", tls_args=(bare, "127.0.0.1"))
        assert not assoc.is_established
        # Plain TCP to the TLS port fails too.
        plain = AE()
        plain.network_timeout = plain.acse_timeout = 10
        plain.add_requested_context(Verification)
        assert not plain.associate("127.0.0.1", n.port, ae_title="WSINODE").is_established
    finally:
        n.stop()


def test_invalid_uids_get_a_failure_status_with_comment(node, tmp_path):
    files = write_series(SlideSpec(width=800, height=600, seed=181), tmp_path / "src")
    ds = pydicom.dcmread(files[0])
    ds.StudyInstanceUID = "1.2.03.x"  # not a UID: must never become a folder name
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    ae = AE(ae_title="BADUIDS")
    ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(WSI_STORAGE, JPEG_BASELINE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="WSINODE")
    status = assoc.send_c_store(bad)
    assoc.release()
    assert status.Status == 0xC000
    assert "StudyInstanceUID" in status.ErrorComment
    assert not [p for p in (node.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]


def test_resend_with_different_content_replaces_and_keeps_the_old_copy(tmp_path):
    n = RunningNode(tmp_path)
    n.node.tracker.quiet = 300  # keep the series waiting: only the storage rule is under test
    try:
        spec = SlideSpec(width=1500, height=1100, seed=191)
        files = write_series(spec, tmp_path / "src")
        level0 = files[0]
        assert pynetdicom_send(n.port, [level0]) == [0]
        ds = pydicom.dcmread(level0)
        ds.SeriesDescription = "re-sent with a correction"
        changed = tmp_path / "changed.dcm"
        ds.save_as(changed)
        assert pynetdicom_send(n.port, [changed]) == [0]
        study, uid = series_uids(spec)
        stored = n.data / "inbox" / study / uid / f"{ds.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(stored, stop_before_pixels=True).SeriesDescription == "re-sent with a correction"
        kept = list((n.data / "archive" / "replaced" / study / uid).glob(f"{ds.SOPInstanceUID}.*.dcm"))
        assert len(kept) == 1
        old = pydicom.dcmread(kept[0])
        assert old.get("SeriesDescription") != "re-sent with a correction"
        assert old.PixelData == pydicom.dcmread(level0).PixelData
    finally:
        n.stop()


def test_incomplete_slide_converts_after_the_quiet_period_and_says_why(tmp_path):
    import json

    n = RunningNode(tmp_path)
    n.node.tracker.quiet = 2.0
    try:
        spec = SlideSpec(width=1200, height=900, seed=201, concatenation_parts=3)
        files = write_series(spec, tmp_path / "src")
        part2 = next(f for f in files if "part-2" in f.name)
        sent = [f for f in files if f != part2]
        assert all(s == 0 for s in pynetdicom_send(n.port, sent))
        out = n.output(series_uids(spec)[1], timeout=30)
        notes = " ".join(json.loads(out.with_suffix(".json").read_text())["notes"])
        assert "incomplete" in notes and "part 2 of 3 missing" in notes
    finally:
        n.stop()


def test_wsi_node_serve_command_ready_line_and_sigterm(tmp_path):
    import signal as sig

    port, http_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scp.cli", "serve", "--bind", "127.0.0.1", "--port", str(port),
                             "--http-bind", "127.0.0.1", "--http-port", str(http_port),
                             "--data", str(tmp_path / "data")], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "wsi-node ready" in line:
                break
            assert line or proc.poll() is None, "".join(lines)
        assert f"listening on 127.0.0.1:{port}" in lines[-1]
        assert f"DICOMweb STOW-RS on http://127.0.0.1:{http_port}/dicom-web/studies" in lines[-1]
        assert sum("wsi-node ready" in ln for ln in lines) == 1
        for sub in ("inbox", "serving", "archive", "quarantine", "state"):
            assert (tmp_path / "data" / sub).is_dir()
        ae = AE()
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        proc.send_signal(sig.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out
