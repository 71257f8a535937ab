"""End to end at real slide sizes: receive, convert inside `wsi-node serve`, publish; the same
conversion with `wsi-node convert`; and receiving another series while a conversion runs.

Usage:
    python bench/bench_e2e.py [--sizes 24000,60000,150000] [--reps 3] [--work /tmp/bench-e2e]
                              [--busy 150000:60000] [--keep-inputs]

Issue 14, targets 3 and 7 and the receive/publish rows of the scaling table. Inputs come from
bench/gen_big.py (real JPEG frames repeated over every level, one instance per level, extended
offset table; height = 0.8 x width), written once into --work/input-<W> and removed at the end
unless --keep-inputs. For each repetition every size runs, in an order that rotates, these runs:

- serve: a fresh `wsi-node serve` (127.0.0.1, free port, settle 2 s, quiet period 60 s, JSON logs,
  folders under --work) receives the series from DCMTK `storescu -R -xy +sd +sp '*.dcm'` (one
  association). Measured: receive = storescu wall time; the node's own log lines "converting" and
  "published" (timestamps); the sidecar's timings.total (the conversion proper, inside the worker
  process); publish latency = from storescu's exit until the TIFF and its sidecar are in serving
  (polled every 20 ms); peak RSS of the node process and of its process tree.
- cli: `wsi-node convert --mode auto` of the same input folder into --work (same options as the
  node's defaults); its wall time and its report's timings.total plus timings.copy_started_before
  (the command starts copying the frames before it reads a header and forks the conversion, so
  its conversion began that much before timings.total did).
- busy (only for --busy BIG:OTHER, sizes from --sizes): a fresh node receives BIG; as soon as it logs
  "converting", OTHER is pushed by a second storescu; OTHER's receive time is compared with its
  receive time to an idle node (its own serve run in the same repetition). BIG's conversion time
  under that load is reported too.

CPU accounting (/proc/<pid>/task/<tid>/schedstat of every thread of every process in the command's
tree, sampled every 50 ms until the end, the last sample of each kept; see CpuWatch): the conversion
process's time on a CPU and its time runnable but waiting for one (run-queue wait), for serve (the
pool worker the node's forkserver forks) and cli (the child `wsi-node convert` forks, run_in_fork)
alike, all their threads; the node's threads' during each push; for cli also the whole command's CPU
(sampled, and from getrusage of the reaped command as a check). On a shared machine the wall times
mostly differ by the run-queue wait (other people's processes); equal CPU times mean the node adds
no work.

Targets: 3) serve's conversion (timings.total) / cli's within 0.9-1.1, and the second sender's
throughput during a conversion / idle >= ~0.9 ("full speed"); 7) publish latency <= conversion
+ 3 s (publication within receive + conversion + 3 s), for a slide whose pyramid is complete.

Prints a Markdown table of medians and the ratios per size; writes every run to
--work/results-e2e.json. Before every run as many bytes as it will write (serve: the received
instances and the conversion's output; cli: the output) are written to a file and deleted (see
prime()); the page cache is flushed (sync) before every push. Needs DCMTK.

--prime-after-receive: this VM hands freed guest memory back to its host at once (virtio-balloon
free page reporting: /sys/module/page_reporting/parameters/reported_kib grows by every GB freed),
so pages primed before a 4 GB push are gone again by the time serve converts, ~10 s later, while
the CLI converts right after its priming; writing into such memory costs ~2.6 s of kernel time per
GB. With the flag, serve's output is primed once the push has ended, during a 10 s settle
(reported as the default 2 s), so both conversions write into memory in the same state.
--same-age: the same cause, measured instead of removed: the CLI runs again as long after its
priming as serve's conversion began after serve's, and the busy run's second sender pushes again
to an idle node as long after its priming as in the busy run; the extra lines give those ratios.
Both flags predate the finding that a `page_reporting_order` above 10 stops the reporting (docs/benchmarks.md,
issue 14's first section): with reporting off neither is needed; the first line printed says which state ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    NODE_AE, dcm_files, fmt, page_reporting_state, free_port, markdown_table, med, node_process, prime_page_cache, push, series_uid, wait_published,
)
from gen_big import big_spec, write_big_series  # noqa: E402

WSI_NODE = str(Path(sys.executable).parent / "wsi-node")


# --- inputs -------------------------------------------------------------------------------------
def big_input(work: Path, width: int) -> Path:
    folder = work / f"input-{width}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.monotonic()
        write_big_series(big_spec(width, int(width * 0.8)), folder)
        done.write_text("ok")
        print(f"generated {folder} in {time.monotonic() - t:.1f} s", file=sys.stderr)
    return folder


def describe(folder: Path) -> dict:
    files = dcm_files(folder)
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "uid": series_uid(folder)}


# --- CPU accounting from /proc --------------------------------------------------------------------
def schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a task, from its schedstat."""
    try:
        run, wait, _ = open(path).read().split()
        return int(run) / 1e9, int(wait) / 1e9
    except (OSError, ValueError):
        return None


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (of any of its threads), from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for tid in _tids(pid):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
        except OSError:
            pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


