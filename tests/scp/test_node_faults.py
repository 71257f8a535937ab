"""The running node under faults (issue 10): killed conversion processes, re-sends after publication,
serving full, and what /readyz and /metrics say. Real node, real senders over loopback, real processes."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from converter.testkit import SlideSpec, series_uids, write_series
from tests.faults.harness import wait_for
from tests.support.node import RunningNode, pynetdicom_send

WAIT = 90.0


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def metric(port: int, name: str, **labels: str) -> float:
    _, body = get(port, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} {labels} not on /metrics")


def until(predicate, what: str, timeout: float = WAIT):
    return wait_for(predicate, timeout, what=what)


def state(n: RunningNode, uid: str) -> dict:
    return n.node.query(lambda node: node.pipeline.store.series(uid)) or {}


def conversion_pid(n: RunningNode, uid: str) -> int | None:
    job = dict(n.node.pipeline.jobs).get(uid)
    return n.node.executor.pid_of(job.future) if job is not None else None


def test_the_node_keeps_converting_after_its_conversion_process_is_killed(tmp_path):
    n = RunningNode(tmp_path)
    try:
        spec_a = SlideSpec(width=8192, height=6144, seed=601, transfer_syntax="explicit")
        files_a = write_series(spec_a, tmp_path / "a")
        uid_a = series_uids(spec_a)[1]
        assert set(pynetdicom_send(n.port, files_a)) == {0}
        pid = until(lambda: conversion_pid(n, uid_a), "the conversion of slide A to start")
        os.kill(pid, signal.SIGKILL)
        until(lambda: state(n, uid_a).get("state") == "published", "slide A published after the retry")
        assert state(n, uid_a)["conversions"] == 1
        notes = json.loads((n.data / "serving" / f"{uid_a}.json").read_text())["notes"]
        assert any("attempt 2 of 3" in note and "signal 9" in note for note in notes), notes
        # The node converts the next slide as if nothing happened.
        spec_b = SlideSpec(width=2048, height=1536, seed=602)
        files_b = write_series(spec_b, tmp_path / "b")
        assert set(pynetdicom_send(n.port, files_b)) == {0}
        until(lambda: state(n, series_uids(spec_b)[1]).get("state") == "published", "slide B published")
        assert metric(n.http_port, "wsi_node_worker_deaths_total") == 1
        assert metric(n.http_port, "wsi_node_conversion_retries_total") == 1
        assert metric(n.http_port, "wsi_node_poison_slides_total") == 0
        status, body = get(n.http_port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["checks"]["conversions"]["ok"], ready
        assert ready["checks"]["conversions"]["worker_deaths"] == 1
        assert not [p for p in (n.data / "serving").iterdir() if p.name.startswith(".")]
    finally:
        n.stop()


def _pixels(path: Path) -> bytes:
    return pydicom.dcmread(path).PixelData


def _tiff_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_different_resend_after_publication_reconverts_and_an_identical_one_does_not(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wsi_node")
    n = RunningNode(tmp_path)
    try:
        spec = SlideSpec(width=1024, height=768, seed=603, transfer_syntax="explicit")
        files = write_series(spec, tmp_path / "s")
        study, uid = series_uids(spec)
        assert set(pynetdicom_send(n.port, files)) == {0}
        until(lambda: state(n, uid).get("state") == "published", "the first conversion")
        tiff = n.data / "serving" / f"{uid}.tiff"
        first = _tiff_digest(tiff)
        level0 = next(f for f in files if f.name == "level-0.dcm")
        sop = str(pydicom.dcmread(level0, stop_before_pixels=True).SOPInstanceUID)
        # A corrected copy: same SOP Instance UID, other pixels (native pixel data: a dark band in the last rows).
        corrected = tmp_path / "corrected.dcm"
        data = bytearray(level0.read_bytes())
        data[-200_000:] = bytes(200_000)
        corrected.write_bytes(bytes(data))
        assert pynetdicom_send(n.port, [corrected]) == [0]
        until(lambda: state(n, uid).get("conversions") == 2, "the re-conversion after the corrected re-send")
        assert _tiff_digest(tiff) != first
        replaced = list((n.data / "archive" / "replaced").rglob("*.dcm"))
        assert len(replaced) == 1 and _pixels(replaced[0]) == _pixels(level0)  # the old copy, kept
        assert _pixels(n.data / "archive" / study / uid / f"{sop}.dcm") == _pixels(corrected)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "re-sent with different content" in r.getMessage()]
        assert len(warnings) == 1 and str(replaced[0]) in warnings[0] and sop in warnings[0]
        sidecar = json.loads(tiff.with_suffix(".json").read_text())
        assert sidecar["source"]["input_sop_instance_uids"] == sorted(
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        # The same corrected copy once more: stored, recognised as identical to the published one, nothing converted.
        second = _tiff_digest(tiff)
        assert pynetdicom_send(n.port, [corrected]) == [0]
        until(lambda: any("is identical to the published instance" in r.getMessage() for r in caplog.records),
              "the identical re-send to be recognised")
        time.sleep(1.0)
        assert state(n, uid)["conversions"] == 2 and _tiff_digest(tiff) == second
        assert not list((n.data / "inbox" / study).rglob("*.dcm"))
        assert len(list((n.data / "archive" / "replaced").rglob("*.dcm"))) == 1
    finally:
        n.stop()


def test_serving_full_keeps_the_series_queued_and_publishes_when_space_returns(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for serving (mount -t tmpfs)")
    serving = tmp_path / "data" / "serving"
    serving.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(serving)], check=True, timeout=30)
    n = None
    try:
        filler = serving / "filler.bin"
        with open(filler, "wb") as fp:  # leave about 1 MB: less than the slide's TIFF
            fp.write(bytes(shutil.disk_usage(serving).free - (1 << 20)))
        n = RunningNode(tmp_path)
        spec = SlideSpec(width=4096, height=3072, seed=604, transfer_syntax="explicit")
        files = write_series(spec, tmp_path / "s")
        uid = series_uids(spec)[1]
        assert set(pynetdicom_send(n.port, files)) == {0}
        until(lambda: "no space left" in (state(n, uid).get("error") or ""), "the conversion to fail for lack of space")
        assert state(n, uid)["state"] in ("pending", "converting")
        status, body = get(n.http_port, "/readyz")
        ready = json.loads(body)
        assert status == 503 and "conversions" in ready["failing"], ready
        assert f"serving {serving} is full" in ready["checks"]["conversions"]["detail"] and "MB free" in ready["checks"]["conversions"]["detail"]
        assert metric(n.http_port, "wsi_node_pipeline_faults_total", kind="no-space") >= 1
        assert sorted(p.name for p in serving.iterdir()) == ["filler.bin"]  # nothing partial, no scratch files
        assert list((n.data / "inbox").rglob("*.dcm")), "the originals stay in the inbox"
        filler.unlink()
        until(lambda: state(n, uid).get("state") == "published", "the series published once space returned", timeout=120)
        assert state(n, uid)["conversions"] == 1
        assert sorted(p.name for p in serving.iterdir()) == [f"{uid}.json", f"{uid}.tiff"]
        status, body = get(n.http_port, "/readyz")
        assert status == 200, body
    finally:
        if n is not None:
            n.stop()
        subprocess.run(["umount", "-l", str(serving)], check=False, timeout=30)
