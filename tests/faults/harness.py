"""Shared helpers of the fault suite: the node as a separate process, senders, and the checks after a fault.

Why a separate process: the faults this suite injects (kill -9, a dying worker, a full disk, a
locked database) must hit the real `python -m scp.cli serve`, with its forkserver and pool
workers, the way an operator's node is hit. `NodeProcess` starts it in its own process group
(so `kill9()` takes the node, its forkserver and every worker at once), waits until it answers
C-ECHO and /healthz, and can restart it on the same ports and data folder.

Probes (C-ECHO, /healthz, /readyz) and senders (pynetdicom C-STORE of datasets or of a file's
bytes as they are, DCMTK storescu re-sending until it succeeds, STOW-RS) are here too; the checks
after a fault are in tests/faults/audit.py. Each wait has a timeout; everything is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from pynetdicom import AE
from pynetdicom.sop_class import Verification

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STORESCU = "/usr/bin/storescu"  # DCMTK's; pynetdicom installs an app of the same name on PATH
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
BOUNDARY = "wsi-node-faults-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class NodeProcess:
    """`python -m scp.cli serve` in its own process group, on free loopback ports, data under `data`."""

    def __init__(self, data: Path, *extra: str, disk_reserve_mb: int = 1, quiet: float = 30, env: dict | None = None) -> None:
        self.data = Path(data)
        self.port = free_port()
        self.http_port = free_port()
        self.extra = list(extra)
        self.disk_reserve_mb = disk_reserve_mb
        self.quiet = quiet
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web/studies"

    def folder(self, name: str) -> Path:
        return self.data / name

    def command(self) -> list[str]:
        return [PYTHON, "-m", "scp.cli", "serve", "--bind", "127.0.0.1", "--port", str(self.port),
                "--http-port", str(self.http_port), "--http-bind", "127.0.0.1", "--data", str(self.data),
                "--settle", "0.5", "--watch-interval", "1", "--quiet-period", str(self.quiet),
                "--disk-reserve-mb", str(self.disk_reserve_mb), *self.extra]

    def start(self, wait: bool = True, timeout: float = 60) -> "NodeProcess":
        self.data.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        log = self.data.parent / f"{self.data.name}-node-{self.runs}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the node exited with {self.proc.returncode} while starting:\n{self.log_text()[-3000:]}")
            return healthz(self.url) and c_echo(self.port)
        wait_for(up, timeout, 0.1, f"the node on port {self.port} to answer C-ECHO and /healthz")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the node's whole process group (node, forkserver, workers): no clean-up runs."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        # The forkserver's workers are in the same group; wait until none is left.
        wait_for(lambda: not group_members(self.proc.pid), 10, 0.05, "the node's process group to be gone")

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def restart(self, timeout: float = 60) -> None:
        self.kill9()
        self.start(timeout=timeout)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def descendants(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []

    def rss_kb(self) -> int:
        """Resident memory of the node process alone (kB)."""
        return proc_rss_kb(self.proc.pid) if self.proc else 0

    # --- what the node holds ---------------------------------------------------------------------
    def published(self, series_uid: str) -> dict | None:
        tiff = self.folder("serving") / f"{series_uid}.tiff"
        sidecar = tiff.with_suffix(".json")
        if not (tiff.exists() and sidecar.exists()):
            return None
        try:
            data = json.loads(sidecar.read_text())
        except ValueError:
            return None
        return data if data.get("status") == "published" else None

    def wait_published(self, series_uid: str, sops: list[str] | None = None, timeout: float = 60) -> dict:
        def done():
            data = self.published(series_uid)
            if data is None:
                return None
            if sops is not None and sorted(data["source"]["input_sop_instance_uids"]) != sorted(sops):
                return None
            return data
        return wait_for(done, timeout, 0.2, f"series {series_uid} to be published"
                        + (f" from {len(sops)} instance(s)" if sops else ""))

    def incoming(self) -> list[Path]:
        folder = self.folder("inbox") / ".incoming"
        return sorted(folder.iterdir()) if folder.exists() else []

    def series_state(self, uid: str) -> dict | None:
        db = self.folder("state") / "wsi-node.sqlite"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = con.execute("SELECT state, conversions, output, error FROM series WHERE uid=?", (uid,)).fetchone()
        finally:
            con.close()
        return dict(zip(("state", "conversions", "output", "error"), row)) if row else None


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


# --- probes and senders ---------------------------------------------------------------------------
def healthz(url: str, timeout: float = 2) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def readyz(url: str, timeout: float = 5) -> tuple[int, dict]:
    r = requests.get(f"{url}/readyz", timeout=timeout)
    return r.status_code, r.json()


def c_echo(port: int, timeout: float = 5) -> bool:
    ae = AE(ae_title="FAULTECHO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


@dataclass
class StoreOutcome:
    status: int | None
    """DIMSE status the sender saw; None: no status (association broke)."""
    comment: str = ""


def c_store(port: int, items: list, aet: str = "FAULTSCU", transfer_syntaxes: tuple[str, ...] | None = None,
            max_pdu: int = 16382, timeout: float = 30) -> list[StoreOutcome]:
    """Send datasets or files over one pynetdicom association; the status (and ErrorComment) of each."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    if transfer_syntaxes is None:
        syntaxes = set()
        for item in items:
            try:
                meta = item.file_meta if isinstance(item, pydicom.Dataset) else pydicom.filereader.read_file_meta_info(item)
                syntaxes.add(str(meta.TransferSyntaxUID))
            except Exception:
                syntaxes.add("1.2.840.10008.1.2.4.50")
        transfer_syntaxes = tuple(sorted(syntaxes))
    for ts in transfer_syntaxes:
        ae.add_requested_context(WSI_STORAGE, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
    assert assoc.is_established, f"association to the node on port {port} was not established"
    out = []
    try:
        for item in items:
            try:
                status = assoc.send_c_store(item)
            except Exception as exc:  # reported as "no status"
                out.append(StoreOutcome(None, f"{type(exc).__name__}: {exc}"))
                continue
            if not status or "Status" not in status:
                out.append(StoreOutcome(None, "no response"))
            else:
                out.append(StoreOutcome(int(status.Status), str(status.get("ErrorComment", ""))))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def c_store_bytes(port: int, parts: list[bytes], folder: Path, **kw) -> list[StoreOutcome]:
    """C-STORE Part 10 files byte for byte: pynetdicom sends each data set as stored after its file meta
    (STORE_SEND_CHUNKED_DATASET), so truncations and byte flips reach the node as they are."""
    from pynetdicom import _config

    paths = []
    for i, data in enumerate(parts):
        path = folder / f"part-{time.monotonic_ns()}-{i}.dcm"
        path.write_bytes(data)
        paths.append(path)
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return c_store(port, paths, **kw)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
        for p in paths:
            p.unlink(missing_ok=True)


def storescu(port: int, *paths: Path, extra: tuple[str, ...] = (), timeout: float = 120, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    cmd = [STORESCU, "-aet", aet, "-aec", "WSINODE", "-R", "-xy", "+sd", *extra, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def storescu_until_ok(port: int, folder: Path, deadline: float, aet: str = "STORESCU", pause: float = 0.3) -> int:
    """Re-send the whole folder, as a scanner does, until storescu exits 0; returns the number of attempts."""
    attempts = 0
    while True:
        attempts += 1
        try:
            r = storescu(port, folder, aet=aet, timeout=max(5.0, deadline - time.monotonic()))
            if r.returncode == 0:
                return attempts
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{aet}: storescu did not succeed in {attempts} attempts before the deadline")
        time.sleep(pause)


def multipart(parts: list[bytes], boundary: str = BOUNDARY, closing: bool = True, part_type: str = "application/dicom") -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        out += part
        out += b"\r\n"
    if closing:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


@dataclass
class StowOutcome:
    http: int
    failed: list[int] = field(default_factory=list)
    """FailureReason (0008,1197) of each FailedSOPSequence item."""
    referenced: int = 0
    text: str = ""


def stow(url: str, body: bytes, content_type: str = CONTENT_TYPE, timeout: float = 60) -> StowOutcome:
    r = requests.post(url, data=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}, timeout=timeout)
    out = StowOutcome(r.status_code, text=r.text[:500])
    if r.headers.get("content-type", "").startswith("application/dicom+json"):
        doc = r.json()
        out.failed = [item["00081197"]["Value"][0] for item in doc.get("00081198", {}).get("Value", [])]
        out.referenced = len(doc.get("00081199", {}).get("Value", []))
    return out
