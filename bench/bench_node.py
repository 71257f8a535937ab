"""Receiving benchmark: `wsi-node serve` vs DCMTK storescp, side by side, pushed by DCMTK storescu.

Usage:
    python bench/bench_node.py [--reps 3] [--big 92000x69000] [--series ''] [--large ''] [--work bench/out]
                               [--warm 8000x6000] [--keep-large] [--large-wait receive|publish]

Inputs (issue 14 target 4 by default; helpers shared with bench_stow.py in bench/_common.py):
1. "big" (--big WxH, default 92000x69000): bench/gen_big.py's series of real JPEG frames, one instance
   per level with an extended offset table: 10 instances, 1.50 GB, written into --work/big-WxH in ~6 s
   and removed at the end unless --keep-large. Pushed twice: its level 0 alone ("1 instance", 1.13 GB)
   and the whole series ("series of 10 instances");
2. optional, the inputs of issue 4 (converter/testkit): --series 24000x18000 (bench_convert.py's JPEG
   series, 8 instances, ~110 MB, cached in --work) and --large 20000x18000 (one native RGB instance,
   1.10 GB, removed at the end unless --keep-large).

For each repetition every input is pushed once to each SCP, interleaved (which SCP goes first
rotates between repetitions) so that machine noise hits both alike. Each push is
`/usr/bin/storescu -R -xy +sd +sp '*.dcm' -aet BENCH -aec <AE> 127.0.0.1 <port> <folder>` (one
association; the same sender and options for every SCP) to a freshly started SCP with a fresh, empty
data folder:
- `wsi-node serve --bind 127.0.0.1 --port P --data <tmp> --quiet-period 60 --settle 2` (started
  from this interpreter's bin folder; "ready" = its "wsi-node ready" log line; its DICOMweb
  receiver stays on but listens on 127.0.0.1 and a free port),
- `/usr/bin/storescp +xa -od <tmp> P` ("ready" = its port is listening in /proc/net/tcp), the
  reference of the series target: its default mode builds each data set in memory, then writes it, and
- `/usr/bin/storescp +xa +B -pdu 131072 -od <tmp> P`, the reference of the single-instance target:
  bit-preserving mode streams each data set to disk as it arrives, and a 128 KiB maximum PDU is what
  storescu sends to wsi-node too.
Neither storescp fsyncs; wsi-node fsyncs every instance before its success response.
Before every push, as many bytes as the input are written to a scratch file and deleted
(bench/_common.py prime_page_cache: first-touch page cache on this VM costs up to 10x), then `sync`.
Measured:
- throughput: bytes of the pushed .dcm files / wall time of storescu (MB = 10^6 bytes);
- CPU seconds (user + system) of the SCP process during the push, less noisy than the wall time on a
  shared machine;
- peak RSS: VmRSS of the SCP process (and, separately, the sum over the SCP process and all its
  descendants: wsi-node's forkserver and conversion workers) polled every 20 ms, plus the
  main process's VmHWM read just before it is stopped;
- wsi-node, --series only: publish latency = time from storescu's exit (the last C-STORE response)
  until <SeriesInstanceUID>.tiff and .json are both in <data>/serving (polled every 20 ms), and the
  conversion time `timings.total` from that JSON; after the timed series, the --warm series (8000x6000)
  is pushed to the same node and its publish latency measured too (the worker process is running by
  then). The big inputs and --large are only received (with --large-wait publish, --large waits for
  its publication: a lone level 0 waits the 60 s quiet period).
Received data is always removed. Prints a Markdown table of medians and the ratios, and writes every
run to --work/results-node.json. Needs DCMTK (/usr/bin/storescu, /usr/bin/storescp).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    NODE_AE, REPO, check_stored, dcm_files, fmt, page_reporting_state, free_port, large_spec, markdown_table, med, node_process, prepare, prime_page_cache,
    push, ratio_line, receive_cells, scp_process, scratch, series_spec, series_uid, wait_published,
)

STORESCP = "/usr/bin/storescp"
STORESCP_VARIANTS = {"storescp": [], "storescp +B -pdu 131072": ["+B", "-pdu", "131072"]}
CLK = os.sysconf("SC_CLK_TCK")
TARGETS = {"1 instance": "storescp +B -pdu 131072", "series": "storescp"}
"""Issue 14 target 4: which storescp each kind of input is compared with."""


def cpu_s(pid: int) -> float:
    """User + system seconds of one process (all its threads) so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def timed_push(scp, src: Path, port: int, ae: str, nbytes: int) -> tuple[float, float]:
    """storescu wall seconds and the SCP's CPU seconds for one push."""
    cpu0 = cpu_s(scp.proc.pid)
    wall = push(src, port, ae)
    return wall, cpu_s(scp.proc.pid) - cpu0


def big_inputs(work: Path, size: str) -> tuple[Path, Path]:
    """gen_big.py's series at `size` and a folder holding only its level 0 (a hard link)."""
    folder = work / f"big-{size}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        w, h = size.split("x")
        subprocess.run([sys.executable, str(REPO / "bench" / "gen_big.py"), str(folder), "--width", w, "--height", h], check=True)
        (folder / ".complete").write_text("ok")
    one = work / f"big-{size}-level-0"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir()
    level0 = max(dcm_files(folder), key=lambda p: p.stat().st_size)
    os.link(level0, one / level0.name)
    return folder, one


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


def peaks(scp, hwm_kb: int) -> dict:
    return {"rss_main": scp.poller.main_kb / 1024, "rss_tree": scp.poller.tree_kb / 1024, "hwm_main": hwm_kb / 1024}


