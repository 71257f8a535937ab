"""Conversion benchmark: wsi-node copy and reencode vs cp and large_image_converter, side by side.

Usage:
    python bench/bench_convert.py [--sizes 8000x6000,24000x18000] [--reps 3] [--work bench/out]

Generates synthetic JPEG Baseline DICOM slides (cached in --work), then, for each
repetition, runs every tool once on the same input, interleaved, so machine noise
hits all of them alike. Each run is timed with GNU time (wall seconds, peak RSS of
the process tree's largest process). Prints a Markdown table of medians and the
ratios, plus the colour error of each output against the generator's ground truth.
Needs: large-image-converter and large-image-source-dicom (pip), /usr/bin/time.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.testkit import SlideSpec, render_region, write_series  # noqa: E402

QUALITY = 85
TILE = 256


def spec_for(width: int, height: int) -> SlideSpec:
    return SlideSpec(width=width, height=height, tile_size=TILE, quality=90, icc_profile=False)


def prepare(work: Path, width: int, height: int) -> Path:
    folder = work / f"input-{width}x{height}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.monotonic()
        write_series(spec_for(width, height), folder)
        done.write_text("ok")
        print(f"generated {folder} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    return folder


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a command, via GNU time."""
    out = subprocess.run(["/usr/bin/time", "-f", "@@%e %M", *cmd], cwd=cwd, capture_output=True, text=True)
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("@@")][-1]
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    wall, rss_kb = line[2:].split()
    return float(wall), int(rss_kb) / 1024


def tools(src: Path, dest: Path) -> dict[str, list[str]]:
    wsi = str(Path(sys.executable).parent / "wsi-node")
    first = sorted(p for p in src.iterdir() if p.suffix == ".dcm")[0]
    return {
        "cp": ["cp", "-r", str(src), str(dest / "cp")],
        "wsi-node copy": [wsi, "convert", str(src), "-o", str(dest / "copy.tiff"), "--mode", "copy", "-c", "1"],
        "wsi-node reencode": [wsi, "convert", str(src), "-o", str(dest / "reencode.tiff"), "--mode", "reencode",
                              "-q", str(QUALITY), "-t", str(TILE), "-c", "1"],
        "large_image_converter": ["large_image_converter", str(first), str(dest / "lic.tiff"), "--compression", "jpeg",
                                  "--quality", str(QUALITY), "--tile", str(TILE), "--overwrite", "--silent"],
    }


def colour_error(path: Path, spec: SlideSpec) -> float:
    """Largest per-channel mean absolute difference vs ground truth in a tissue-rich central region, read by OpenSlide."""
    import openslide

    x, y, w, h = spec.width // 2 - 512, spec.height // 2 - 512, 1024, 1024
    with openslide.OpenSlide(str(path)) as slide:
        got = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB")).astype(np.int16)
    truth = render_region(spec, x, y, w, h).astype(np.int16)
    return float(np.abs(got - truth).reshape(-1, 3).mean(axis=0).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8000x6000,24000x18000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        src = prepare(work, width, height)
        input_mb = sum(p.stat().st_size for p in src.iterdir() if p.suffix == ".dcm") / 1e6
        runs: dict[str, list[tuple[float, float]]] = {}
        errors: dict[str, float] = {}
        for rep in range(args.reps):
            dest = work / f"run-{size}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for name, cmd in tools(src, dest).items():
                runs.setdefault(name, []).append(timed(cmd, work))
                if rep == 0 and name != "cp":
                    out = {"wsi-node copy": "copy.tiff", "wsi-node reencode": "reencode.tiff", "large_image_converter": "lic.tiff"}[name]
                    errors[name] = colour_error(dest / out, spec_for(width, height))
                    errors[name + " size MB"] = (dest / out).stat().st_size / 1e6
            print(f"{size} rep {rep + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in runs.items()), file=sys.stderr)
        med = {k: (statistics.median(w for w, _ in v), max(r for _, r in v)) for k, v in runs.items()}
        results[size] = {"input_mb": input_mb, "median": med, "runs": runs, "colour": errors}
    print(json.dumps(results, indent=1), file=open(work / "results.json", "w"))
    print("| slide | input MB | tool | median wall s | peak RSS MB | output MB | colour error (max channel MAD vs truth) |")
    print("|---|---|---|---|---|---|---|")
    for size, r in results.items():
        for name, (wall, rss) in r["median"].items():
            c = r["colour"].get(name)
            mb = r["colour"].get(name + " size MB")
            print(f"| {size} | {r['input_mb']:.0f} | {name} | {wall:.2f} | {rss:.0f} | {'' if mb is None else f'{mb:.0f}'} | {'' if c is None else f'{c:.2f}'} |")
    print()
    for size, r in results.items():
        m = r["median"]
        lic = m["large_image_converter"][0]
        print(f"- {size}: large_image_converter / wsi-node copy = {lic / m['wsi-node copy'][0]:.1f}x; "
              f"large_image_converter / wsi-node reencode = {lic / m['wsi-node reencode'][0]:.2f}x; "
              f"wsi-node copy / cp = {m['wsi-node copy'][0] / max(m['cp'][0], 0.01):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
