"""The receiving node with real senders over loopback: DCMTK storescu and pynetdicom."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from converter.testkit import SlideSpec, series_uids, write_non_wsi, write_series
from scp.dimse import WSI_STORAGE
from tests.support.node import RunningNode, assert_published, free_port, make_pki, pynetdicom_send, storescu

ECHOSCU = "/usr/bin/echoscu"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


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


def test_dicom_tls_with_dcmtk_and_pynetdicom(tmp_path):
    import ssl

    pki = make_pki(tmp_path / "pki")
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
        assert "completion: quiet-period" in notes  # the report names the signal that decided
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


def test_receiving_touches_the_mark_conversions_yield_to(node, tmp_path):
    """converter.inbox.receiving: while a receiver writes an instance, state/receiving.mark is fresh."""
    from converter.inbox.receiving import mark_path, receiving

    spec = SlideSpec(width=1500, height=1100, seed=103)
    files = write_series(spec, tmp_path / "src")
    mark = mark_path(node.data / "state")
    result = storescu(node.port, tmp_path / "src")
    assert result.returncode == 0, result.stderr
    assert mark.exists() and receiving(mark, now=time.time() - 0.5)
    assert_published(node, spec, files)
