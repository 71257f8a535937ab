"""A receiving node for tests, and the senders and checks the scp and docker tests share.

`RunningNode` runs the whole node (DIMSE on a free port, DICOMweb on an OS-chosen port) in the
test process; `storescu` (DCMTK) and `pynetdicom_send` push instances over DIMSE, `multipart`
builds STOW-RS bodies; `assert_published` checks what the node published with a real tile
reader; `make_pki` makes throwaway TLS certificates. Test modules import these from here, never
from each other, so that each test module stays a leaf.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from config.settings import BatchSettings
from converter.testkit import SlideSpec, series_uids
from scp.dimse import WSI_STORAGE, DimseSettings
from scp.node import Node, NodeSettings
from scp.stow import HttpSettings
from tests.readers import open_openslide

STORESCU = "/usr/bin/storescu"  # DCMTK's; pynetdicom installs an app of the same name on PATH
BOUNDARY = "wsi-node-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningNode:
    """The node in this process: DIMSE on a free port, and the DICOMweb receiver on 127.0.0.1 at an
    OS-chosen port (`http_port`, `http_url`); `http` holds extra HttpSettings fields (auth, limits, TLS)."""

    def __init__(self, tmp: Path, http: dict | None = None, disk_reserve_mb: int = 1, **dimse) -> None:
        self.data = tmp / "data"
        p = BatchSettings(inbox=self.data / "inbox", serving=self.data / "serving", archive=self.data / "archive",
                          quarantine=self.data / "quarantine", state_dir=self.data / "state", watch_interval=1.0, max_concurrent=1)
        for d in (p.inbox, p.serving, p.archive, p.quarantine, p.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.settings = NodeSettings(p, DimseSettings(bind="127.0.0.1", port=self.port, **dimse), disk_reserve_mb=disk_reserve_mb,
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


def multipart(parts: list[Path | bytes], boundary: str = BOUNDARY, closing: bool = True) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part if isinstance(part, bytes) else Path(part).read_bytes()
        out += b"\r\n"
    if closing:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)



def make_pki(folder: Path) -> dict[str, Path]:
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


# --- hostile and limit tests: small file systems, memory, raw DICOM sockets ----------------------
@contextlib.contextmanager
def tmpfs(folder: Path, size_mb: int):
    """A real small file system at `folder` (tmpfs, as root); skips with the reason when it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("a small real file system needs root (mount -t tmpfs); run the tests as root to cover a full disk")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def vm_rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process (this one by default) from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def associate_rq(calling: str = "RAW", called: str = "WSINODE", syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """An encoded, valid A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing VL WSI storage in `syntax`."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    p = A_ASSOCIATE()
    p.application_context_name = "1.2.840.10008.3.1.1.1"
    p.calling_ae_title, p.called_ae_title = calling, called
    m = MaximumLengthNotification()
    m.maximum_length_received = 0
    i = ImplementationClassUIDNotification()
    i.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    p.user_information = [m, i]
    cx = build_context(WSI_STORAGE, syntax)
    cx.context_id = 1
    p.presentation_context_definition_list = [cx]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(p)
    return pdu.encode()


def read_pdu(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """One PDU from a raw socket: (type, body); (0, b"") when the peer closed the connection."""
    sock.settimeout(timeout)
    head = b""
    while len(head) < 6:
        part = sock.recv(6 - len(head))
        if not part:
            return 0, b""
        head += part
    kind, _, length = struct.unpack(">BBL", head)
    body = b""
    while len(body) < length:
        part = sock.recv(min(65536, length - len(body)))
        if not part:
            break
        body += part
    return kind, body


def raw_association(port: int, **kw) -> socket.socket:
    """A TCP connection with an accepted association, for sending hand-made PDUs."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(**kw))
    kind, _ = read_pdu(sock)
    assert kind == 0x02, f"expected A-ASSOCIATE-AC (0x02), got PDU type 0x{kind:02X}"
    return sock
