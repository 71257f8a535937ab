"""Receiving benchmark: `wsi-node serve` vs DCMTK storescp, side by side, pushed by DCMTK storescu.

Usage:
    python bench/bench_node.py [--reps 3] [--series 24000x18000] [--large 20000x18000] [--work bench/out]
                               [--warm 8000x6000] [--keep-large] [--large-wait receive|publish]

Two inputs, both from converter/synthetic.py:
1. "series": the JPEG Baseline series of bench_convert.py (24000x18000, q90, 256 px tiles, full
   pyramid, 8 instances, ~110 MB; cached in --work/input-24000x18000);
2. "large": one native RGB instance (Explicit VR Little Endian, level 0 only, 20000x18000 =
   1.10 GB of pixel data), generated into --work and removed at the end unless --keep-large.

For each repetition every input is pushed once to each SCP, interleaved (which SCP goes first
rotates between repetitions) so that machine noise hits both alike. Each push is
`/usr/bin/storescu -R -xy +sd +sp '*.dcm' -aet BENCH -aec <AE> 127.0.0.1 <port> <folder>` (one
association) to a freshly started SCP with a fresh, empty data folder:
- `wsi-node serve --bind 127.0.0.1 --port P --data <tmp> --quiet-period 60 --settle 2` (started
  from this interpreter's bin folder; "ready" = its "wsi-node ready" log line; its DICOMweb
  receiver, where present, stays on but listens on 127.0.0.1 and a free port),
- `/usr/bin/storescp +xa -od <tmp> P` ("ready" = its port is listening in /proc/net/tcp), the
  reference of the throughput target, and
- `/usr/bin/storescp +xa +B -pdu 131072 -od <tmp> P` for comparison: bit-preserving mode streams
  each dataset to disk as it arrives (the default mode builds it in memory first), and a 128 KiB
  maximum PDU is what storescu uses towards wsi-node (which advertises no limit; storescp's
  default is 16 KiB).
Neither storescp fsyncs; wsi-node fsyncs every instance before its success response.
Measured:
- throughput: bytes of the pushed .dcm files / wall time of storescu (MB = 10^6 bytes);
- peak RSS: VmRSS of the SCP process (and, separately, the sum over the SCP process and all its
  descendants: wsi-node's forkserver and conversion workers) polled every 20 ms, plus the
  main process's VmHWM read just before it is stopped;
- wsi-node only: publish latency = time from storescu's exit (the last C-STORE response) until
  <SeriesInstanceUID>.tiff and .json are both in <data>/serving (polled every 20 ms), and the
  conversion time `timings.total` from that JSON. With --large-wait receive (the default) the large
  instance's conversion is not waited for (the node is stopped once the receive is done): a lone
  level 0 does not reach a small pyramid level, so the node rightly treats the slide as possibly
  incomplete and waits its quiet period (60 s) before converting it. After the timed series, the
  --warm series (8000x6000, bench_convert.py's other input) is pushed to the same node and its
  publish latency measured too: the first conversion of a freshly started node also pays for
  starting its worker process.
The large input is removed at the end unless --keep-large; received data is always removed.
The page cache is flushed (`sync`) before every push; storescu reads its input from the page cache.
Prints a Markdown table of medians and the ratios, and writes every run to
--work/results-node.json. Needs DCMTK (/usr/bin/storescu, /usr/bin/storescp).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.testkit.synthetic import SlideSpec, write_series  # noqa: E402

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
NODE_AE = "WSINODE"
POLL = 0.02
STORESCP_VARIANTS = {"storescp": [], "storescp +B -pdu 131072": ["+B", "-pdu", "131072"]}


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


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


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


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
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


def push(src: Path, port: int, called_ae: str) -> float:
    """storescu wall seconds for the whole folder in one association."""
    cmd = [STORESCU, "-R", "-xy", "+sd", "+sp", "*.dcm", "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), str(src)]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if out.returncode != 0 or "E:" in out.stderr:
        raise RuntimeError(f"storescu failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall


def wait_published(data: Path, uid: str, since: float, timeout: float, proc: subprocess.Popen, log: Path) -> tuple[float, float]:
    """Seconds from `since` until <uid>.tiff and .json are in serving, and the report's conversion time."""
    tiff, report = data / "serving" / f"{uid}.tiff", data / "serving" / f"{uid}.json"
    wait_for(lambda: tiff.exists() and report.exists(), timeout, "wsi-node publish", proc, log)
    latency = time.monotonic() - since
    return latency, json.loads(report.read_text())["timings"]["total"]


