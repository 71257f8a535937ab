"""Copy mode against `cp` at real slide sizes (issue 14, target 1), in one command.

Usage:
    python bench/bench_copy.py [--sizes 24k,60k,150k] [--reps 3] [--work /tmp/bench-copy] [--keep-inputs]

For each size (width; height = 0.8 x width) a series is written with bench/gen_big.py (one
instance per level, Extended Offset Table, real JPEG frames), then `--reps` interleaved pairs run:
  A = `wsi-node convert SRC -o X.tiff --mode copy -c 1` (its own fsync + rename at the end)
  B = `cp -r SRC DEST && sync`
each timed as a whole process with /usr/bin/time (wall time, peak RSS), in alternating order
(A B, B A, ...); before each run the input is read once (warm page cache for both) and `sync`
flushes the previous run's dirty pages. The first A output is checked with gen_big.check_copy
(BigTIFF, OpenSlide and large_image at every level, level-0 tiles byte-identical to the frames).
Also one in-process conversion per size (discover + convert_series in one Python process, its
ru_maxrss): the memory a conversion needs without the CLI's parent/worker split. Prints a
Markdown table of medians and the median of the per-pair ratios A/B, and one of A's fixed costs
(outside the conversion: start-up, imports, discovery, process split, exit; the conversion's own
plan, verify, colour check, fsync wait), then deletes outputs (and inputs, unless --keep-inputs).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _common import page_reporting_state, prime_page_cache  # noqa: E402
from gen_big import big_spec, check_copy, write_big_series  # noqa: E402

WSI_NODE = str(Path(sys.executable).with_name("wsi-node"))
TIME = "/usr/bin/time"

_INPROC = """
import json, resource, sys, time
t = time.monotonic()
from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
t_imports = time.monotonic()
found = discover([sys.argv[1]])
t_discover = time.monotonic()
(instances,) = found.series.values()
report = convert_series(instances, sys.argv[2], ConversionOptions(mode="copy", threads=1))
assert report.ok, report.error
# VmHWM, not ru_maxrss: Linux carries a process's ru_maxrss over exec from the process it was forked
# (or vforked) from, so ru_maxrss here reported the bench's own peak (206 MB after check_copy) instead.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"wall": time.monotonic() - t, "maxrss_kb": hwm, "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "timings": report.timings, "steps": {"imports": t_imports - t, "discover": t_discover - t_imports}}))
"""


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def warm(src: Path) -> None:
    """Read the input once, so that both commands start with it in the page cache.

    Without it, whichever command ran first read an input the machine had partly evicted (a
    shared machine) and the second found it cached: that favoured B, which always ran second.
    """
    for path in sorted(src.glob("*.dcm")):
        with open(path, "rb", buffering=0) as fp:
            while fp.read(8 << 20):
                pass


def timed(cmd: list[str], src: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) of one command, via GNU time (input warm, dirty pages flushed)."""
    warm(src)
    # Freshly freed page cache for the output (bench/_common.prime_page_cache: first-touch guest memory
    # on this VM costs up to 10x and would otherwise decide the ratio by which command ran first).
    prime_page_cache(sum(p.stat().st_size for p in src.glob("*.dcm")), src.parent)
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()  # not GNU time's %e: 10 ms steps, and a reflinked cp (XFS) takes less
    out = subprocess.run([TIME, "-f", "%e %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    _, rss = out.stderr.strip().splitlines()[-1].split()
    return wall, int(rss)


def frames_of(src: Path) -> int:
    from converter.source.instance import read_instance

    return read_instance(src / "level-0.dcm").number_of_frames


def run_size(width: int, reps: int, work: Path, keep: bool) -> dict[str, object]:
    height = width * 4 // 5
    src = work / f"src-{width}"
    if not (src / ".complete").exists():
        shutil.rmtree(src, ignore_errors=True)
        t = time.monotonic()
        write_big_series(big_spec(width, height), src)
        (src / ".complete").write_text("ok")
        print(f"generated {width}x{height} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    gb = sum(p.stat().st_size for p in src.glob("*.dcm")) / 1e9
    frames = frames_of(src)
    out_dir, dest = work / f"out-{width}", work / f"cp-{width}"
    a_runs, b_runs = [], []
    try:
        for rep in range(reps):
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.rmtree(dest, ignore_errors=True)

            def run_a():
                result = timed([WSI_NODE, "convert", str(src), "-o", str(out_dir / "x.tiff"), "--mode", "copy", "-c", "1"], src)
                timings = json.loads((out_dir / "x.json").read_text())["timings"]
                if rep == 0:
                    check_copy(src, out_dir / "x.tiff", samples=256)
                shutil.rmtree(out_dir, ignore_errors=True)
                return result, timings

            def run_b():
                result = timed(["sh", "-c", f"cp -r '{src}' '{dest}' && sync"], src)
                shutil.rmtree(dest, ignore_errors=True)
                return result

            if rep % 2 == 0:  # alternate the order: A B, B A, A B ...
                a, timings = run_a()
                b = run_b()
            else:
                b = run_b()
                a, timings = run_a()
            a_runs.append((*a, timings))
            b_runs.append(b)
            print(f"  {width}: rep {rep + 1}: copy {a[0]:.3f} s ({a[1] // 1024} MB), cp+sync {b[0]:.3f} s; {timings}", file=sys.stderr)
        shutil.rmtree(out_dir, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        inproc = subprocess.run([sys.executable, "-c", _INPROC, str(src), str(out_dir / "x.tiff")], capture_output=True,
                                text=True, cwd=REPO)
        if inproc.returncode != 0:
            raise SystemExit(f"in-process conversion failed:\n{inproc.stderr[-3000:]}")
        one = json.loads(inproc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        if not keep:
            shutil.rmtree(src, ignore_errors=True)
    return {
        "size": f"{width:,} × {height:,}", "gb": gb, "frames": frames,
        "a": statistics.median(r[0] for r in a_runs), "b": statistics.median(r[0] for r in b_runs),
        "ratio": statistics.median(a[0] / b[0] for a, b in zip(a_runs, b_runs)),
        "ratios": [a[0] / b[0] for a, b in zip(a_runs, b_runs)],
        "rss_cli": max(r[1] for r in a_runs) / 1024, "rss_inproc": one["maxrss_kb"] / 1024,
        "splice": statistics.median(r[2].get("splice", 0.0) for r in a_runs),
        "check": statistics.median(r[2].get("copy_check", 0.0) for r in a_runs),
        # Fixed costs: what the command spends outside convert_series (start-up, imports, discovery,
        # the process split, exit), and the conversion's own steps around the copy.
        "outside": statistics.median(r[0] - r[2].get("total", 0.0) for r in a_runs),
        "steps": {k: statistics.median(r[2].get(k, 0.0) for r in a_runs)
                  for k in ("plan", "write", "verify", "colour_check", "fsync_rename")},
        "inproc_steps": one.get("steps", {}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="24k,60k,150k", help="widths, comma-separated (24k = 24,000 px)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/bench-copy")
    ap.add_argument("--keep-inputs", action="store_true")
    args = ap.parse_args()
    print(page_reporting_state(), flush=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        rows.append(run_size(parse_size(size), args.reps, work, args.keep_inputs))
    print(f"\n{args.reps} interleaved pairs per size; medians. A = `wsi-node convert SRC -o X.tiff --mode copy -c 1`, "
          "B = `cp -r SRC DEST && sync`.\n")
    print("| slide | input GB | level-0 frames | copy wall s | cp + sync wall s | copy / cp (median of pairs) | pairs |"
          " splice s | frame checks s | CLI peak RSS MB | in-process peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pairs = ", ".join(f"{x:.2f}" for x in r["ratios"])
        print(f"| {r['size']} | {r['gb']:.2f} | {r['frames']:,} | {r['a']:.2f} | {r['b']:.2f} | {r['ratio']:.2f}× | {pairs} |"
              f" {r['splice']:.2f} | {r['check']:.2f} | {r['rss_cli']:.0f} | {r['rss_inproc']:.0f} |")
    print("\nFixed costs of A (medians, s): outside the conversion = wall - its timings.total (start-up, imports,"
          " discovery, process split, exit); then the conversion's own steps (sidecar timings; verify and colour"
          " check run beside the background fsync, fsync_rename is the wait for it). In-process: imports and discovery.\n")
    print("| slide | outside conversion | plan | write (structure + copy) | verify | colour check | fsync wait | in-process imports | in-process discover |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        st, ip = r["steps"], r["inproc_steps"]
        print(f"| {r['size']} | {r['outside']:.2f} | {st['plan']:.2f} | {st['write']:.2f} | {st['verify']:.2f} |"
              f" {st['colour_check']:.2f} | {st['fsync_rename']:.2f} | {ip.get('imports', 0.0):.2f} | {ip.get('discover', 0.0):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
