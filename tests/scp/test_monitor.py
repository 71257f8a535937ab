"""Operations endpoints: /healthz, /readyz, /metrics, JSON logs, and the status page in a real headless browser."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE

from converter.testkit import SlideSpec, series_uids, write_series
from scp.dimse import WSI_STORAGE
from tests.faults.harness import wait_for
from tests.support.node import CONTENT_TYPE, RunningNode, free_port, multipart, pynetdicom_send

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


def samples(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, ctype, body = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_healthz_and_readyz_need_no_auth_and_readyz_reports_low_disk(tmp_path):
    n = RunningNode(tmp_path, http={"tokens": ("s3cret",)})
    try:
        status, ctype, body = get(n.http_port, "/healthz")
        assert status == 200 and ctype == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["version"]
        status, _, body = get(n.http_port, "/readyz")
        ready = json.loads(body)
        assert status == 200, ready
        assert ready["status"] == "ready" and ready["failing"] == []
        assert set(ready["checks"]) == {"scp_listening", "state_db_writable", "folders_writable", "disk_space", "conversions"}
        assert all(c["ok"] for c in ready["checks"].values())
        # STOW-RS itself still asks for the token.
        conn = http.client.HTTPConnection("127.0.0.1", n.http_port, timeout=30)
        conn.request("POST", "/dicom-web/studies", body=b"", headers={"Content-Type": CONTENT_TYPE})
        assert conn.getresponse().status == 401
        conn.close()
        # Free disk below the reserve: not ready, and the failing check says why.
        n.node.store.reserve_bytes = shutil.disk_usage(tmp_path).free * 10
        status, _, body = get(n.http_port, "/readyz")
        ready = json.loads(body)
        assert status == 503
        assert ready["failing"] == ["disk_space"] and ready["status"] == "not ready"
        assert ready["checks"]["disk_space"]["free_bytes"] < ready["checks"]["disk_space"]["reserve_bytes"]
        assert get(n.http_port, "/healthz")[0] == 200  # alive all the same
    finally:
        n.stop()


def test_metrics_count_c_store_and_stow_and_conversions(tmp_path):
    n = RunningNode(tmp_path)
    try:
        before = samples(n.http_port)
        assert before[("wsi_node_series", (("state", "published"),))] == 0
        spec = SlideSpec(width=1200, height=900, seed=601)
        files = write_series(spec, tmp_path / "src")
        assert all(s == 0 for s in pynetdicom_send(n.port, files, aet="METRICS1"))
        uid = series_uids(spec)[1]
        n.output(uid)
        # One instance of another series over STOW-RS, without authentication.
        other = write_series(SlideSpec(width=800, height=600, seed=602), tmp_path / "other")
        conn = http.client.HTTPConnection("127.0.0.1", n.http_port, timeout=30)
        conn.request("POST", "/dicom-web/studies", body=multipart(other[:1]), headers={"Content-Type": CONTENT_TYPE})
        assert conn.getresponse().status == 200
        conn.close()
        m = wait_for(lambda: (s := samples(n.http_port))[("wsi_node_series", (("state", "published"),))] >= 1 and s,
                     30, what="the published series in the state gauge")
        dimse = (("calling_ae", "METRICS1"), ("protocol", "dimse"))
        assert m[("wsi_node_instances_received_total", dimse)] == len(files)
        # Bytes as stored (the file meta information is rewritten on receipt: a few bytes differ from the sender's files).
        assert m[("wsi_node_received_bytes_total", dimse)] == pytest.approx(sum(f.stat().st_size for f in files), rel=0.01)
        stow = (("calling_ae", "anonymous"), ("protocol", "stow"))
        assert m[("wsi_node_instances_received_total", stow)] == 1
        assert m[("wsi_node_received_bytes_total", stow)] == pytest.approx(other[0].stat().st_size, rel=0.01)
        published = {k: v for k, v in m.items() if k[0] == "wsi_node_conversions_total" and ("result", "published") in k[1]}
        assert sum(published.values()) == 1, published
        assert {dict(k[1])["mode"] for k in published} <= {"copy", "reencode", "auto"}
        assert m[("wsi_node_conversion_duration_seconds_count", ())] == 1
        tiles = m[("wsi_node_tiles_total", (("action", "copied"),))] + m[("wsi_node_tiles_total", (("action", "reencoded"),))]
        assert tiles > 0
        assert m[("wsi_node_queue_depth", ())] == 0
        assert m[("wsi_node_free_disk_bytes", ())] > 0
        # The STOW-RS instance's series is incomplete: it waits.
        assert m[("wsi_node_series", (("state", "waiting"),))] == 1
        assert ("wsi_node_info", (("ae_title", "WSINODE"), ("version", json.loads(get(n.http_port, "/healthz")[2])["version"]))) in m
    finally:
        n.stop()


def test_two_nodes_in_one_process_have_separate_metrics(tmp_path):
    a, b = RunningNode(tmp_path / "a"), RunningNode(tmp_path / "b")
    try:
        files = write_series(SlideSpec(width=800, height=600, seed=611), tmp_path / "src")
        assert pynetdicom_send(a.port, files[:1], aet="ONLYA") == [0]
        key = ("wsi_node_instances_received_total", (("calling_ae", "ONLYA"), ("protocol", "dimse")))
        assert samples(a.http_port)[key] == 1
        assert key not in samples(b.http_port)
    finally:
        a.stop()
        b.stop()


def test_json_logs_are_valid_and_never_name_the_patient(tmp_path):
    spec = SlideSpec(width=1000, height=800, seed=621, label=True)
    files = write_series(spec, tmp_path / "src")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    patient = [str(v) for v in (ds.get("PatientName"), ds.get("PatientID")) if v]
    assert patient, "the synthetic instance should carry a patient name and ID"
    port = free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "scp.cli", "serve", "--bind", "127.0.0.1", "--port", str(port),
                             "--http-port", "0", "--data", str(data), "--log-format", "json"],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            if "wsi-node ready" in line:
                break
        assert all(s == 0 for s in pynetdicom_send(port, files, aet="JSONLOG"))
        target = data / "serving" / f"{series_uids(spec)[1]}.tiff"
        wait_for(lambda: target.exists() and target.with_suffix(".json").exists(), 60, what="the published slide")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    lines += out.splitlines()
    lines = [ln.strip() for ln in lines if ln.strip()]
    assert proc.returncode == 0, "\n".join(lines)
    entries = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("published" in e["message"] for e in entries)
    for ln in lines:
        for value in patient:
            assert value not in ln, f"patient attribute {value!r} in a log line: {ln}"
    for value in (str(ds.PatientName).replace("^", " "), str(ds.PatientName).split("^")[0]):
        assert not any(value in ln for ln in lines), value


def chromium(*args: str, profile: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def dump_dom(url: str, profile: Path) -> str:
    r = chromium("--dump-dom", url, profile=profile)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium): "
                                              "the status page is not tested in a browser")
def test_status_page_in_headless_chromium_while_receiving_and_after_publishing(tmp_path):
    import html.parser

    import pyvips

    n = RunningNode(tmp_path)
    try:
        spec = SlideSpec(width=1200, height=900, seed=631, concatenation_parts=2)
        files = write_series(spec, tmp_path / "src")
        study, uid = series_uids(spec)
        held_back = next(f for f in files if "part-2" in f.name)
        first = [f for f in files if f != held_back]
        ae = AE(ae_title="BROWSER1")
        ae.dimse_timeout = ae.network_timeout = 30
        for ts in sorted({str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}):
            ae.add_requested_context(WSI_STORAGE, ts)
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(f).Status) for f in first] == [0] * len(first)
            url = f"http://127.0.0.1:{n.http_port}/"
            dom = dump_dom(url, tmp_path / "profile")

            class Rows(html.parser.HTMLParser):
                """Text of each cell of the series table, per row id, plus img sources."""

                def __init__(self):
                    super().__init__()
                    self.rows: dict[str, dict[str, str]] = {}
                    self.row = self.cls = None
                    self.imgs: list[str] = []
                    self.refresh = None
                    self.span = False

                def handle_starttag(self, tag, attrs):
                    a = dict(attrs)
                    if tag == "meta" and a.get("http-equiv") == "refresh":
                        self.refresh = a.get("content")
                    if tag == "tr" and (a.get("id") or "").startswith("series-"):
                        self.row = self.rows.setdefault(a["id"][7:], {"text": ""})
                    if tag == "td" and self.row is not None:
                        self.cls = a.get("class")
                    if tag == "span" and a.get("class") == "frames" and self.row is not None:
                        self.row.setdefault("frames", []).append("")
                        self.span = True
                    if tag == "img":
                        self.imgs.append(a.get("src"))

                def handle_endtag(self, tag):
                    if tag == "tr":
                        self.row = None
                    if tag == "span":
                        self.span = False
                    if tag == "td":
                        self.cls = None

                def handle_data(self, data):
                    if self.row is not None:
                        self.row["text"] += data
                        if self.span:
                            self.row["frames"][-1] += data
                        if self.cls:
                            self.row[self.cls] = self.row.get(self.cls, "") + data

            page = Rows()
            page.feed(dom)
            assert page.refresh == "5"
            assert "WSINODE" in dom and str(n.port) in dom and str(n.http_port) in dom
            assert uid in page.rows, dom
            row = page.rows[uid]
            assert row["state"] == "receiving", row
            assert row["instances"] == str(len(first))
            # Frames received / expected per level: the level cut in two concatenation parts is short of
            # frames, or its expected count is unknown ("?") while a part is missing.
            frames = [f.split(" / ") for f in row.get("frames", [])]
            assert frames and all(len(f) == 2 for f in frames), row
            assert any(b == "?" or int(a) < int(b) for a, b in frames), frames
            assert "part 2 of 2 missing" in row["text"], row["text"]
            assert "Synthetic" not in dom  # no patient name on the page
        finally:
            assert int(assoc.send_c_store(held_back).Status) == 0
            assoc.release()
        n.output(uid)
        wait_for(lambda: f'/thumbnail/{uid}' in get(n.http_port, "/")[2].decode(), 30, what="the published row")
        dom = dump_dom(url, tmp_path / "profile")
        page = Rows()
        page.feed(dom)
        assert page.rows[uid]["state"] == "published"
        assert f"/thumbnail/{uid}" in page.imgs
        assert "total" in page.rows[uid]["text"]  # timings from the sidecar
        status, ctype, thumb = get(n.http_port, f"/thumbnail/{uid}")
        assert status == 200 and ctype == "image/jpeg"
        image = pyvips.Image.new_from_buffer(thumb, "")
        assert 0 < max(image.width, image.height) <= 256 and image.bands == 3
        assert get(n.http_port, "/thumbnail/1.2.3.999")[0] == 404
        assert get(n.http_port, "/thumbnail/not-a-uid")[0] == 400
        # The browser loads and paints it: a screenshot holds the thumbnail's colours.
        shot = tmp_path / "page.png"
        r = chromium(f"--screenshot={shot}", "--window-size=1600,1000", "--hide-scrollbars", url, profile=tmp_path / "profile")
        assert shot.exists(), r.stderr[-2000:]
        png = pyvips.Image.new_from_file(str(shot))[:3].numpy()
        colourful = ((png.max(axis=2).astype(int) - png.min(axis=2)) > 40).sum()
        t = image.numpy()
        thumb_colourful = ((t.max(axis=2).astype(int) - t.min(axis=2)) > 40).sum()
        assert colourful >= 0.5 * thumb_colourful > 0, (colourful, thumb_colourful)
    finally:
        n.stop()
