"""Conversions on a real Dask distributed cluster (issue 13): scheduler and workers as processes on loopback.

The test starts `python -m distributed.cli.dask_scheduler` and `python -m distributed.cli.dask_worker`
processes (each worker under its nanny, PYTHONPATH at the checkout so workers import the converter),
never an in-process LocalCluster, and `wsi-node serve --executor dask` as a subprocess
(tests/faults/harness.NodeProcess) with --dask-scheduler (or DASK_SCHEDULER_ADDRESS) pointing at the scheduler. Checks:
- several series pushed over C-STORE are all published once, open in OpenSlide, and ran on workers;
- a worker SIGKILLed while it converts: its task ends in KilledWorker (the node sets allowed-failures
  to 0), the node retries the series and publishes it once, no scratch file is left in serving;
- a worker that sees another folder at the node's data path (its own mount namespace with a tmpfs
  over it: what an NFS share not mounted on that host looks like) makes the node refuse to start,
  naming the path and the worker;
- without Dask installed (the import blocked by a sitecustomize in the node's PYTHONPATH),
  --executor dask refuses to start and says what to install.
Every wait has a timeout; every process started here is killed in a finally.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import distributed  # the dask extra is in the test extra (pip install -e '.[test]'): missing, the module fails loudly
import pytest

from converter.testkit import SlideSpec, series_uids, write_series
from tests.faults.audit import settled_audits, sop_uid
from tests.faults.harness import REPO, NodeProcess, c_store, free_port, wait_for
from tests.readers import open_openslide

PYTHON = sys.executable
SMALL = [SlideSpec(width=1024, height=768, seed=1300 + i, downsamples=(1, 4)) for i in range(3)]
BIG = SlideSpec(width=8192, height=6144, seed=1310, downsamples=(1, 4, 16))


@pytest.fixture(scope="module")
def series_factory(tmp_path_factory):
    """`make(spec)` -> (folder, files, study, series, sops), written once per spec and module."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("dask-series")

    def make(spec: SlideSpec):
        if spec not in cache:
            files = write_series(spec, root / f"s{len(cache)}", workers=1)
            study, uid = series_uids(spec)
            cache[spec] = (root / f"s{len(cache)}", files, study, uid, sorted(sop_uid(f) for f in files))
        return cache[spec]

    return make


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


class Cluster:
    """A scheduler and worker processes, each in its own session; `close()` kills them all."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.client = None

    def _spawn(self, name: str, argv: list[str], prefix: list[str] = ()) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen([*prefix, *argv], cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> None:
        self._spawn("scheduler", [PYTHON, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(self.port), "--no-dashboard"])
        self.client = wait_for(self._connect, 60, 0.5, f"the Dask scheduler on {self.address}")

    def _connect(self):
        try:
            return distributed.Client(self.address, timeout=2, set_as_default=False)
        except (OSError, TimeoutError):
            return None

    def start_worker(self, name: str, prefix: list[str] = (), memory_limit: str | None = None,
                     resources: str | None = None) -> subprocess.Popen:
        extra = (["--memory-limit", memory_limit] if memory_limit else []) + (["--resources", resources] if resources else [])
        return self._spawn(name, [PYTHON, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", "1",
                                  "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", name,
                                  "--death-timeout", "60", *extra], prefix)

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        self.client.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the worker process (not its nanny)."""
        return self.client.run(os.getpid)

    def processing(self) -> dict[str, list]:
        return {w: list(keys) for w, keys in self.client.processing().items()}

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close(timeout=5)
            except Exception:
                pass
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass


@contextmanager
def cluster(tmp_path: Path, workers: int = 2):
    c = Cluster(tmp_path)
    try:
        c.start_scheduler()
        for i in range(workers):
            c.start_worker(f"w{i}")
        if workers:
            c.wait_workers(workers)
        yield c
    finally:
        c.close()


@contextmanager
def dask_node(tmp_path: Path, c: Cluster, *extra: str, wait: bool = True, env: dict | None = None):
    node = NodeProcess(tmp_path / "data", "--executor", "dask", "--dask-scheduler", c.address, *extra,
                       env={"PYTHONPATH": str(REPO), **(env or {})})
    try:
        node.start(wait=wait, timeout=120)
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(timeout=30)
        if node.proc is not None and node.proc.poll() is None:
            node.kill9()