def run_node(src: Path, uid: str, nbytes: int, n_files: int, wait_publish: bool, timeout: float,
             warm: tuple[Path, str] | None = None) -> dict:
    wsi = str(Path(sys.executable).parent / "wsi-node")
    data = Path(tempfile.mkdtemp(prefix="bench-node-"))
    log = data.parent / f"{data.name}.log"
    port = free_port()
    cmd = [wsi, "serve", "--bind", "127.0.0.1", "--port", str(port), "--data", str(data), "--quiet-period", "60", "--settle", "2"]
    try:
        # Versions with the DICOMweb STOW-RS receiver listen on HTTP too (default 0.0.0.0:8080): keep it
        # on, as deployed, but on 127.0.0.1 and a free port (older versions ignore these variables).
        env = dict(os.environ, WSI_NODE_HTTP_BIND="127.0.0.1", WSI_NODE_HTTP_PORT=str(free_port()))
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        poller = RssPoller(proc.pid)
        try:
            wait_for(lambda: "wsi-node ready" in log.read_text(), 60, "wsi-node start", proc, log)
            os.sync()
            poller.start()
            wall = push(src, port, NODE_AE)
            done = time.monotonic()
            stored = list((data / "inbox").rglob("*.dcm"))
            if len(stored) != n_files:
                raise RuntimeError(f"wsi-node stored {len(stored)} of {n_files} files: {log.read_text()[-2000:]}")
            publish = conversion = warm_publish = warm_conversion = None
            if wait_publish:
                publish, conversion = wait_published(data, uid, done, timeout, proc, log)
                if warm is not None:  # a second slide to the same node: its worker process is running by now
                    push(warm[0], port, NODE_AE)
                    warm_publish, warm_conversion = wait_published(data, warm[1], time.monotonic(), timeout, proc, log)
            hwm = status_kb(proc.pid, "VmHWM")
        finally:
            poller.halt.set()
            stop(proc)
        if poller.is_alive():
            poller.join()
        return {"wall": wall, "mbps": nbytes / 1e6 / wall, "rss_main": poller.main_kb / 1024, "rss_tree": poller.tree_kb / 1024,
                "hwm_main": hwm / 1024, "publish": publish, "conversion": conversion,
                "warm_publish": warm_publish, "warm_conversion": warm_conversion}
    finally:
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)


