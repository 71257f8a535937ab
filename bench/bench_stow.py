"""DICOMweb STOW-RS benchmark: one STOW-RS request vs one C-STORE association, both to `wsi-node serve`.

Usage:
    python bench/bench_stow.py [--reps 3] [--big 92000x69000] [--series ''] [--large ''] [--work bench/out]
                               [--variants chunked,length,cstore] [--keep-large] [--no-publish]

Inputs (the same as bench_node.py; helpers shared with it in bench/_common.py):
1. "big" (issue 14 target 5; --big WxH, default 92000x69000): the level 0 of bench/gen_big.py's series
   (one JPEG instance with an extended offset table, 1.13 GB), generated into --work/big-WxH and
   removed at the end unless --keep-large;
2. optional, issue 5's inputs from converter/testkit: --series 24000x18000 (bench_convert.py's JPEG
   Baseline series, 8 instances, ~112 MB; cached in --work/input-24000x18000, published unless
   --no-publish) and --large 20000x18000 (one native RGB instance, level 0 only, 1.10 GB, removed at
   the end unless --keep-large).

Before anything is timed, each input is written once into a multipart/related body file
(`--work/stow-body-<input>.mpr`: every .dcm file as one `Content-Type: application/dicom` part, 32 hex
digit boundary like dicomweb-client's); the body files are always removed at the end.

Senders (each push goes to a freshly started node with an empty data folder):
- "STOW-RS chunked": curl streams the body file as ONE request with `Transfer-Encoding: chunked`:
  `curl -sS -X POST -T <body> -H 'Content-Type: multipart/related; type="application/dicom"; boundary=<b>'
   -H 'Transfer-Encoding: chunked' -H 'Expect:' -o <resp> -w '%{http_code}' http://127.0.0.1:<P>/dicom-web/studies`
  (`-T` reads the file as it sends, `--data-binary @file` would load it into curl's memory first;
  `Expect:` drops the 100-continue round trip);
- "STOW-RS Content-Length": the same request without the Transfer-Encoding header (curl then sends a
  Content-Length), for comparison;
- "C-STORE": `/usr/bin/storescu -R -xy +sd +sp '*.dcm' -aet BENCH -aec WSINODE 127.0.0.1 <port> <folder>`
  (one association; DCMTK 3.6.7).
The node: `wsi-node serve --bind 127.0.0.1 --port P --http-bind 127.0.0.1 --http-port H --data <tmp>
--quiet-period 600 --settle 2` ("ready" = its "wsi-node ready" log line). A push must store every
instance (STOW-RS: HTTP 200 and one ReferencedSOPSequence item per file; both: the number of .dcm files
in the inbox; STOW-RS: the node's log names the framing the variant used). Every repetition runs every sender once per input, interleaved (who goes first rotates);
before each push as many bytes as the input are written to a scratch file and deleted (bench/_common.py
prime_page_cache), then `sync`.
Measured:
- throughput: bytes of the .dcm files (MB = 10^6 bytes) / wall time of the sender process (curl until
  the HTTP response, storescu until its exit);
- peak RSS during the push: VmRSS of the node process and the sum over its process tree, polled every
  20 ms (bench/_common.py RssPoller), and the node's VmHWM read right after the push;
- CPU seconds of the node process tree (utime + stime from /proc) and of the sender during the push;
- series only (unless --no-publish): time from the end of the push until <SeriesInstanceUID>.tiff and
  .json are in <data>/serving, and the conversion time from that JSON. The large instance is a lone
  level 0 that waits the 600 s quiet period: its conversion is not waited for.
Prints a Markdown table of medians and the ratios (per repetition too), writes every run to
--work/results-stow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    NODE_AE, REPO, check_stored, dcm_files, descendants, fmt, page_reporting_state, free_port, large_spec, markdown_table, med, node_process, prepare,
    prime_page_cache, push, ratio_line, receive_cells, scratch, series_spec, series_uid, wait_published,
)
from bench_node import big_inputs  # noqa: E402

CURL = "/usr/bin/curl"
CLK = os.sysconf("SC_CLK_TCK")
VARIANTS = {
    "chunked": "STOW-RS chunked (curl -T)",
    "length": "STOW-RS Content-Length (curl -T)",
    "cstore": "C-STORE (storescu)",
}


# --- body files ---------------------------------------------------------------------------------
def build_body(files: list[Path], body: Path) -> tuple[str, float]:
    """Write the multipart/related body of `files` to `body`; returns the boundary and the seconds it took."""
    boundary = secrets.token_hex(16)
    t = time.monotonic()
    with open(body, "wb") as out:
        for f in files:
            out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            with open(f, "rb") as src:
                shutil.copyfileobj(src, out, 8 << 20)
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
    return boundary, time.monotonic() - t


# --- measurement helpers ------------------------------------------------------------------------
def tree_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total / CLK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def stow(body: Path, boundary: str, http_port: int, chunked: bool, resp: Path) -> float:
    """curl wall seconds for one STOW-RS request streamed from `body`; raises unless HTTP 200."""
    cmd = [CURL, "-sS", "-X", "POST", "-T", str(body),
           "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
           "-H", "Expect:", "-H", "Accept: application/dicom+json", "-o", str(resp), "-w", "%{http_code}",
           f"http://127.0.0.1:{http_port}/dicom-web/studies"]
    if chunked:
        cmd[-1:-1] = ["-H", "Transfer-Encoding: chunked"]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if out.returncode != 0 or out.stdout.strip() != "200":
        text = resp.read_text()[-2000:] if resp.exists() else ""
        raise RuntimeError(f"curl failed ({out.returncode}, HTTP {out.stdout.strip()}): {out.stderr[-2000:]} {text}")
    return wall


def run(variant: str, src: Path, body: Path, boundary: str, uid: str, nbytes: int, n_files: int, publish: bool) -> dict:
    with scratch("bench-stow-") as (data, log):
        resp = data.parent / f"{data.name}.json"
        port, http_port = free_port(), free_port()
        while http_port == port:
            http_port = free_port()
        prime_page_cache(nbytes)
        try:
            with node_process(data, log, port, "--http-bind", "127.0.0.1", "--http-port", str(http_port),
                              "--quiet-period", "600") as scp:
                pids = [scp.proc.pid, *descendants(scp.proc.pid)]
                cpu0, sender0 = tree_cpu(pids), children_cpu()
                scp.poller.start()
                if variant == "cstore":
                    wall = push(src, port, NODE_AE)
                else:
                    wall = stow(body, boundary, http_port, variant == "chunked", resp)
                done = time.monotonic()
                pids = [scp.proc.pid, *descendants(scp.proc.pid)]
                node_cpu, sender_cpu = tree_cpu(pids) - cpu0, children_cpu() - sender0
                hwm = scp.hwm_kb()
                rss_main, rss_tree = scp.poller.main_kb, scp.poller.tree_kb
                if variant != "cstore":
                    check_stow_response(log, resp, variant, n_files)
                check_stored(data, n_files, log)
                latency = conversion = None
                if publish:
                    latency, conversion = wait_published(data, uid, done, 300, scp.proc, log)
        finally:
            resp.unlink(missing_ok=True)
        return {"wall": wall, "mbps": nbytes / 1e6 / wall, "rss_main": rss_main / 1024, "rss_tree": rss_tree / 1024,
                "hwm_main": hwm / 1024, "node_cpu": node_cpu, "sender_cpu": sender_cpu,
                "publish": latency, "conversion": conversion}


def check_stow_response(log: Path, resp: Path, variant: str, n_files: int) -> None:
    """The node logged the framing the variant used, and its response lists every instance and no failure."""
    # the node's own log line says how the body came in ("...; <n> bytes, chunked)")
    want = "chunked" if variant == "chunked" else "Content-Length"
    if f"bytes, {want})" not in log.read_text():
        raise RuntimeError(f"the node did not log a {want} request: {log.read_text()[-2000:]}")
    answer = json.loads(resp.read_text())
    refs = answer.get("00081199", {}).get("Value", [])
    if len(refs) != n_files or "00081198" in answer:
        raise RuntimeError(f"STOW-RS response lists {len(refs)} of {n_files} instances: {answer}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big", default="92000x69000", help="gen_big.py series WxH whose level 0 is pushed ('' to skip)")
    ap.add_argument("--series", default="", help="testkit JPEG series WxH, e.g. 24000x18000 ('' to skip)")
    ap.add_argument("--large", default="", help="testkit native RGB single instance WxH, e.g. 20000x18000 ('' to skip)")
    ap.add_argument("--variants", default="chunked,length,cstore", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--no-publish", action="store_true", help="do not wait for the series to be published")
    ap.add_argument("--keep-large", action="store_true", help="keep the generated large instance in --work")
    ap.add_argument("--work", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    print(page_reporting_state(), flush=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}")

    t_start = time.monotonic()
    inputs: dict[str, dict] = {}
    large_folder = None
    bodies: list[Path] = []
    removed: list[Path] = []
    try:
        if args.big:
            big_folder, one = big_inputs(work, args.big)
            removed += [one] if args.keep_large else [one, big_folder]
            inputs[f"1 instance (gen_big {args.big} level 0)"] = {"src": one, "publish": False, "tag": f"big-{args.big}"}
        if args.series:
            w, h = (int(v) for v in args.series.split("x"))
            inputs[f"series {args.series} JPEG"] = {"src": prepare(work / f"input-{w}x{h}", series_spec(w, h)),
                                                   "publish": not args.no_publish, "tag": f"series-{w}x{h}"}
        if args.large:
            w, h = (int(v) for v in args.large.split("x"))
            large_folder = work / f"input-large-{w}x{h}-explicit"
            inputs[f"1 instance {args.large} native"] = {"src": prepare(large_folder, large_spec(w, h)),
                                                         "publish": False, "tag": f"large-{w}x{h}"}
        for name, m in inputs.items():
            files = dcm_files(m["src"])
            m.update(files=len(files), bytes=sum(p.stat().st_size for p in files), uid=series_uid(m["src"]))
            m["body"] = work / f"stow-body-{m['tag']}.mpr"
            bodies.append(m["body"])
            m["boundary"], m["build_s"] = build_body(files, m["body"])
            m["body_bytes"] = m["body"].stat().st_size
            print(f"{name}: {m['files']} files, {m['bytes'] / 1e6:.0f} MB; body built in {m['build_s']:.1f} s "
                  f"(not timed; {m['body_bytes'] - m['bytes']} bytes of multipart framing)", file=sys.stderr)

        runs = {name: {v: [] for v in variants} for name in inputs}
        t_push = time.monotonic()
        for rep in range(args.reps):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for name, m in inputs.items():
                for v in order:
                    r = run(v, m["src"], m["body"], m["boundary"], m["uid"], m["bytes"], m["files"], m["publish"])
                    runs[name][v].append(r)
                    extra = f", publish {r['publish']:.2f} s (conversion {r['conversion']:.2f} s)" if r["publish"] is not None else ""
                    print(f"rep {rep + 1} {name} {VARIANTS[v]}: {r['wall']:.2f} s, {r['mbps']:.0f} MB/s, RSS {r['rss_main']:.0f} MB "
                          f"(tree {r['rss_tree']:.0f}, HWM {r['hwm_main']:.0f}), CPU node {r['node_cpu']:.2f} s, "
                          f"sender {r['sender_cpu']:.2f} s{extra}", file=sys.stderr)
        push_s = time.monotonic() - t_push
    finally:
        for b in bodies:
            b.unlink(missing_ok=True)
        if large_folder is not None and not args.keep_large:
            shutil.rmtree(large_folder, ignore_errors=True)
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
    total = time.monotonic() - t_start
    meta = {n: {k: (str(v) if isinstance(v, Path) else v) for k, v in m.items()} for n, m in inputs.items()}
    (work / "results-stow.json").write_text(json.dumps({"meta": meta, "runs": runs, "push_seconds": push_s,
                                                        "seconds": total}, indent=1))

    rows = [[*receive_cells(name, inputs[name], VARIANTS[v], rs), *(fmt(med(rs, key)) for key in ("node_cpu", "sender_cpu", "publish", "conversion"))]
            for name, by_v in runs.items() for v, rs in by_v.items()]
    print(markdown_table(["input", "MB", "files", "sender", "wall s (median)", "MB/s (median)", "node peak RSS MB, process (max)",
                          "node peak RSS MB, tree (max)", "node VmHWM MB (max)", "node CPU s (median)", "sender CPU s (median)",
                          "publish latency s (median)", "conversion s (median)"], rows))
    print()
    if "cstore" in variants:
        for name, by_v in runs.items():
            base = by_v["cstore"]
            for v in variants:
                if v == "cstore":
                    continue
                mark = " (target >= 0.9)" if v == "chunked" and name.startswith("1 instance (gen_big") else ""
                print(ratio_line(f"{name}: {VARIANTS[v]} / C-STORE throughput{mark}", by_v[v], base))
    print(f"\n(pushes {push_s:.0f} s, total {total:.0f} s for {args.reps} repetitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
