"""Back-pressure and resources of the executors, seen from outside (issue 13): /metrics, the status page, the scheduler.

Real processes on loopback as in test_dask.py: a scheduler, worker processes under nannies, the node
as `wsi-node serve`. Checks:
- with --max-concurrent 1 and three series at once, /metrics never shows more than one conversion
  running and shows the others queued in the node; afterwards the ok/failed counts and the per-worker
  counts add up, the status page names the executor's counts and the worker that converted each series,
  and the scheduler never saw a resource annotation (the workers declare none);
- workers that declare `--resources memory=...` get every conversion annotated with its memory budget;
- the local executor reports on the same metrics (executor="local").
"""

from __future__ import annotations

import re
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.converter.executors.test_dask import SMALL, BIG, cluster, dask_node, series_factory  # noqa: F401 (fixture)
from tests.faults.harness import NodeProcess, c_store, wait_for


def executor_samples(url: str) -> dict[tuple[str, str], float]:
    """(metric family, label text) -> value for the wsi_node_executor_* metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("wsi_node_executor_"):
            for s in family.samples:
                out[(s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())))] = s.value
    return out


def _restrictions(c) -> dict[str, object]:
    return c.client.run_on_scheduler(lambda dask_scheduler: {
        k: ts.resource_restrictions for k, ts in dask_scheduler.tasks.items() if str(k).startswith("convert_series")})


def test_metrics_and_status_page_show_queued_running_failed_and_the_worker_of_each_conversion(tmp_path, series_factory):
    series = [series_factory(BIG), *(series_factory(s) for s in SMALL[:2])]
    with cluster(tmp_path) as c, dask_node(tmp_path, c, "--max-concurrent", "1", "--mode", "reencode") as node:
        for _folder, files, *_ in series:
            assert all(o.status == 0 for o in c_store(node.port, files))
        seen: list[dict] = []
        restrictions: list[object] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            s = executor_samples(node.url)
            seen.append(s)
            restrictions.extend(_restrictions(c).values())
            if s.get(("wsi_node_executor_conversions", "executor=dask,state=ok"), 0) >= 1 + len(series):
                break
            time.sleep(0.1)
        running = [s.get(("wsi_node_executor_conversions", "executor=dask,state=running"), 0) for s in seen]
        queued = [s.get(("wsi_node_executor_conversions", "executor=dask,state=queued"), 0) for s in seen]
        assert max(running) == 1, running  # the node's back-pressure: never more than --max-concurrent on the cluster
        assert max(queued) >= 1, queued  # the others waited in the node, visibly
        last = seen[-1]
        assert last[("wsi_node_executor_conversions", "executor=dask,state=ok")] == 1 + len(series), last  # + the start probe
        assert last[("wsi_node_executor_conversions", "executor=dask,state=failed")] == 0
        workers = set(c.client.scheduler_info()["workers"])
        by_worker = {labels: v for (name, labels), v in last.items() if name == "wsi_node_executor_conversions_by_worker"}
        assert sum(by_worker.values()) == 1 + len(series), by_worker
        assert {re.search(r"worker=(\S+)", k).group(1) for k in by_worker} <= workers, (by_worker, workers)
        assert restrictions and all(r is None for r in restrictions), restrictions
        for _folder, _files, _study, uid, sops in series:
            node.wait_published(uid, sops, timeout=60)
        ran_on = {line.split("task ", 1)[1].split()[0]: line.rsplit(" ", 1)[1] for line in node.log_text().splitlines()
                  if "ran on the Dask worker" in line}
        page = wait_for(lambda: (lambda t: t if all(f"series-{u}" in t for *_x, u, _s in series) else None)(
            requests.get(node.url + "/", timeout=10).text), 30, 0.5, "the status page listing the series")
        assert re.search(r'<p id="executor">executor dask: 0 queued, 0 running, 4 ok, 0 failed, 0 worker deaths; ran on tcp://',
                         page), page[:3000]
        shown = re.findall(r'converted on (tcp://[0-9.:]+)', page)
        assert len(shown) == len(series) and set(shown) <= set(ran_on.values()), (shown, ran_on)


def test_workers_that_declare_memory_get_each_conversion_annotated_with_its_budget(tmp_path, series_factory):
    _folder, files, _study, uid, sops = series_factory(BIG)
    from tests.converter.executors.test_dask import Cluster

    c = Cluster(tmp_path)
    try:
        c.start_scheduler()
        c.start_worker("big", resources="memory=4e9")
        c.wait_workers(1)
        with dask_node(tmp_path, c, "--mode", "reencode") as node:
            assert "tasks ask for their memory budget as the worker resource `memory`" in node.log_text()
            assert all(o.status == 0 for o in c_store(node.port, files))
            seen = wait_for(lambda: [r for r in _restrictions(c).values() if r], 120, 0.05, "the conversion on the scheduler")
            budget = seen[0]["memory"]
            assert 64 << 20 <= budget <= 4096 << 20, budget  # the MemoryBudget of the slide, within conversion_memory_mb
            node.wait_published(uid, sops, timeout=180)
    finally:
        c.close()


def test_the_memory_resource_is_used_only_when_every_worker_declares_it_and_capped_at_the_largest():
    from converter.executors.dask_start import workers_declare_memory

    assert workers_declare_memory({}) == 0
    assert workers_declare_memory({"a": {"resources": {"memory": 4e9}}, "b": {"resources": {}}}) == 0
    assert workers_declare_memory({"a": {"resources": {"memory": 4e9}}, "b": {"resources": {"memory": 2e9}}}) == 4e9


def test_the_local_executor_reports_on_the_same_metrics(tmp_path, series_factory):
    _folder, files, _study, uid, sops = series_factory(SMALL[0])
    node = NodeProcess(tmp_path / "data", "--max-concurrent", "1")
    try:
        node.start(timeout=120)
        assert all(o.status == 0 for o in c_store(node.port, files))
        node.wait_published(uid, sops, timeout=120)
        s = wait_for(lambda: (lambda v: v if v.get(("wsi_node_executor_conversions", "executor=local,state=ok"), 0) >= 2
                              else None)(executor_samples(node.url)), 30, 0.5, "the local executor's ok count")
        assert s[("wsi_node_executor_conversions", "executor=local,state=running")] == 0
        assert s[("wsi_node_executor_conversions_by_worker", "executor=local,worker=local")] >= 2
        page = wait_for(lambda: (lambda t: t if f"series-{uid}" in t else None)(requests.get(node.url + "/", timeout=10).text),
                        30, 0.5, "the status page listing the series")
        assert '<p id="executor">executor local: 0 queued, 0 running, 2 ok' in page, page[:3000]
        assert re.search(r"converted on local pid \d+", page), page[:3000]
    finally:
        node.stop(timeout=30)
        if node.alive():
            node.kill9()
