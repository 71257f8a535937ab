"""A real Orthanc 1.10.1 (Debian) started by a test on loopback, as a STOW-RS or Storage Commitment peer.

Its HTTP port is on 127.0.0.1 only (RemoteAccessAllowed false); it has no bind-address option for DICOM
(FIELD-NOTES), so tests give it a free port and send it nothing but loopback traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
                        if Path(p).exists()), None)
NO_PROXY_ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@contextlib.contextmanager
def running_orthanc(folder: Path, http_port: int, **config: Any) -> Iterator[tuple[requests.Session, str]]:
    """Start Orthanc with `config` on top of a loopback-only base; yield (session, base URL); stop it."""
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    settings = {"Name": "wsi-node-test", "StorageDirectory": str(folder / "orthanc"), "IndexDirectory": str(folder / "orthanc"),
                "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                "HttpCompressionEnabled": False, "Plugins": [], **config}
    (folder / "orthanc.json").write_text(json.dumps(settings))
    log_path = folder / "orthanc.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, env=NO_PROXY_ENV)
    session = requests.Session()
    session.trust_env = False
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if session.get(f"{base}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield session, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
