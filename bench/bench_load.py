"""Load benchmark: 4 senders x N series at once (2 over DCMTK storescu, 2 over STOW-RS) into one node.

The same run as tests/faults/test_load.py (tests/faults/loadrun.py), at benchmark sizes: for each
slide size, the time until every series was pushed and published, and the node's peak RSS (alone,
and with its conversion workers). Prints a Markdown table for docs/benchmarks.md.

    .venv/bin/python bench/bench_load.py [--series 10] [--sizes 2048x1536,8192x6144] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.harness import NodeProcess  # noqa: E402
from tests.faults.loadrun import make_inputs, run_load  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=10, help="series per sender [10]")
    ap.add_argument("--sizes", default="2048x1536,4096x3072,8192x6144", help="slide sizes, WxH, comma-separated")
    ap.add_argument("--keep", type=Path, help="keep inputs and node data here (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-load-"))
    rows = []
    try:
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.lower().split("x"))
            plan = make_inputs(root / f"inputs-{w}x{h}", w, h, senders=4, per_sender=args.series)
            node = NodeProcess(root / f"node-{w}x{h}").start()
            try:
                r = run_load(node, plan, w, h, timeout=1800)
            finally:
                node.stop()
            rows.append(r)
            print(f"{w}x{h}: {r.as_dict()}", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print("| slide | series | MB pushed | all pushed (s) | all published (s) | peak RSS node (MB) | with workers (MB) | published | failures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.width}x{r.height} | {r.senders} x {r.series_per_sender} | {r.megabytes} | {r.push_seconds} | {r.publish_seconds} "
              f"| {r.peak_rss_node_mb} | {r.peak_rss_with_workers_mb} | {r.published} | {len(r.failures)} |")
    return 0 if all(not r.failures for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
