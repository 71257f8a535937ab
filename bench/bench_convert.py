"""Conversion benchmark: wsi-node copy and reencode vs cp, large_image_converter and the codec floor.

Usage:
    python bench/bench_convert.py [--sizes 8000x6000,24000x18000] [--reps 3] [--work bench/out]
                                  [--quality 85] [--tools cp,copy,reencode,lic,floor,floor+check] [--big]

Generates synthetic JPEG Baseline DICOM slides (cached in --work; --big: from a pool of
real tiles with bench/gen_big.py, seconds instead of minutes, for 60,000 px and more),
then, for each repetition, runs every tool once on the same input, interleaved, so
machine noise hits all of them alike. Each run is timed with GNU time (wall seconds,
peak RSS of the process tree's largest process). Prints a Markdown table of medians and
the ratios, plus the colour error of each output against the generator's ground truth
(rendered inputs only).

The codec floor (issue 14, target 2) is what re-encoding cannot beat with these
libraries: decode every source frame of every level the re-encode uses and encode as
many output tiles as it writes (RGB JPEG, 4:4:4, same quality and tile size), with
imagecodecs on `--threads` threads in large chunks, reading the frames with the node's
own frame index (file reads are part of it, as they are of a conversion). `floor+check`
adds the per-tile fidelity check (decode each encoded tile, mad_per_channel), so the
check's own cost is visible. Both run as their own process, like the tools, and report
their in-process time (no interpreter start-up).
Needs: large-image-converter and large-image-source-dicom (pip), /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.testkit import SlideSpec, render_region, write_series  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import page_reporting_state  # noqa: E402

QUALITY = 85
TILE = 256
THREADS = 2


def spec_for(width: int, height: int) -> SlideSpec:
    return SlideSpec(width=width, height=height, tile_size=TILE, quality=90, icc_profile=False)


def prepare(work: Path, width: int, height: int, big: bool = False) -> Path:
    folder = work / f"input-{width}x{height}{'-big' if big else ''}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.monotonic()
        if big:
            from gen_big import big_spec, write_big_series

            write_big_series(big_spec(width, height, TILE), folder)
        else:
            write_series(spec_for(width, height), folder)
        done.write_text("ok")
        print(f"generated {folder} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    return folder


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(cmd: list[str], cwd: Path, keep_stdout: bool = False):
    """Wall seconds and peak RSS (MB) of a command (and its stdout when asked).

    Wall time from GNU time. Peak RSS is the largest of GNU time's figure and the peak
    (VmHWM) of every process in the command's tree, polled: wsi-node converts in a process
    forked by a forkserver, which GNU time's rusage of its own child does not always count.
    """
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "@@%e %M", *cmd], cwd=cwd, stdout=out, stderr=err, text=True)
        peak = 0
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                pids = [c.pid for c in root.children(recursive=True)]
            except psutil.Error:
                pids = []
            for pid in pids:
                peak = max(peak, _hwm_kb(pid))
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {stderr[-2000:]}")
    line = [ln for ln in stderr.splitlines() if ln.startswith("@@")][-1]
    wall, rss_kb = line[2:].split()
    rss = max(int(rss_kb), peak) / 1024
    if keep_stdout:
        return float(wall), rss, stdout
    return float(wall), rss


def tools(src: Path, dest: Path, quality: int, threads: int) -> dict[str, list[str]]:
    wsi = str(Path(sys.executable).parent / "wsi-node")
    lic = shutil.which("large_image_converter", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") or "large_image_converter"
    first = sorted(p for p in src.iterdir() if p.suffix == ".dcm")[0]
    floor = [sys.executable, str(Path(__file__).resolve()), "--floor-of", str(src), "--quality", str(quality),
             "--threads", str(threads)]
    return {
        "cp": ["cp", "-r", str(src), str(dest / "cp")],
        "wsi-node copy": [wsi, "convert", str(src), "-o", str(dest / "copy.tiff"), "--mode", "copy", "-c", "1"],
        "wsi-node reencode": [wsi, "convert", str(src), "-o", str(dest / "reencode.tiff"), "--mode", "reencode",
                              "-q", str(quality), "-t", str(TILE), "-c", "1"],
        "large_image_converter": [lic, str(first), str(dest / "lic.tiff"), "--compression", "jpeg",
                                  "--quality", str(quality), "--tile", str(TILE), "--overwrite", "--silent"],
        "codec floor": floor,
        "codec floor + check": [*floor, "--check"],
    }


TOOL_KEYS = {"cp": "cp", "copy": "wsi-node copy", "reencode": "wsi-node reencode", "lic": "large_image_converter",
             "floor": "codec floor", "floor+check": "codec floor + check"}
OUTPUTS = {"wsi-node copy": "copy.tiff", "wsi-node reencode": "reencode.tiff", "large_image_converter": "lic.tiff"}


def codec_floor(src: Path, quality: int, threads: int, check: bool) -> tuple[float, int]:
    """Seconds to decode every frame the re-encode decodes and encode every tile it writes; tiles encoded."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import imagecodecs

    from converter.codecs.frames import mad_per_channel
    from converter.source.discover import discover
    from converter.source.level_reader import LevelReader
    from converter.source.series import build_series
    from converter.tiff.layout import SourceLevelFacts, plan_layout

    (_, instances), = discover([src]).series.items()
    series = build_series(instances)
    plan = plan_layout([SourceLevelFacts(lv.width, lv.height, lv.tile_width, lv.tile_height, "bench") for lv in series.levels],
                       "reencode", TILE)
    sample: list[np.ndarray] = []

    def out_tile(frame: np.ndarray) -> np.ndarray:
        if frame.shape[:2] == (TILE, TILE):
            return frame
        tile = np.full((TILE, TILE, frame.shape[2]), 255, np.uint8)
        h, w = min(TILE, frame.shape[0]), min(TILE, frame.shape[1])
        tile[:h, :w] = frame[:h, :w]
        return tile

    def work(datas: list[bytes], encodes: int) -> int:
        frames = [imagecodecs.jpeg8_decode(d) for d in datas]
        if not sample and frames:
            sample.extend(frames[:8])
        pool_frames = frames or sample
        for k in range(encodes):
            tile = out_tile(pool_frames[k % len(pool_frames)])
            data = imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="RGB", subsampling="444")
            if check:
                mad_per_channel(imagecodecs.jpeg8_decode(data), tile)
        return encodes

    chunk = 64
    tiles = 0
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for chain in plan.chains():
            reader = LevelReader(series.levels[chain[0].source])
            keys = sorted(reader.level.tile_index.frames, key=lambda cr: (cr[1], cr[0]))
            outs = [-(-lv.width // TILE) * -(-lv.height // TILE) for lv in chain]
            n_chunks = max(1, -(-len(keys) // chunk))
            for i in range(n_chunks):
                datas = [reader.frame_bytes(*cr) for cr in keys[i * chunk : (i + 1) * chunk]]
                share = sum((o * (i + 1)) // n_chunks - (o * i) // n_chunks for o in outs)
                pending.append(pool.submit(work, [d for d in datas if d is not None], share))
                while len(pending) > 2 * threads:
                    tiles += pending.popleft().result()
            reader.close()
        while pending:
            tiles += pending.popleft().result()
    return time.perf_counter() - t, tiles


def colour_error(path: Path, spec: SlideSpec) -> float:
    """Largest per-channel mean absolute difference vs ground truth in a tissue-rich central region, read by OpenSlide."""
    import openslide

    x, y, w, h = spec.width // 2 - 512, spec.height // 2 - 512, 1024, 1024
    with openslide.OpenSlide(str(path)) as slide:
        got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB")).astype(np.int16)
    truth = render_region(spec, x, y, w, h).astype(np.int16)
    return float(np.abs(got - truth).reshape(-1, 3).mean(axis=0).max())


def _report_pixels(dest: Path) -> float | None:
    """The 'pixels' time of the re-encode's own report (the sidecar JSON next to the output)."""
    for side in dest.glob("reencode*.json"):
        try:
            return json.loads(side.read_text()).get("timings", {}).get("pixels")
        except (OSError, ValueError):
            return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8000x6000,24000x18000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    ap.add_argument("--quality", type=int, default=QUALITY, help="JPEG quality of re-encoded tiles [85]; large_image is only right at >= 90")
    ap.add_argument("--threads", type=int, default=THREADS, help="threads of the codec floor (the node uses cpu_count // max_concurrent)")
    ap.add_argument("--tools", default=",".join(TOOL_KEYS), help=f"subset of {','.join(TOOL_KEYS)}")
    ap.add_argument("--big", action="store_true", help="inputs from bench/gen_big.py's tile pool (no colour error column)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs (default: --big inputs are deleted)")
    ap.add_argument("--floor-of", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_of:
        seconds, tiles = codec_floor(Path(args.floor_of), args.quality, args.threads, args.check)
        print(json.dumps({"floor_s": seconds, "tiles": tiles}))
        return 0
    print(page_reporting_state(), flush=True)
    wanted = [TOOL_KEYS[k.strip()] for k in args.tools.split(",") if k.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        src = prepare(work, width, height, args.big)
        input_mb = sum(p.stat().st_size for p in src.iterdir() if p.suffix == ".dcm") / 1e6
        runs: dict[str, list[tuple[float, float]]] = {}
        inner: dict[str, list[float]] = {}
        errors: dict[str, float] = {}
        for rep in range(args.reps):
            dest = work / f"run-{size}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for name, cmd in tools(src, dest, args.quality, args.threads).items():
                if name not in wanted:
                    continue
                if name.startswith("codec floor"):
                    wall, rss, out = timed(cmd, work, keep_stdout=True)
                    inner.setdefault(name, []).append(json.loads(out.strip().splitlines()[-1])["floor_s"])
                else:
                    wall, rss = timed(cmd, work)
                runs.setdefault(name, []).append((wall, rss))
                if name == "wsi-node reencode":
                    px = _report_pixels(dest)
                    if px is not None:
                        inner.setdefault(name, []).append(px)
                if rep == 0 and name in OUTPUTS:
                    if not args.big:
                        errors[name] = colour_error(dest / OUTPUTS[name], spec_for(width, height))
                    errors[name + " size MB"] = (dest / OUTPUTS[name]).stat().st_size / 1e6
            print(f"{size} rep {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in runs.items()), file=sys.stderr)
        shutil.rmtree(work / f"run-{size}", ignore_errors=True)
        if args.big and not args.keep:
            shutil.rmtree(src, ignore_errors=True)
        med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in runs.items()}
        inner_med = {k: statistics.median(v) for k, v in inner.items()}
        results[size] = {"input_mb": input_mb, "median": med, "inner": inner_med, "runs": runs, "inner_runs": inner, "colour": errors}
    print(json.dumps(results, indent=1), file=open(work / "results.json", "w"))
    print(f"Quality {args.quality}, tile {TILE}, {args.reps} interleaved repetitions, medians; "
          "'inner s' is the floor's in-process time and the re-encode report's 'pixels' time.\n")
    print("| slide | input MB | tool | median wall s | inner s | peak RSS MB | output MB | colour error (max channel MAD vs truth) |")
    print("|---|---|---|---|---|---|---|---|")
    for size, r in results.items():
        for name, (wall, rss) in r["median"].items():
            c = r["colour"].get(name)
            mb = r["colour"].get(name + " size MB")
            px = r["inner"].get(name)
            print(f"| {size} | {r['input_mb']:.0f} | {name} | {wall:.2f} | {'' if px is None else f'{px:.2f}'} | {rss:.0f} | "
                  f"{'' if mb is None else f'{mb:.0f}'} | {'' if c is None else f'{c:.2f}'} |")
    print()
    for size, r in results.items():
        m, inner_med = r["median"], r["inner"]
        parts = []
        if "wsi-node reencode" in m:
            re = m["wsi-node reencode"][0]
            for floor in ("codec floor", "codec floor + check"):
                if floor in inner_med:
                    parts.append(f"wsi-node reencode wall / {floor} = {re / inner_med[floor]:.2f}x"
                                 + (f" (its pixels stage: {inner_med['wsi-node reencode'] / inner_med[floor]:.2f}x)"
                                    if "wsi-node reencode" in inner_med else ""))
            if "large_image_converter" in m:
                parts.append(f"wsi-node reencode / large_image_converter = {re / m['large_image_converter'][0]:.2f}x")
        if "codec floor" in inner_med and "codec floor + check" in inner_med:
            parts.append(f"the fidelity check adds {inner_med['codec floor + check'] / inner_med['codec floor'] - 1:.0%} to the floor")
        if "wsi-node copy" in m and "cp" in m:
            parts.append(f"wsi-node copy / cp = {m['wsi-node copy'][0] / max(m['cp'][0], 0.01):.1f}x")
        print(f"- {size}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
