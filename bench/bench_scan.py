"""Inbox scan benchmark: a no-op pass over 5,000 files, and idle CPU of watch mode.

Usage:
    python bench/bench_scan.py [--series 400] [--parts 10] [--passthrough 200] [--idle-seconds 60]

Builds (and caches in bench/out/scan-inbox) an inbox of a few hundred small
series split into many instances (concatenations) plus passthrough files,
about 5,000 files in all. Then:
1. a first pass classifies everything (headers read and cached in SQLite);
2. "no-op pass": run_pass() again while every series is already queued
   (nothing new to do), timed 7 times, median reported;
3. "walk only": the filesystem walk + stat alone, for comparison;
4. idle CPU: `batch-converter --watch` (default 10 s interval) on an empty
   inbox for --idle-seconds, CPU time of the process tree from /proc.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.settings import BatchSettings, ConversionOptions  # noqa: E402
from converter.conversion.convert import convert_series  # noqa: E402
from converter.source.discover import discover  # noqa: E402
from converter.inbox.pipeline import InboxPipeline  # noqa: E402
from converter.inbox.scan import walk_inbox  # noqa: E402
from converter.testkit import SlideSpec, write_series  # noqa: E402


class NeverExecutor:
    """Accepts work and never finishes it: every later pass sees the series as in flight."""

    def submit(self, fn, *args, **kwargs) -> Future:
        return Future()


def build_inbox(inbox: Path, n_series: int, parts: int, n_passthrough: int) -> None:
    done = inbox / ".complete"
    if done.exists():
        return
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir(parents=True)
    t = time.monotonic()
    for i in range(n_series):
        write_series(SlideSpec(width=3072, height=256, tile_size=256, downsamples=(1,), concatenation_parts=parts,
                               icc_profile=False, seed=1000 + i), inbox / f"case-{i:04d}", workers=1)
    src = inbox.parent / ".svs-src"
    write_series(SlideSpec(width=600, height=400, seed=7), src)
    (uid, instances), = discover([src]).series.items()
    svs = inbox.parent / "template.svs"
    convert_series(instances, svs, ConversionOptions(layout="svs"))
    for i in range(n_passthrough):
        shutil.copy(svs, inbox / f"scan-{i:04d}.svs")
    old = time.time() - 3600
    for p in inbox.rglob("*"):
        os.utime(p, (old, old))
    done.write_text("ok")
    print(f"built inbox in {time.monotonic() - t:.0f} s", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and all its descendants, from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=400)
    ap.add_argument("--parts", type=int, default=12)
    ap.add_argument("--passthrough", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    a = ap.parse_args()
    work = Path(a.work)
    inbox = work / "scan-inbox"
    build_inbox(inbox, a.series, a.parts, a.passthrough)
    n_files = sum(1 for _ in walk_inbox(inbox))

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        t = Path(tmp)
        settings = BatchSettings(inbox=inbox, serving=t / "serving", archive=t / "archive", quarantine=t / "q",
                                 state_dir=t / "state", settle_seconds=5)
        for d in (settings.serving, settings.archive, settings.quarantine):
            d.mkdir()
        pipeline = InboxPipeline(settings, NeverExecutor())
        t0 = time.monotonic()
        first = pipeline.run_pass()
        first_s = time.monotonic() - t0
        noop = []
        for _ in range(7):
            t0 = time.monotonic()
            s = pipeline.run_pass()
            noop.append(time.monotonic() - t0)
            assert s.submitted == 0
        walk = []
        for _ in range(7):
            t0 = time.monotonic()
            sum(1 for _ in walk_inbox(inbox))
            walk.append(time.monotonic() - t0)

        empty = t / "empty-inbox"
        empty.mkdir()
        exe = str(Path(sys.executable).parent / "batch-converter")
        proc = subprocess.Popen([exe, "--watch", "-i", str(empty), "-s", str(t / "serving"), "-a", str(t / "archive"),
                                 "--quarantine", str(t / "q"), "--state-dir", str(t / "state2")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)  # start-up is not idle time
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(a.idle_seconds)
        c1, w1 = cpu_seconds(proc.pid), time.monotonic()
        proc.terminate()
        proc.wait(30)
    idle_pct = 100 * (c1 - c0) / (w1 - w0)
    print(f"inbox: {n_files} files, {a.series} series x ({a.parts} concatenation parts), {a.passthrough} passthrough files")
    print(f"first pass (read and cache every header, queue everything): {first_s:.2f} s, {first.submitted} jobs")
    print(f"no-op pass (everything known and queued), median of 7: {statistics.median(noop):.3f} s (min {min(noop):.3f}, max {max(noop):.3f})")
    print(f"filesystem walk + stat alone, median of 7: {statistics.median(walk):.3f} s")
    print(f"idle watch mode (empty inbox, 10 s interval) over {w1 - w0:.0f} s: {c1 - c0:.2f} CPU s = {idle_pct:.2f} % of one core (clock tick 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
