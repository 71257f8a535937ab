"""What the receiving benchmarks share (bench_node.py, bench_stow.py): inputs, processes, measurements.

Both push the same generated inputs to a freshly started `wsi-node serve` (bench_node.py also
to DCMTK storescp), wait for the same "ready" signal, poll the receiver's RSS the same way and
wait for the same publication. One copy of that keeps their numbers comparable: a change to
how a node is started or measured applies to both benchmarks at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.testkit import SlideSpec, write_series  # noqa: E402

STORESCU = "/usr/bin/storescu"
NODE_AE = "WSINODE"
POLL = 0.02


# --- inputs -------------------------------------------------------------------------------------
def series_spec(width: int, height: int) -> SlideSpec:
    # Same spec as bench_convert.py, so its cached input is reused.
    return SlideSpec(width=width, height=height, tile_size=256, quality=90, icc_profile=False)


def large_spec(width: int, height: int) -> SlideSpec:
    return SlideSpec(width=width, height=height, tile_size=256, transfer_syntax="explicit", downsamples=(1,), icc_profile=False)


def prepare(folder: Path, spec: SlideSpec) -> Path:
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.monotonic()
        write_series(spec, folder)  # streams frames through a side file: memory stays flat
        done.write_text("ok")
        print(f"generated {folder} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    return folder


def dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def series_uid(folder: Path) -> str:
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID)
            for p in dcm_files(folder)}
    if len(uids) != 1:
        raise RuntimeError(f"{folder}: expected one series, found {sorted(uids)}")
    return uids.pop()


# --- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class RssPoller(threading.Thread):
    """Peak VmRSS of one process and peak summed VmRSS of it and its descendants, every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.main_kb = self.tree_kb = 0
        self.halt = threading.Event()

    def run(self) -> None:
        kids: list[int] = []
        next_scan = 0.0
        while not self.halt.is_set():
            now = time.monotonic()
            if now >= next_scan:  # the process tree changes rarely; rescan it every 200 ms
                kids, next_scan = descendants(self.pid), now + 0.2
            main = status_kb(self.pid, "VmRSS")
            self.main_kb = max(self.main_kb, main)
            self.tree_kb = max(self.tree_kb, main + sum(status_kb(k, "VmRSS") for k in kids))
            self.halt.wait(POLL)


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the SCP exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > end:
            raise RuntimeError(f"{what}: timed out after {timeout:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(POLL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def scratch(prefix: str) -> Iterator[tuple[Path, Path]]:
    """An empty data folder for one receiver and the path of its log beside it; both removed afterwards."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    log = data.parent / f"{data.name}.log"
    try:
        yield data, log
    finally:
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)


@dataclass
class Scp:
    """A started receiver: its process, its log and the poller of its RSS (started by the caller)."""

    proc: subprocess.Popen
    log: Path
    poller: RssPoller

    def hwm_kb(self) -> int:
        return status_kb(self.proc.pid, "VmHWM")


@contextmanager
def scp_process(cmd: list[str], log: Path, ready: Callable[[], bool], what: str, timeout: float = 60,
                env: dict[str, str] | None = None, stdout_to_log: bool = False) -> Iterator[Scp]:
    """Start `cmd` with its stderr (and with `stdout_to_log` its stdout) in `log`, wait until `ready()`,
    `sync`, and yield it; SIGTERM (SIGKILL after 60 s) and the poller's end on the way out."""
    with open(log, "w") as err:
        if stdout_to_log:
            proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT, env=env)
        else:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    scp = Scp(proc, log, RssPoller(proc.pid))
    try:
        wait_for(ready, timeout, what, proc, log)
        os.sync()
        yield scp
    finally:
        scp.poller.halt.set()
        stop(proc)
        if scp.poller.is_alive():
            scp.poller.join()


@contextmanager
def node_process(data: Path, log: Path, port: int, *options: str, env: dict[str, str] | None = None,
                 settle: float = 2.0) -> Iterator[Scp]:
    """`wsi-node serve` of this interpreter's bin folder on 127.0.0.1:`port` with `data`, settle `settle` s (2), plus
    `options`; ready once it logs "wsi-node ready"."""
    wsi = str(Path(sys.executable).parent / "wsi-node")
    cmd = [wsi, "serve", "--bind", "127.0.0.1", "--port", str(port), *options, "--data", str(data), "--settle", f"{settle:g}"]
    with scp_process(cmd, log, lambda: "wsi-node ready" in log.read_text(), "wsi-node start", env=env) as scp:
        yield scp


