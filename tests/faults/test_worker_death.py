"""Worker death: a conversion worker SIGKILLed in the middle of a conversion.

The node runs each conversion in a worker process. A worker that dies (OOM killer, a codec
crash, kill -9) must not stop conversions: the series it held is retried and published exactly
once, and the node converts other slides meanwhile; a slide whose every attempt dies is
quarantined after --max-attempts as a poison slide, and /metrics counts the deaths. The worker is
found as the busiest descendant of the node (CPU ticks over 0.2 s) while the conversion runs.
"""

from __future__ import annotations

import os
import signal
import time

import requests

from converter.testkit import SlideSpec
from tests.faults.audit import node_answers, settled_audits
from tests.faults.harness import c_store, cmdline, proc_cpu_ticks, wait_for

BIG = SlideSpec(width=8192, height=6144, seed=501, downsamples=(1, 4, 16))
SMALL = SlideSpec(width=1024, height=768, seed=502, downsamples=(1, 4))


def busiest_worker(node, exclude: set[int] = frozenset()) -> int | None:
    """The node's descendant (not the forkserver's resource tracker) that used the most CPU over 0.2 s."""
    pids = [p for p in node.descendants() if p not in exclude and "resource_tracker" not in cmdline(p)]
    before = {p: proc_cpu_ticks(p) for p in pids}
    time.sleep(0.2)
    used = {p: proc_cpu_ticks(p) - before[p] for p in pids}
    busy = [p for p, t in used.items() if t >= 5]  # >= 50 ms of CPU in 200 ms: converting
    return max(busy, key=used.get) if busy else None


def test_worker_killed_mid_conversion_is_replaced_and_the_series_published_once(node_process, series_factory):
    big, small = series_factory(BIG), series_factory(SMALL)
    node = node_process("--mode", "reencode", "--max-concurrent", "2")
    assert all(o.status == 0 for o in c_store(node.port, big[1]))
    wait_for(lambda: f"series {big[3]}: converting" in node.log_text(), 30, 0.05, "the big slide's conversion to start")
    victim = wait_for(lambda: busiest_worker(node), 20, 0.0, "a busy conversion worker")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    # Meanwhile another slide arrives: it is converted although a worker just died.
    assert all(o.status == 0 for o in c_store(node.port, small[1]))
    node.wait_published(small[3], small[4], timeout=60)
    node.wait_published(big[3], big[4], timeout=120)
    for a in settled_audits(node, [(study, uid, sops) for folder, files, study, uid, sops in (big, small)]):
        assert (a.lost, a.duplicates, a.partial, a.tiffs, a.conversions) == ([], [], [], [f"{a.uid}.tiff"], 1), a
    assert victim not in node.descendants()
    print(f"worker {victim} killed; both slides published {time.monotonic() - killed_at:.1f} s later")
    node_answers(node)


def test_slide_that_kills_every_worker_ends_in_quarantine(node_process, series_factory):
    # Every conversion attempt of the poison slide is SIGKILLed: after --max-attempts it is quarantined
    # as a poison slide (reason file), never published; /metrics counts the deaths; other slides still convert.
    poison, other = series_factory(BIG), series_factory(SlideSpec(width=1024, height=768, seed=503, downsamples=(1, 4)))
    node = node_process("--mode", "reencode", "--max-attempts", "2")
    assert all(o.status == 0 for o in c_store(node.port, poison[1]))
    kills = 0
    deadline = time.monotonic() + 90
    quarantined = lambda: list((node.folder("quarantine")).rglob("*.reason.txt"))  # noqa: E731
    while not quarantined() and time.monotonic() < deadline:
        if node.log_text().count(f"series {poison[3]}: converting") > kills:
            victim = busiest_worker(node)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                kills += 1
        time.sleep(0.05)
    reasons = quarantined()
    assert reasons, f"not quarantined after {kills} worker kills"
    assert kills == 2, kills
    assert node.published(poison[3]) is None
    assert all(o.status == 0 for o in c_store(node.port, other[1]))
    node.wait_published(other[3], other[4], timeout=60)
    metrics = requests.get(f"{node.url}/metrics", timeout=10).text
    deaths = [line for line in metrics.splitlines() if line.startswith("wsi_node_worker_deaths")]
    assert deaths and float(deaths[0].split()[-1]) >= 2, deaths
    node_answers(node)