def test_series_are_converted_on_dask_workers_and_published_once(tmp_path, series_factory):
    series = [series_factory(s) for s in SMALL]
    with cluster(tmp_path) as c, dask_node(tmp_path, c, "--max-concurrent", "2") as node:
        assert "allowed-failures=3; set to 0" in node.log_text()  # the scheduler's default, overridden for the node
        assert c.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 0
        for _folder, files, _study, _uid, _sops in series:
            assert all(o.status == 0 for o in c_store(node.port, files))
        for _folder, _files, study, uid, sops in series:
            node.wait_published(uid, sops, timeout=120)
        audits = settled_audits(node, [(study, uid, sops) for _folder, _files, study, uid, sops in series])
        for a, (_folder, _files, study, uid, sops) in zip(audits, series):
            assert (a.lost, a.duplicates, a.partial, a.tiffs, a.conversions, a.state) == \
                ([], [], [], [f"{uid}.tiff"], 1, "published"), a
            slide = open_openslide(node.folder("serving") / f"{uid}.tiff")
            assert slide.dimensions == (1024, 768)
            slide.close()
        # The conversions ran on the workers, not in the node: the scheduler counted them, the node names the workers.
        assert c.client.run_on_scheduler(lambda dask_scheduler: "convert_series" in dask_scheduler.task_prefixes)
        workers = set(c.client.scheduler_info()["workers"])
        ran_on = [line.rsplit(" ", 1)[1] for line in node.log_text().splitlines()
                  if "task convert_series-" in line and "ran on the Dask worker" in line]
        assert len(ran_on) == 3 and set(ran_on) <= workers, (ran_on, workers)
        assert not [p for p in node.descendants() if "forkserver" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]


def test_worker_killed_mid_conversion_the_series_is_retried_and_published_once(tmp_path, series_factory):
    folder, files, study, uid, sops = series_factory(BIG)
    with cluster(tmp_path) as c, dask_node(tmp_path, c, "--mode", "reencode", "--max-attempts", "3") as node:
        assert all(o.status == 0 for o in c_store(node.port, files))

        def converting_worker():
            busy = [w for w, keys in c.processing().items() if any("convert_series" in str(k) for k in keys)]
            return busy[0] if busy else None

        victim = wait_for(converting_worker, 60, 0.05, "a worker converting the big slide")
        time.sleep(0.5)  # well inside the conversion (it takes several seconds on this machine)
        pid = c.worker_pids()[victim]
        os.kill(pid, signal.SIGKILL)
        node.wait_published(uid, sops, timeout=180)
        [a] = settled_audits(node, [(study, uid, sops)])
        assert (a.lost, a.duplicates, a.partial, a.tiffs, a.conversions, a.state) == \
            ([], [], [], [f"{uid}.tiff"], 1, "published"), a
        log = node.log_text()
        assert f"the Dask worker {victim} died while converting" in log, log[-3000:]
        assert "attempt 1 of 3" in log
        assert not [p.name for p in node.folder("serving").iterdir() if p.name.startswith(".")]
        # The nanny brought a worker back: the cluster has two again.
        c.wait_workers(2, timeout=60)


def test_a_worker_that_sees_other_folders_stops_the_node_at_start(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.fail("this test needs `unshare --mount` (util-linux, as root): a worker with its own mount namespace")
    data = tmp_path / "data"
    data.mkdir()
    # The second worker has its own mount namespace with an empty tmpfs over the node's data folder: the same
    # path, another filesystem, as on a host where the NFS share is not mounted.
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{data}" && exec "$0" "$@"']
    c = Cluster(tmp_path)
    try:
        c.start_scheduler()
        c.start_worker("good")
        c.start_worker("elsewhere", prefix=hide)
        c.wait_workers(2)
        addresses = {info["name"]: w for w, info in c.client.scheduler_info()["workers"].items()}
        node = NodeProcess(data, "--executor", "dask", env={"PYTHONPATH": str(REPO), "DASK_SCHEDULER_ADDRESS": c.address})
        try:
            node.start(wait=False)
            assert node.proc.wait(120) == 2
        finally:
            if node.proc.poll() is None:
                node.kill9()
        log = node.log_text()
        assert "do not see the node's folders at the same paths" in log, log[-3000:]
        assert f"Dask worker {addresses['elsewhere']}: cannot read the probe file {data.resolve() / 'inbox'}" in log, log[-3000:]
        assert addresses["good"] not in log.split("cannot start:", 1)[1]
        assert "mount the inbox, serving and archive folders at the same paths" in log
        assert not list((data / "inbox").glob(".wsi-node-probe-*"))  # the probes are removed again
    finally:
        c.close()


def test_without_dask_installed_the_dask_executor_fails_at_start_saying_what_to_install(tmp_path):
    # A sitecustomize on the node's PYTHONPATH makes `import distributed` (and dask) fail as on a
    # machine without the extra; the product code is the real one.
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoDask:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'distributed'):\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoDask())\n")
    for command in (
        [PYTHON, "-m", "scp.cli", "serve", "--data", str(tmp_path / "data"), "--executor", "dask", "--port", str(free_port()),
         "--http-port", "0", "--bind", "127.0.0.1"],
        [PYTHON, "-m", "converter.cli.batch_converter", "--inbox", str(tmp_path / "inbox"), "--serving", str(tmp_path / "s"),
         "--archive", str(tmp_path / "a"), "--quarantine", str(tmp_path / "q"), "--state-dir", str(tmp_path / "st"),
         "--executor", "dask"],
    ):
        (tmp_path / "inbox").mkdir(exist_ok=True)
        env = {**_env(), "PYTHONPATH": f"{block}{os.pathsep}{REPO}", "DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out
        assert "--executor dask needs Dask distributed, which is not installed here" in out, out
        assert "pip install 'wsi-node[dask]'" in out, out
        assert "Traceback" not in out, out
