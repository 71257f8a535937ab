"""One load run: 4 senders x N series at once against a node process, mixed C-STORE and STOW-RS.

Shared by tests/faults/test_load.py (small slides, asserts every series is published exactly
once) and bench/bench_load.py (bigger slides, prints a table for docs/benchmarks.md). Senders
0 and 2 push with DCMTK storescu (one association per series), 1 and 3 with STOW-RS (one request
per series); the node's RSS (the node process alone, and with its conversion workers) is
sampled every 50 ms.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from converter.testkit import SlideSpec, series_uids, write_series
from tests.faults.audit import settled_audits, sop_uid
from tests.faults.harness import NodeProcess, multipart, proc_rss_kb, storescu, stow


@dataclass
class LoadResult:
    senders: int
    series_per_sender: int
    width: int
    height: int
    megabytes: float
    push_seconds: float
    publish_seconds: float
    peak_rss_node_mb: float
    peak_rss_with_workers_mb: float
    published: int
    failures: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def make_inputs(root: Path, width: int, height: int, senders: int, per_sender: int, seed: int = 7000) -> list[list[tuple]]:
    """For each sender, its series: (folder, files, study, series uid, sorted SOP UIDs)."""
    plan = []
    for k in range(senders):
        mine = []
        for i in range(per_sender):
            spec = SlideSpec(width=width, height=height, seed=seed + 100 * k + i, downsamples=(1, 4) if width <= 2048 else (1, 4, 16))
            folder = root / f"sender{k}" / f"series{i}"
            files = write_series(spec, folder, workers=1) if not folder.exists() else sorted(folder.glob("*.dcm"))
            study, uid = series_uids(spec)
            mine.append((folder, files, study, uid, sorted(sop_uid(f) for f in files)))
        plan.append(mine)
    return plan


def run_load(node: NodeProcess, plan: list[list[tuple]], width: int, height: int, timeout: float = 300) -> LoadResult:
    peak = {"node": 0, "all": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            own = proc_rss_kb(node.proc.pid)
            total = own + sum(proc_rss_kb(p) for p in node.descendants())
            peak["node"], peak["all"] = max(peak["node"], own), max(peak["all"], total)
            stop.wait(0.05)

    failures: list[str] = []

    def sender(k: int) -> None:
        for folder, files, study, uid, sops in plan[k]:
            if k % 2 == 0:
                r = storescu(node.port, folder, aet=f"LOAD{k}", timeout=timeout)
                if r.returncode != 0:
                    failures.append(f"sender {k} storescu exit {r.returncode}: {r.stderr[-300:]}")
            else:
                out = stow(node.stow_url, multipart([f.read_bytes() for f in files]), timeout=timeout)
                if out.http != 200 or out.referenced != len(files):
                    failures.append(f"sender {k} STOW-RS HTTP {out.http}: {out.text[:200]}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    pushed = time.monotonic() - t0
    published = 0
    for mine in plan:
        for folder, files, study, uid, sops in mine:
            try:
                node.wait_published(uid, sops, timeout=max(5.0, timeout - (time.monotonic() - t0)))
                published += 1
            except AssertionError as exc:
                failures.append(str(exc))
    done = time.monotonic() - t0
    audits = settled_audits(node, [(study, uid, sops) for mine in plan for folder, files, study, uid, sops in mine])
    stop.set()
    sampler.join(5)
    failures += [f"series {a.uid}: {a}" for a in audits if not a.ok]
    size = sum(f.stat().st_size for mine in plan for s in mine for f in s[1]) / 1e6
    return LoadResult(len(plan), len(plan[0]), width, height, round(size, 1), round(pushed, 2), round(done, 2),
                      round(peak["node"] / 1024, 1), round(peak["all"] / 1024, 1), published, failures)
