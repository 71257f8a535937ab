"""Scale-out benchmark (issue 13): the same 12 generated slides through the local executor and through Dask.

Three set-ups, side by side in one run, each with the pipeline's own call (MemoryBudget(convert_series),
instances, target, options) and its own serving folder:
- local: the default executor (one forkserver process per conversion), --max-concurrent 2;
- dask-1: one Dask worker process (--nthreads 1), at most 1 conversion at once;
- dask-2: two Dask worker processes, at most 2 at once.
The scheduler and the workers are separate processes on 127.0.0.1, started here (as in the tests).

Two phases per set-up:
1. one slide at a time: latency (submit to result on the node) minus the conversion's own time
   (report timings.total) is the executor's overhead per conversion: process start for local;
   pickling, scheduling, result transfer and the node's check and publish (staging) for Dask;
2. all 12 at once: total wall time, mean and max latency per slide.
Peak RSS: of this process (the node's side), of the local conversion processes, of each Dask worker.

    .venv/bin/python bench/bench_dask.py [--width 2048 --height 1536] [--out /tmp/bench-dask]

Prints a Markdown table (docs/benchmarks.md, "Scale-out (issue 13)").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import RssPoller, free_port  # noqa: E402
from config.settings import ConversionOptions  # noqa: E402
from converter.conversion.convert import convert_series  # noqa: E402
from converter.executors.local import MemoryBudget, conversion_budget, make_executor  # noqa: E402
from converter.source.discover import discover  # noqa: E402
from converter.testkit import SlideSpec, write_series  # noqa: E402

PYTHON = sys.executable


def slides(root: Path, width: int, height: int) -> list[tuple[str, list]]:
    """12 series: even ones converted by copy, odd ones re-encoded: (mode, instances)."""
    out = []
    for i in range(12):
        folder = root / f"slide{i:02d}"
        if not folder.exists():
            write_series(SlideSpec(width=width, height=height, seed=1400 + i, downsamples=(1, 4)), folder, workers=1)
        instances = next(iter(discover([folder]).series.values()))
        out.append(("copy" if i % 2 == 0 else "reencode", instances))
    return out


def submit(executor, instances, target: Path, options: ConversionOptions):
    biggest = max(instances, key=lambda i: i.tile_width * i.tile_height)
    budget = conversion_budget(biggest.tile_width, biggest.tile_height, biggest.samples_per_pixel, options.threads,
                               cap_bytes=4096 << 20)
    return executor.submit(MemoryBudget(convert_series, budget), instances, target, options, [])


def run(executor, work: list, serving: Path, threads: int) -> dict:
    serving.mkdir(parents=True, exist_ok=True)
    overhead: dict[str, list[float]] = {"copy": [], "reencode": []}
    conv: dict[str, list[float]] = {"copy": [], "reencode": []}
    for i, (mode, instances) in enumerate(work):  # phase 1: one at a time
        options = ConversionOptions(mode=mode, threads=threads)
        t0 = time.monotonic()
        report = submit(executor, instances, serving / f"seq{i:02d}.tiff", options).result(timeout=600)
        latency = time.monotonic() - t0
        assert report.ok, report.error
        overhead[mode].append(latency - report.timings["total"])
        conv[mode].append(report.timings["total"])
    t0 = time.monotonic()
    starts, futures = {}, []
    for i, (mode, instances) in enumerate(work):  # phase 2: a burst of 12
        f = submit(executor, instances, serving / f"burst{i:02d}.tiff", ConversionOptions(mode=mode, threads=threads))
        starts[f] = time.monotonic()
        ends = {}
        f.add_done_callback(lambda fut, ends=ends: ends.setdefault("t", time.monotonic()))
        futures.append((f, ends))
    wait([f for f, _ in futures], timeout=1200)
    total = time.monotonic() - t0
    latencies = [ends["t"] - starts[f] for f, ends in futures]
    assert all(f.result().ok for f, _ in futures)
    return {"total": total, "lat_mean": statistics.mean(latencies), "lat_max": max(latencies),
            "copy_s": statistics.mean(conv["copy"]), "reencode_s": statistics.mean(conv["reencode"]),
            "ovh_copy": statistics.median(overhead["copy"]), "ovh_reencode": statistics.median(overhead["reencode"])}


class Dask:
    """A scheduler and `n` worker processes (each under its nanny), killed on close."""

    def __init__(self, n: int, logs: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs = [subprocess.Popen([PYTHON, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                        str(self.port), "--no-dashboard"], env=env, stdout=open(logs / "scheduler.log", "wb"),
                                       stderr=subprocess.STDOUT, start_new_session=True)]
        for i in range(n):
            self.procs.append(subprocess.Popen(
                [PYTHON, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"], env=env,
                stdout=open(logs / f"w{i}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1536)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-dask"))
    args = ap.parse_args()
    out: Path = args.out
    shutil.rmtree(out / "serving", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    work = slides(out / "slides", args.width, args.height)
    rows = []
    me = RssPoller(os.getpid())  # a fresh poller per set-up: peaks are per set-up
    me.start()
    executor = make_executor(2)
    r = run(executor, work, out / "serving" / "local", threads=max(1, (os.cpu_count() or 2) // 2))
    executor.shutdown(wait=True)
    me.halt.set()
    rows.append(("local (2 processes)", r, me.main_kb, f"{me.tree_kb} (node + its conversion processes, summed)"))

    from converter.executors.dask_start import make_dask_executor

    for n in (1, 2):
        cluster = Dask(n, out)
        me = RssPoller(os.getpid())
        me.start()
        try:
            (out / "serving" / f"dask{n}").mkdir(parents=True, exist_ok=True)
            executor = make_dask_executor(n, readable=[out / "slides"], writable=[out / "serving"], address=cluster.address,
                                          serving=out / "serving" / f"dask{n}")
            executor.client.wait_for_workers(n, timeout=120)
            pollers = [RssPoller(pid) for pid in executor.client.run(os.getpid).values()]
            for p in pollers:
                p.start()
            r = run(executor, work, out / "serving" / f"dask{n}", threads=max(1, (os.cpu_count() or 2) // n))
            executor.shutdown(wait=True)
            rows.append((f"dask, {n} worker(s)", r, me.main_kb, ", ".join(str(p.main_kb) for p in pollers)))
        finally:
            me.halt.set()
            cluster.close()

    print(f"12 slides {args.width}x{args.height} (6 copy, 6 re-encode), 2-core machine, {time.strftime('%Y-%m-%d')}\n")
    print("| executor | 12 at once: total s | latency mean / max s | copy: conversion s, overhead s | "
          "re-encode: conversion s, overhead s (% of it) | peak RSS node kB | peak RSS workers kB |")
    print("|---|---|---|---|---|---|---|")
    for name, r, node_kb, workers_kb in rows:
        pct = 100 * r["ovh_reencode"] / r["reencode_s"] if r["reencode_s"] else 0
        print(f"| {name} | {r['total']:.1f} | {r['lat_mean']:.1f} / {r['lat_max']:.1f} | {r['copy_s']:.2f}, {r['ovh_copy']:.2f} | "
              f"{r['reencode_s']:.2f}, {r['ovh_reencode']:.2f} ({pct:.0f} %) | {node_kb} | {workers_kb} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