def run_node(src: Path, uid: str, nbytes: int, n_files: int, wait_publish: bool, timeout: float,
             warm: tuple[Path, str] | None = None) -> dict:
    # Versions with the DICOMweb STOW-RS receiver listen on HTTP too (default 0.0.0.0:8080): keep it
    # on, as deployed, but on 127.0.0.1 and a free port (older versions ignore these variables).
    env = dict(os.environ, WSI_NODE_HTTP_BIND="127.0.0.1", WSI_NODE_HTTP_PORT=str(free_port()))
    with scratch("bench-node-") as (data, log):
        port = free_port()
        prime_page_cache(nbytes)
        with node_process(data, log, port, "--quiet-period", "60", env=env) as scp:
            scp.poller.start()
            wall, cpu = timed_push(scp, src, port, NODE_AE, nbytes)
            done = time.monotonic()
            check_stored(data, n_files, log)
            publish = conversion = warm_publish = warm_conversion = None
            if wait_publish:
                publish, conversion = wait_published(data, uid, done, timeout, scp.proc, log)
                if warm is not None:  # a second slide to the same node: its worker process is running by now
                    push(warm[0], port, NODE_AE)
                    warm_publish, warm_conversion = wait_published(data, warm[1], time.monotonic(), timeout, scp.proc, log)
            hwm = scp.hwm_kb()
        return {"wall": wall, "mbps": nbytes / 1e6 / wall, "cpu": cpu, **peaks(scp, hwm), "publish": publish, "conversion": conversion,
                "warm_publish": warm_publish, "warm_conversion": warm_conversion}


def run_storescp(src: Path, nbytes: int, n_files: int, extra: list[str]) -> dict:
    with scratch("bench-storescp-") as (out, log):
        port = free_port()
        cmd = [STORESCP, "+xa", *extra, "-od", str(out), str(port)]
        prime_page_cache(nbytes)
        with scp_process(cmd, log, lambda: listening(port), "storescp start", timeout=30, stdout_to_log=True) as scp:
            scp.poller.start()
            wall, cpu = timed_push(scp, src, port, "STORESCP", nbytes)
            stored = [p for p in out.iterdir() if p.is_file()]
            if len(stored) != n_files:
                raise RuntimeError(f"storescp stored {len(stored)} of {n_files} files: {log.read_text()[-2000:]}")
            hwm = scp.hwm_kb()
        return {"wall": wall, "mbps": nbytes / 1e6 / wall, "cpu": cpu, **peaks(scp, hwm), "publish": None, "conversion": None}


# --- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big", default="92000x69000", help="gen_big.py series WxH, pushed as its level 0 alone and whole ('' to skip)")
    ap.add_argument("--series", default="", help="testkit JPEG series WxH, e.g. 24000x18000 (issue 4; '' to skip)")
    ap.add_argument("--large", default="", help="testkit native RGB single instance WxH, e.g. 20000x18000 (issue 4; '' to skip)")
    ap.add_argument("--large-wait", choices=("publish", "receive"), default="receive",
                    help="only measure the large instance's receive, or also wait for its publication: a lone "
                         "level 0 does not look complete, so the node waits its 60 s quiet period first")
    ap.add_argument("--warm", default="8000x6000",
                    help="JPEG series pushed to the same node after the timed series, to measure publish latency "
                         "with the conversion worker already running ('' to skip)")
    ap.add_argument("--keep-large", action="store_true", help="keep the generated large instance and big series in --work")
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    print(page_reporting_state(), flush=True)
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
    removed: list[Path] = []
    if args.big:
        big_folder, one = big_inputs(work, args.big)
        removed.append(one)
        if not args.keep_large:
            removed.append(big_folder)
        inputs[f"1 instance (gen_big {args.big} level 0)"] = (one, False)
        inputs[f"series of {len(dcm_files(big_folder))} instances (gen_big {args.big})"] = (big_folder, False)
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
                    print(f"rep {rep + 1} {name} {scp}: {r['wall']:.2f} s, {r['mbps']:.0f} MB/s, CPU {r['cpu']:.2f} s, RSS {r['rss_main']:.0f} MB "
                          f"(tree {r['rss_tree']:.0f} MB, HWM {r['hwm_main']:.0f} MB){extra}", file=sys.stderr)
    finally:
        if large_folder is not None and not args.keep_large:
            shutil.rmtree(large_folder, ignore_errors=True)
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
    total = time.monotonic() - t_start
    (work / "results-node.json").write_text(json.dumps({"meta": meta, "runs": runs, "seconds": total}, indent=1))

    rows = []
    for name, by_scp in runs.items():
        for scp, rs in by_scp.items():
            lat = [r["publish"] - r["conversion"] for r in rs if r["publish"] is not None]
            rows.append([*receive_cells(name, meta[name], scp, rs), fmt(med(rs, "cpu")), fmt(med(rs, "publish")), fmt(med(rs, "conversion")),
                         fmt(statistics.median(lat) if lat else None)])
    print(markdown_table(["input", "MB", "files", "SCP", "storescu wall s (median)", "MB/s (median)", "peak RSS MB, SCP process (max)",
                          "peak RSS MB, process tree (max)", "VmHWM MB (max)", "SCP CPU s (median)", "publish latency s (median)", "conversion s (median)",
                          "latency - conversion s (median)"], rows))
    print()
    for name, by_scp in runs.items():
        target = next((t for kind, t in TARGETS.items() if name.startswith(kind)), None)
        for scp in STORESCP_VARIANTS:
            mark = f" (target >= {1.0 if target == 'storescp' else 0.8})" if scp == target else ""
            print(ratio_line(f"{name}: wsi-node / {scp} throughput{mark}", by_scp["wsi-node"], by_scp[scp]))
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