def run_storescp(src: Path, nbytes: int, n_files: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
    log = out.parent / f"{out.name}.log"
    port = free_port()
    try:
        with open(log, "w") as err:
            proc = subprocess.Popen([STORESCP, "+xa", *extra, "-od", str(out), str(port)], stdout=err, stderr=subprocess.STDOUT)
        poller = RssPoller(proc.pid)
        try:
            wait_for(lambda: listening(port), 30, "storescp start", proc, log)
            os.sync()
            poller.start()
            wall = push(src, port, "STORESCP")
            stored = [p for p in out.iterdir() if p.is_file()]
            if len(stored) != n_files:
                raise RuntimeError(f"storescp stored {len(stored)} of {n_files} files: {log.read_text()[-2000:]}")
            hwm = status_kb(proc.pid, "VmHWM")
        finally:
            poller.halt.set()
            stop(proc)
        if poller.is_alive():
            poller.join()
        return {"wall": wall, "mbps": nbytes / 1e6 / wall, "rss_main": poller.main_kb / 1024, "rss_tree": poller.tree_kb / 1024,
                "hwm_main": hwm / 1024, "publish": None, "conversion": None}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        log.unlink(missing_ok=True)


# --- main ---------------------------------------------------------------------------------------
def med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--series", default="24000x18000", help="JPEG series WxH ('' to skip)")
    ap.add_argument("--large", default="20000x18000", help="native RGB single instance WxH ('' to skip)")
    ap.add_argument("--large-wait", choices=("publish", "receive"), default="receive",
                    help="only measure the large instance's receive, or also wait for its publication: a lone "
                         "level 0 does not look complete, so the node waits its 60 s quiet period first")
    ap.add_argument("--warm", default="8000x6000",
                    help="JPEG series pushed to the same node after the timed series, to measure publish latency "
                         "with the conversion worker already running ('' to skip)")
    ap.add_argument("--keep-large", action="store_true", help="keep the generated large instance in --work")
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    inputs: dict[str, tuple[Path, bool]] = {}
    warm = None
    if args.series:
        w, h = (int(v) for v in args.series.split("x"))
        inputs[f"series {args.series} JPEG"] = (prepare(work / f"input-{w}x{h}", series_spec(w, h)), True)
        if args.warm:
            w, h = (int(v) for v in args.warm.split("x"))
            folder = prepare(work / f"input-{w}x{h}", series_spec(w, h))
            warm = (folder, series_uid(folder))
    large_folder = None
    if args.large:
        w, h = (int(v) for v in args.large.split("x"))
        large_folder = work / f"input-large-{w}x{h}-explicit"
        inputs[f"1 instance {args.large} native"] = (prepare(large_folder, large_spec(w, h)), args.large_wait == "publish")

    meta = {}
    for name, (src, _) in inputs.items():
        files = dcm_files(src)
        meta[name] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "uid": series_uid(src)}

    scps = ["wsi-node", *STORESCP_VARIANTS]
    runs: dict[str, dict[str, list[dict]]] = {name: {scp: [] for scp in scps} for name in inputs}
    t_start = time.monotonic()
    try:
        for rep in range(args.reps):
            order = scps[rep % len(scps):] + scps[:rep % len(scps)]  # who goes first rotates
            for name, (src, wait_publish) in inputs.items():
                m = meta[name]
                for scp in order:
                    if scp == "wsi-node":
                        r = run_node(src, m["uid"], m["bytes"], m["files"], wait_publish, timeout=600,
                                     warm=warm if wait_publish and name.startswith("series") else None)
                    else:
                        r = run_storescp(src, m["bytes"], m["files"], STORESCP_VARIANTS[scp])
                    runs[name][scp].append(r)
                    extra = f", publish {r['publish']:.2f} s (conversion {r['conversion']:.2f} s)" if r["publish"] is not None else ""
                    if r.get("warm_publish") is not None:
                        extra += f"; 2nd slide: publish {r['warm_publish']:.2f} s (conversion {r['warm_conversion']:.2f} s)"
                    print(f"rep {rep + 1} {name} {scp}: {r['wall']:.2f} s, {r['mbps']:.0f} MB/s, RSS {r['rss_main']:.0f} MB "
                          f"(tree {r['rss_tree']:.0f} MB, HWM {r['hwm_main']:.0f} MB){extra}", file=sys.stderr)
    finally:
        if large_folder is not None and not args.keep_large:
            shutil.rmtree(large_folder, ignore_errors=True)
    total = time.monotonic() - t_start
    (work / "results-node.json").write_text(json.dumps({"meta": meta, "runs": runs, "seconds": total}, indent=1))

    print("| input | MB | files | SCP | storescu wall s (median) | MB/s (median) | peak RSS MB, SCP process (max) "
          "| peak RSS MB, process tree (max) | VmHWM MB (max) | publish latency s (median) | conversion s (median) "
          "| latency - conversion s (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, by_scp in runs.items():
        m = meta[name]
        for scp, rs in by_scp.items():
            pub, conv = med(rs, "publish"), med(rs, "conversion")
            lat = [r["publish"] - r["conversion"] for r in rs if r["publish"] is not None]
            cells = ["" if v is None else f"{v:.2f}" for v in (pub, conv, statistics.median(lat) if lat else None)]
            print(f"| {name} | {m['bytes'] / 1e6:.0f} | {m['files']} | {scp} | {med(rs, 'wall'):.2f} | {med(rs, 'mbps'):.0f} "
                  f"| {max(r['rss_main'] for r in rs):.0f} | {max(r['rss_tree'] for r in rs):.0f} | {max(r['hwm_main'] for r in rs):.0f} "
                  f"| {' | '.join(cells)} |")
    print()
    for name, by_scp in runs.items():
        node = med(by_scp["wsi-node"], "mbps")
        for scp in STORESCP_VARIANTS:
            per_rep = [a["mbps"] / b["mbps"] for a, b in zip(by_scp["wsi-node"], by_scp[scp])]
            print(f"- {name}: wsi-node / {scp} throughput = {node / med(by_scp[scp], 'mbps'):.2f} (per repetition: "
                  f"{', '.join(f'{x:.2f}' for x in per_rep)})")
    for name, by_scp in runs.items():
        rs = [r for r in by_scp["wsi-node"] if r.get("warm_publish") is not None]
        if rs:
            lat = statistics.median(r["warm_publish"] - r["warm_conversion"] for r in rs)
            print(f"- {args.warm} JPEG series pushed next to the same node (worker already running): publish latency "
                  f"{med(rs, 'warm_publish'):.2f} s, conversion {med(rs, 'warm_conversion'):.2f} s, latency - conversion {lat:.2f} s (medians)")
    print(f"\n(total {total:.0f} s for {args.reps} repetitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
