"""Cold open of a published slide in large_image: wsi-node's TIFF against its SVS layout.

Usage:
    python bench/bench_open.py [--sizes 24000,60000,150000] [--reps 30] [--work /tmp/bench-open]
                               [--variants generic,svs] [--keep]

Issue 14, target 6: "first `large_image.open` of that file in a process that has already opened
another slide, plus the first tile of the lowest level: <= 35 ms, and <= the same measure on an
SVS of the same slide written by wsi-node's svs layout".

Inputs: bench/gen_big.py series (real JPEG frames, height 0.8 x width), converted with
`wsi-node convert --mode auto` into --layout generic and --layout svs (and any extra variant
files given with --extra NAME=PATH, e.g. a tifffile rewrite to compare a layout change). One more
slide (a 4000 px wide conversion) is the "another slide" every measuring process opens first, so
that large_image's import and source-plugin discovery (~60 ms, once per process) are paid before
the clock starts.

Each repetition starts a fresh Python process per (size, variant), in an order that rotates, which:
imports large_image, opens the other slide and reads one tile of it, then times
`large_image.open(target)` and `getTile(0, 0, 0)` (z = 0 is the lowest resolution level) with
perf_counter. The files stay in the page cache (they were just written or read), so this is
large_image's own work: TIFF directory parsing, tag reads, source selection, the first decode.
Prints a Markdown table of medians (and the open/tile split) and the ratio generic / svs per size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table  # noqa: E402
from gen_big import big_spec, write_big_series  # noqa: E402

WSI_NODE = str(Path(sys.executable).parent / "wsi-node")

PROBE = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import large_image
other, target = sys.argv[1], sys.argv[2]
s = large_image.open(other)
s.getTile(0, 0, 0)
t0 = time.perf_counter()
src = large_image.open(target)
t1 = time.perf_counter()
tile = src.getTile(0, 0, 0)
t2 = time.perf_counter()
assert tile, "empty tile"
print(json.dumps({"open": (t1 - t0) * 1e3, "tile": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3,
                  "source": type(src).__name__, "levels": src.levels}))
"""


def convert(src: Path, target: Path, layout: str) -> Path:
    """`wsi-node convert` of `src` to `target` (named .svs for the svs layout, as Aperio files are)."""
    if not target.exists():
        tiff = target.with_suffix(".tiff")  # the CLI takes -o as a file name only when it ends .tif/.tiff
        out = subprocess.run([WSI_NODE, "convert", "--mode", "auto", "--layout", layout, "-o", str(tiff), str(src)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"wsi-node convert --layout {layout} failed: {out.stderr[-2000:]}")
        tiff.rename(target)
    return target


def slide(work: Path, width: int) -> Path:
    folder = work / f"input-{width}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_big_series(big_spec(width, int(width * 0.8)), folder)
        (folder / ".complete").write_text("ok")
    return folder


def probe(other: Path, target: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(other), str(target)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"probe of {target} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="24000,60000,150000")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--variants", default="generic,svs", help="wsi-node layouts to convert to")
    ap.add_argument("--extra", action="append", default=[], metavar="SIZE:NAME=PATH",
                    help="another file to measure beside the layouts of SIZE (e.g. 24000:rewrite=/tmp/x.tiff)")
    ap.add_argument("--work", default="/tmp/bench-open")
    ap.add_argument("--keep", action="store_true", help="keep inputs and outputs")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    layouts = [v for v in args.variants.split(",") if v]
    other = convert(slide(work, 4000), work / "other-4000.tiff", "generic")
    files: dict[tuple[int, str], Path] = {}
    for w in sizes:
        src = slide(work, w)
        for layout in layouts:
            files[(w, layout)] = convert(src, work / f"slide-{w}-{layout}.{'svs' if layout == 'svs' else 'tif'}", layout)
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
    for spec in args.extra:
        size, rest = spec.split(":", 1)
        name, path = rest.split("=", 1)
        files[(int(size), name)] = Path(path)
    keys = list(files)
    sizes_mb = {k: p.stat().st_size / 1e6 for k, p in files.items()}
    runs: dict[tuple[int, str], list[dict]] = {k: [] for k in keys}
    t_start = time.monotonic()
    try:
        for rep in range(args.reps):
            for k in keys[rep % len(keys):] + keys[:rep % len(keys)]:  # interleaved; who goes first rotates
                runs[k].append(probe(other, files[k]))
    finally:
        if not args.keep:
            for k, p in files.items():
                if k[1] in layouts:
                    p.unlink(missing_ok=True)
                    p.with_suffix(".json").unlink(missing_ok=True)
    total = time.monotonic() - t_start
    rows = []
    for (w, name), rs in runs.items():
        pct = sorted(r["total"] for r in rs)
        rows.append([f"{w}", name, rs[0]["source"], str(rs[0]["levels"]), f"{sizes_mb[(w, name)]:.0f}",
                     f"{statistics.median(r['open'] for r in rs):.1f}",
                     f"{statistics.median(r['tile'] for r in rs):.1f}", f"{statistics.median(pct):.1f}",
                     f"{pct[len(pct) // 10]:.1f}-{pct[(len(pct) * 9) // 10]:.1f}"])
    print(markdown_table(["width", "file", "large_image source", "levels", "MB", "open ms", "first lowest-level tile ms",
                          "total ms (median; target <= 35)", "total ms p10-p90"], rows))
    print()
    for w in sizes:
        if (w, "generic") in runs and (w, "svs") in runs:
            a = statistics.median(r["total"] for r in runs[(w, "generic")])
            b = statistics.median(r["total"] for r in runs[(w, "svs")])
            print(f"- {w}: generic TIFF / SVS layout = {a / b:.2f} ({a:.1f} vs {b:.1f} ms)")
    print(f"\n({args.reps} repetitions, {total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