def push(src: Path, port: int, called_ae: str) -> float:
    """storescu wall seconds for the whole folder in one association."""
    cmd = [STORESCU, "-R", "-xy", "+sd", "+sp", "*.dcm", "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), str(src)]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if out.returncode != 0 or "E:" in out.stderr:
        raise RuntimeError(f"storescu failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall


def check_stored(data: Path, n_files: int, log: Path, what: str = "wsi-node") -> None:
    """The node's inbox holds the `n_files` instances pushed."""
    stored = list((data / "inbox").rglob("*.dcm"))
    if len(stored) != n_files:
        raise RuntimeError(f"{what} stored {len(stored)} of {n_files} files: {log.read_text()[-2000:]}")


def wait_published(data: Path, uid: str, since: float, timeout: float, proc: subprocess.Popen, log: Path) -> tuple[float, float]:
    """Seconds from `since` until <uid>.tiff and .json are in serving, and the report's conversion time."""
    tiff, report = data / "serving" / f"{uid}.tiff", data / "serving" / f"{uid}.json"
    wait_for(lambda: tiff.exists() and report.exists(), timeout, "wsi-node publish", proc, log)
    latency = time.monotonic() - since
    return latency, json.loads(report.read_text())["timings"]["total"]


# --- results ------------------------------------------------------------------------------------
def med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio_line(label: str, runs: list[dict], base: list[dict]) -> str:
    """`- label = <median ratio> (per repetition: ...)` of the throughput of `runs` over that of `base`."""
    per_rep = [a["mbps"] / b["mbps"] for a, b in zip(runs, base)]
    return f"- {label} = {med(runs, 'mbps') / med(base, 'mbps'):.2f} (per repetition: {', '.join(f'{x:.2f}' for x in per_rep)})"


def fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def receive_cells(name: str, meta: dict, receiver: str, runs: list[dict]) -> list[str]:
    """The table cells both benchmarks start a row with: input, size, receiver or sender, time, throughput, memory."""
    return [name, f"{meta['bytes'] / 1e6:.0f}", str(meta["files"]), receiver, f"{med(runs, 'wall'):.2f}", f"{med(runs, 'mbps'):.0f}",
            *(f"{max(r[key] for r in runs):.0f}" for key in ("rss_main", "rss_tree", "hwm_main"))]


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *("| " + " | ".join(r) + " |" for r in rows)])


def prime_page_cache(nbytes: int, folder: Path | None = None) -> None:
    """Write and delete `nbytes` of zeros in `folder` (default: the temporary folder the receivers' scratch uses).

    Why: on this VM, writing into page cache that the guest has not used before costs several times more
    (0.25 s vs up to 4 s per GB measured back to back); pages freed by a deleted file are cheap again. Every
    receiver gets freshly freed pages before its push, so none pays for first-touch memory that another did not.
    """
    fd, name = tempfile.mkstemp(prefix="bench-prime-", dir=folder)
    try:
        block = bytes(8 << 20)
        for _ in range(0, nbytes, len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(name)


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")


def page_reporting_state() -> str:
    """One line saying whether this VM hands freed guest memory back to its host (virtio-balloon free page reporting).

    Why: with reporting on, every write into memory a run freed a moment before costs ~2.6 s of kernel time per
    GB (2 GiB allocated and touched: 2.0-4.7 s on, 0.27-0.32 s off), which decides which side of a pair wins. A
    page_reporting_order above the kernel's largest page order (10) stops the reporting (docs/benchmarks.md):
    benchmark results say which state they ran in.
    """
    order_file = PAGE_REPORTING / "page_reporting_order"
    if not order_file.exists():
        return "free page reporting: absent (no virtio-balloon page reporting on this machine)"
    order = int(order_file.read_text())
    reported = int((PAGE_REPORTING / "reported_kib").read_text()) if (PAGE_REPORTING / "reported_kib").exists() else None
    state = "off" if order > 10 else "on"
    extra = f", {reported / 1048576:.1f} GiB reported so far" if reported is not None else ""
    return f"free page reporting: {state} (page_reporting_order {order}{extra})"