class CpuWatch(threading.Thread):
    """Every 50 ms, for every process of `root`'s tree (root included) and every thread of each, the
    last schedstat seen: the CPU time and run-queue wait of a process that has exited are its last
    sample's (at most 50 ms short). Per thread because /proc/<pid>/schedstat is the main thread's
    alone, and a conversion's codec and copy threads do much of its work.

    The conversion processes (conversion()) are the processes that appeared after the start and were
    forked without an exec, i.e. have their parent's command line: the child `wsi-node convert` forks
    for one series (run_in_fork) and the pool worker the node's forkserver forks (the forkserver and
    the resource tracker are exec'd helpers, whatever their start time); with every process below
    them. Machine noise shows as run-queue wait; the CPU a conversion needs is its run time."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.lock = threading.Lock()
        self.parent: dict[int, int] = {}
        self.cmd: dict[int, bytes] = {}  # last non-empty command line (empty once a process is a zombie)
        self.tasks: dict[tuple[int, int], tuple[float, float]] = {}  # (pid, tid) -> last (run, wait)
        self.before = set(self._tree())
        self.halt = threading.Event()

    def _tree(self) -> dict[int, int]:
        """pid -> parent pid for root and its descendants now."""
        tree, todo = {self.root: 0}, [self.root]
        while todo:
            p = todo.pop()
            for c in _children(p):
                if c not in tree:
                    tree[c] = p
                    todo.append(c)
        return tree

    def sample(self) -> None:
        tree = self._tree()
        seen = {(pid, tid): st for pid in tree for tid in _tids(pid)
                if (st := schedstat(f"/proc/{pid}/task/{tid}/schedstat")) is not None}
        cmds = {pid: c for pid in tree if (c := _cmdline(pid))}
        with self.lock:
            self.parent.update(tree)
            self.cmd.update(cmds)
            self.tasks.update(seen)

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.05)

    def finish(self) -> None:
        self.halt.set()
        self.join()
        self.sample()  # whatever is still there

    def _total(self, pids: set[int], leader_only: bool = False) -> tuple[float, float]:
        with self.lock:
            vals = [v for (pid, tid), v in self.tasks.items() if pid in pids and (tid == pid or not leader_only)]
        return sum(v[0] for v in vals), sum(v[1] for v in vals)

    def conversion_pids(self) -> set[int]:
        with self.lock:
            parent, cmd = dict(self.parent), dict(self.cmd)
        tops = {p for p, pp in parent.items() if p != self.root and p not in self.before
                and cmd.get(p) is not None and cmd.get(p) == cmd.get(pp)}
        out = set(tops)
        changed = True
        while changed:  # everything below them
            more = {p for p, pp in parent.items() if pp in out} - out
            out |= more
            changed = bool(more)
        return out

    def conversion(self, leader_only: bool = False) -> tuple[float | None, float | None]:
        """(CPU s, run-queue wait s) of the conversion processes, all threads (`leader_only`: main threads
        only, what this bench reported before); (None, None) if none was seen."""
        pids = self.conversion_pids()
        return self._total(pids, leader_only) if pids else (None, None)

    def tree_total(self) -> tuple[float, float]:
        """(CPU s, run-queue wait s) of every process seen in the tree, root included."""
        with self.lock:
            pids = set(self.parent)
        return self._total(pids)

    def threads_total(self) -> tuple[float, float]:
        """The threads of `root` itself (the node's receivers and main loop)."""
        return self._total({self.root})


# --- the node's own account -----------------------------------------------------------------------
def log_times(log: Path, uid: str) -> dict[str, float]:
    """Wall-clock times (epoch s) of the node's JSON log lines about `uid`: converting, published."""
    out: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("message", "")
        if uid not in msg:
            continue
        when = datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()
        if ": converting " in msg:
            out.setdefault("converting", when)
        elif " published: " in msg:
            out.setdefault("published", when)
    return out


def wait_log(log: Path, uid: str, key: str, timeout: float, proc: subprocess.Popen) -> float:
    end = time.monotonic() + timeout
    while key not in (t := log_times(log, uid)):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"no '{key}' for {uid} in the node's log: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return t[key]


def node_env() -> dict[str, str]:
    # DICOMweb stays on, as deployed, but on 127.0.0.1 and a free port.
    return dict(os.environ, WSI_NODE_HTTP_BIND="127.0.0.1", WSI_NODE_HTTP_PORT=str(free_port()))


def fresh(work: Path, name: str) -> tuple[Path, Path]:
    data, log = work / name, work / f"{name}.log"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    return data, log


def cleanup(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


PRIME_SLACK = 256 << 20
"""Primed on top of the bytes a run writes: the processes' own memory (node, forkserver, conversion
process: 100-150 MB each) comes from the same free pages, and the output size is an estimate."""


def prime(nbytes: int, folder: Path) -> int:
    """Freed page cache for `nbytes` of writes plus PRIME_SLACK (bench/_common.prime_page_cache); returns the amount.

    On this VM, page cache in memory the guest has not touched before costs several times more to
    write than pages a deleted file freed (0.25 s vs up to 4 s per GB, see prime_page_cache). So every
    run is primed, right before it, for everything it writes: serve for the received instances (N bytes
    into the inbox) and then the conversion's output (the TIFF in serving, about N again in copy mode);
    the CLI for the conversion's output only (its input is read, not written). A run primed for less
    than it writes would pay first-touch for the rest, and the order of the runs, not the node, would
    decide the serve / cli ratio.
    """
    total = nbytes + PRIME_SLACK
    prime_page_cache(total, folder)
    return total


def output_bytes(m: dict) -> int:
    """The conversion's output size: the largest seen so far for this input (TIFF + report), else the
    input's size (copy mode writes the same frames again)."""
    return max(m["bytes"], m.get("out_bytes", 0))


def record_output(m: dict, *files: Path) -> int:
    size = sum(f.stat().st_size for f in files if f.exists())
    m["out_bytes"] = max(m.get("out_bytes", 0), size)
    return size


# --- runs ---------------------------------------------------------------------------------------
PRIME_SETTLE = 10.0
"""--settle of serve with --prime-after-receive: the output's priming (2-5 s for 4 GB) ends before the conversion starts."""


def run_serve(work: Path, src: Path, m: dict, timeout: float = 900, prime_after: bool = False, age: float = 0.0) -> dict:
    """One push to a fresh node and its conversion; `age`: seconds from the priming to the push (--same-age)."""
    data, log = fresh(work, "node")
    # The receive writes N bytes into the inbox, the conversion its output. With prime_after, the output's share
    # is primed once the push has ended (see --prime-after-receive), not before the receive.
    primed = prime(m["bytes"] + (0 if prime_after else output_bytes(m)), work)
    primed_at, primed_wall = time.monotonic(), time.time()
    port = free_port()
    settle = PRIME_SETTLE if prime_after else 2.0
    try:
        with node_process(data, log, port, "--quiet-period", "60", "--log-format", "json", env=node_env(), settle=settle) as scp:
            scp.poller.start()
            watch = CpuWatch(scp.proc.pid)
            watch.sample()
            before = watch.threads_total()
            watch.start()
            time.sleep(max(0.0, age - (time.monotonic() - primed_at)))
            t0 = time.time()
            wall = push(src, port, NODE_AE)
            done_wall, done = time.time(), time.monotonic()
            after = watch.threads_total()
            primed_after = prime(output_bytes(m), work) if prime_after else 0
            primed_by = time.time()
            latency, conversion = wait_published(data, m["uid"], done, timeout, scp.proc, log)
            wait_log(log, m["uid"], "published", 10, scp.proc)
            watch.finish()
            cpu, cpu_wait = watch.conversion()
            cpu_leader, _ = watch.conversion(leader_only=True)
            hwm = scp.hwm_kb()
            times = log_times(log, m["uid"])
            sidecar = data / "serving" / f"{m['uid']}.json"
            serve_timings = json.loads(sidecar.read_text()).get("timings", {})
            written = m["bytes"] + record_output(m, data / "serving" / f"{m['uid']}.tiff", sidecar)
        extra = settle - 2.0  # reported as if settle were 2 s, the node's default
        if prime_after and primed_by > times["converting"]:
            print(f"  warning: the output's priming ended {primed_by - times['converting']:.2f} s after the conversion began",
                  file=sys.stderr)
        return {"receive": wall, "mbps": m["bytes"] / 1e6 / wall, "latency": latency - extra, "conversion": conversion,
                "start_after_receive": times["converting"] - done_wall - extra, "primed_after_mb": primed_after / 1e6,
                "age_at_conversion": times["converting"] - (primed_by if prime_after else primed_wall), "node_span": times["published"] - times["converting"],
                "end_to_end": done_wall - t0 + latency - extra, "cpu": cpu, "cpu_wait": cpu_wait, "cpu_leader": cpu_leader,
                "written_mb": written / 1e6, "primed_mb": primed / 1e6,
                "node_cpu": after[0] - before[0], "node_wait": after[1] - before[1], "rss_main": scp.poller.main_kb / 1024,
                "rss_tree": scp.poller.tree_kb / 1024, "hwm_main": hwm / 1024, "timings": serve_timings}
    finally:
        cleanup(data, log)


def run_cli(work: Path, src: Path, m: dict, age: float = 0.0) -> dict:
    """`wsi-node convert` of the input; `age`: seconds from the priming to the command (--same-age)."""
    out = work / "cli-out"
    cleanup(out)
    out.mkdir()
    primed = prime(output_bytes(m), work)  # the CLI writes only the conversion's output
    target = out / "slide.tiff"
    os.sync()
    time.sleep(age)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    proc = subprocess.Popen([WSI_NODE, "convert", "--mode", "auto", "-o", str(target), str(src)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch = CpuWatch(proc.pid)
    watch.start()
    _, err = proc.communicate()
    wall = time.monotonic() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the whole command, reaped descendants included
    watch.finish()
    cpu, cpu_wait = watch.conversion()
    cpu_leader, _ = watch.conversion(leader_only=True)
    tree_cpu, _ = watch.tree_total()
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"wsi-node convert failed ({proc.returncode}): {err[-2000:]}")
        report = json.loads(target.with_suffix(".json").read_text())
        written = record_output(m, target, target.with_suffix(".json"))
        # The conversion began when the command's early copy did (converter.tiff.forked_copier.ForkedCopier), before
        # the conversion process and its timings.total started: that head start is part of its time.
        timings = report["timings"]
        return {"cli_wall": wall, "cli_conversion": timings["total"] + timings.get("copy_started_before", 0.0), "cli_cpu": cpu, "cli_cpu_wait": cpu_wait,
                "cli_cpu_leader": cpu_leader, "cli_tree_cpu": tree_cpu,
                "cli_tree_cpu_rusage": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
                "cli_written_mb": written / 1e6, "cli_primed_mb": primed / 1e6, "cli_timings": timings}
    finally:
        cleanup(out)


def run_busy(work: Path, big: Path, mb: dict, other: Path, mo: dict, timeout: float = 900) -> dict:
    """BIG pushed, then OTHER pushed while BIG converts: OTHER's receive time and BIG's conversion time."""
    data, log = fresh(work, "node-busy")
    # BIG's receive and conversion, then OTHER's (pushed and converted while BIG is still converting)
    prime(mb["bytes"] + output_bytes(mb) + mo["bytes"] + output_bytes(mo), work)
    primed_at = time.monotonic()
    port = free_port()
    try:
        with node_process(data, log, port, "--quiet-period", "60", "--log-format", "json", env=node_env()) as scp:
            push(big, port, NODE_AE)
            wait_log(log, mb["uid"], "converting", 60, scp.proc)
            watch = CpuWatch(scp.proc.pid)
            watch.sample()
            before = watch.threads_total()
            watch.start()
            age = time.monotonic() - primed_at
            wall = push(other, port, NODE_AE)
            watch.finish()
            after = watch.threads_total()
            still = "published" not in log_times(log, mb["uid"])
            _, conversion = wait_published(data, mb["uid"], time.monotonic(), timeout, scp.proc, log)
            wait_published(data, mo["uid"], time.monotonic(), timeout, scp.proc, log)
        return {"busy_receive": wall, "busy_mbps": mo["bytes"] / 1e6 / wall, "busy_during": still, "busy_conversion": conversion,
                "busy_age": age,
                "busy_node_cpu": after[0] - before[0], "busy_node_wait": after[1] - before[1]}
    finally:
        cleanup(data, log)


# --- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="24000,60000,150000", help="slide widths (height 0.8 x width)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--busy", default="150000:60000", help="BIG:OTHER widths of the busy run ('' to skip)")
    ap.add_argument("--work", default="/tmp/bench-e2e")
    ap.add_argument("--keep-inputs", action="store_true")
    ap.add_argument("--same-age", action="store_true",
                    help="also run the CLI, and the busy run's second sender to an idle node, as long after their priming as "
                         "serve's conversion and the busy push came after theirs (this VM's memory reclamation, see above)")
    ap.add_argument("--prime-after-receive", action="store_true",
                    help="serve: prime the conversion's output bytes after the push, not before it (settle 10 s, reported as 2)")
    args = ap.parse_args()
    print(page_reporting_state(), flush=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    busy = tuple(int(s) for s in args.busy.split(":")) if args.busy else None
    if busy and not set(busy) <= set(sizes):
        ap.error("--busy sizes must be among --sizes")
    inputs = {w: big_input(work, w) for w in sizes}
    meta = {w: describe(f) for w, f in inputs.items()}
    runs: dict[int, list[dict]] = {w: [] for w in sizes}
    t_start = time.monotonic()
    try:
        for rep in range(args.reps):
            order = sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]
            for w in order:
                r: dict = {}
                steps = ["serve", "cli"] if rep % 2 == 0 else ["cli", "serve"]  # who goes first alternates
                for step in steps:
                    r.update(run_serve(work, inputs[w], meta[w], prime_after=args.prime_after_receive) if step == "serve"
                             else run_cli(work, inputs[w], meta[w]))
                if args.same_age:
                    aged = run_cli(work, inputs[w], meta[w], age=r["age_at_conversion"])
                    r["cli_aged_conversion"] = aged["cli_conversion"]
                runs[w].append(r)
                print(f"rep {rep + 1} {w}: receive {r['receive']:.2f} s ({r['mbps']:.0f} MB/s), serve conversion "
                      f"{r['conversion']:.2f} s, cli {r['cli_conversion']:.2f} s (wall {r['cli_wall']:.2f}), publish latency "
                      f"{r['latency']:.2f} s, converting {r['start_after_receive']:.2f} s after receive, RSS "
                      f"{r['rss_main']:.0f}/{r['rss_tree']:.0f} MB", file=sys.stderr)
            if busy:
                b = run_busy(work, inputs[busy[0]], meta[busy[0]], inputs[busy[1]], meta[busy[1]])
                if args.same_age:
                    b["idle_aged_mbps"] = run_serve(work, inputs[busy[1]], meta[busy[1]], age=b["busy_age"])["mbps"]
                runs[busy[0]][-1].update(b)
                print(f"rep {rep + 1} busy: {busy[1]} received in {b['busy_receive']:.2f} s ({b['busy_mbps']:.0f} MB/s) while "
                      f"{busy[0]} converted (still converting at the end: {b['busy_during']}); {busy[0]}'s conversion "
                      f"{b['busy_conversion']:.2f} s", file=sys.stderr)
    finally:
        if not args.keep_inputs:
            for folder in inputs.values():
                shutil.rmtree(folder, ignore_errors=True)
    total = time.monotonic() - t_start
    (work / "results-e2e.json").write_text(json.dumps({"meta": {str(k): v for k, v in meta.items()},
                                                      "runs": {str(k): v for k, v in runs.items()}, "seconds": total}, indent=1))

    rows = []
    for w, rs in runs.items():
        m = meta[w]
        ratio = [r["conversion"] / r["cli_conversion"] for r in rs]
        slack = [r["latency"] - r["conversion"] for r in rs]
        rows.append([f"{w} x {int(w * 0.8)}", f"{m['bytes'] / 1e6:.0f}", fmt(med(rs, "receive")), f"{med(rs, 'mbps'):.0f}",
                     f"{max(r['rss_main'] for r in rs):.0f}", f"{max(r['rss_tree'] for r in rs):.0f}",
                     fmt(med(rs, "conversion")), fmt(med(rs, "cli_conversion")), fmt(med(rs, "cli_wall")),
                     f"{statistics.median(ratio):.2f}", f"{fmt(med(rs, 'cpu'))} / {fmt(med(rs, 'cli_cpu'))}",
                     f"{fmt(med(rs, 'cpu_wait'))} / {fmt(med(rs, 'cli_cpu_wait'))}", fmt(med(rs, "start_after_receive")), fmt(med(rs, "latency")),
                     fmt(statistics.median(slack)), fmt(med(rs, "end_to_end"))])
    print(markdown_table(["slide", "MB", "receive s", "receive MB/s", "peak RSS MB node", "peak RSS MB tree",
                          "conversion in serve s", "conversion cli s", "cli wall s", "serve / cli",
                          "conversion CPU s serve / cli", "conversion run-queue wait s serve / cli",
                          "converting after receive s", "publish latency s", "latency - conversion s (target <= 3)",
                          "push start to published s"], rows))
    print()
    for w, rs in runs.items():
        ratio = [r["conversion"] / r["cli_conversion"] for r in rs]
        cpu = [r["cpu"] / r["cli_cpu"] for r in rs if r.get("cpu") and r.get("cli_cpu")]
        print(f"- {w}: serve / cli conversion = {statistics.median(ratio):.2f} (per repetition: "
              f"{', '.join(f'{x:.2f}' for x in ratio)}); CPU time serve / cli = "
              f"{statistics.median(cpu) if cpu else float('nan'):.2f}; the whole `wsi-node convert` command's CPU "
              f"{fmt(med(rs, 'cli_tree_cpu'))} s (getrusage {fmt(med(rs, 'cli_tree_cpu_rusage'))} s); latency - conversion: "
              f"{', '.join(f'{x:.2f}' for x in (r['latency'] - r['conversion'] for r in rs))} s")
    if busy:
        rs_big, rs_other = runs[busy[0]], runs[busy[1]]
        per = [b["busy_mbps"] / o["mbps"] for b, o in zip(rs_big, rs_other)]
        conv = [b["busy_conversion"] / b["conversion"] for b in rs_big]
        print(f"- {busy[1]} received while {busy[0]} converts / to an idle node: throughput {statistics.median(per):.2f} "
              f"(per repetition: {', '.join(f'{x:.2f}' for x in per)}; {med(rs_big, 'busy_mbps'):.0f} vs "
              f"{med(rs_other, 'mbps'):.0f} MB/s); {busy[0]}'s conversion meanwhile {med(rs_big, 'busy_conversion'):.2f} s "
              f"= {statistics.median(conv):.2f} x its idle time; the node's threads waited for a CPU "
              f"{med(rs_big, 'busy_node_wait'):.2f} s during that push (CPU {med(rs_big, 'busy_node_cpu'):.2f} s) vs "
              f"{med(rs_other, 'node_wait'):.2f} s (CPU {med(rs_other, 'node_cpu'):.2f} s) to an idle node")
    if args.same_age:
        for w, rs in runs.items():
            aged = [r["conversion"] / r["cli_aged_conversion"] for r in rs]
            print(f"- {w}, same memory age: serve / cli conversion = {statistics.median(aged):.2f} (per repetition: "
                  f"{', '.join(f'{x:.2f}' for x in aged)}; cli {fmt(med(rs, 'cli_aged_conversion'))} s, started "
                  f"{fmt(med(rs, 'age_at_conversion'))} s after its priming as serve's conversion was)")
        if busy:
            rs_big = runs[busy[0]]
            per = [b["busy_mbps"] / b["idle_aged_mbps"] for b in rs_big]
            print(f"- {busy[1]} received while {busy[0]} converts / to an idle node pushed as long after its priming "
                  f"({fmt(med(rs_big, 'busy_age'))} s): throughput {statistics.median(per):.2f} (per repetition: "
                  f"{', '.join(f'{x:.2f}' for x in per)}; {med(rs_big, 'busy_mbps'):.0f} vs {med(rs_big, 'idle_aged_mbps'):.0f} MB/s)")
    print(f"\n(total {total:.0f} s for {args.reps} repetitions; load average at the end {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
