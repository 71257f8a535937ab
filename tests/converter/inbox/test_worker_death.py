"""Conversion processes that die, poison slides and memory budgets (issue 10), with real processes.

The inbox pipeline runs with the real executor (converter/executors/local.py): every conversion in
a process of its own, which these tests SIGKILL with os.kill while it converts. Nothing in the
product code knows about the tests: the kill is an outside event, as the OOM killer would be.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from config.settings import BatchSettings, ConversionOptions
from converter.conversion.convert import convert_series
from converter.executors.local import MemoryBudget, WorkerDied
from converter.inbox.pipeline import InboxPipeline
from converter.source.instance import read_instance
from converter.testkit import SlideSpec, series_uids, write_series
from tests.converter.inbox.folders import inbox_settings

WAIT = 90.0


def _drop(settings: BatchSettings, name: str, spec: SlideSpec) -> str:
    written = write_series(spec, Path(settings.inbox) / name)
    assert written
    NAMES[name] = sorted(p.name for p in written)
    return series_uids(spec)[1]


NAMES: dict[str, list[str]] = {}
"""The file names of each drop, as write_series wrote them."""


def _run_until(pipeline: InboxPipeline, done, on_tick=None, timeout: float = WAIT) -> None:
    """Passes and collections, as the node's loop runs them, until `done()` (or fail after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on_tick is not None:
            on_tick()
        pipeline.run_pass()
        pipeline.collect(wait=False, timeout=0.1)
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out; jobs {list(pipeline.jobs)}, faults {dict(pipeline.retries.faults)}")


def _kill_when_running(executor, pipeline: InboxPipeline, uid: str, scratch_in: Path | None = None, timeout: float = 30) -> int:
    """SIGKILL the process converting `uid` once it runs (and, with `scratch_in`, once it wrote scratch files there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = pipeline.jobs.get(uid)
        pid = executor.pid_of(job.future) if job is not None else None
        if pid is not None and (scratch_in is None or any(p.name.startswith(".") for p in scratch_in.iterdir())):
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.01)
    raise AssertionError(f"no conversion process of {uid} to kill")


def test_a_killed_conversion_is_retried_across_a_restart_and_published_once(tmp_path, executor):
    s = inbox_settings(tmp_path)
    uid = _drop(s, "caseA", SlideSpec(width=8192, height=6144, seed=501))
    p = InboxPipeline(s, executor)
    p.recover()
    assert p.run_pass().submitted == 1
    pid = _kill_when_running(executor, p, uid, scratch_in=Path(s.serving))
    _run_until(p, lambda: not p.jobs)
    assert p.retries.faults["worker-death"] == 1 and p.retries.faults["retry"] == 1
    row = p.store.series(uid)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert row["error"].startswith("attempt 1 of 3: the conversion process died (signal 9, SIGKILL; out of memory?)")
    assert not [f for f in Path(s.serving).iterdir() if f.name.startswith(".")], "the killed conversion's scratch files stay"
    assert not list(Path(s.serving).glob(f"*{pid}*"))
    # A restart keeps the count: the next attempt is number 2, and says why.
    p.store.close()
    p = InboxPipeline(s, executor)
    p.recover()
    _run_until(p, lambda: (p.store.series(uid) or {}).get("state") == "published")
    assert p.store.series(uid)["conversions"] == 1 and p.store.series(uid)["attempts"] == 0
    outputs = sorted(f.name for f in Path(s.serving).iterdir())
    assert outputs == [f"{uid}.json", f"{uid}.tiff"]
    sidecar = json.loads((Path(s.serving) / f"{uid}.json").read_text())
    assert any(n.startswith("attempt 2 of 3; before: attempt 1 of 3: the conversion process died (signal 9") for n in sidecar["notes"])
    assert sorted(f.name for f in (Path(s.archive) / "caseA").iterdir()) == NAMES["caseA"]
    assert not list(Path(s.inbox).rglob("*.dcm"))
    p.store.close()


def test_a_poison_slide_is_quarantined_after_max_attempts_while_another_converts(tmp_path, executor):
    s = inbox_settings(tmp_path)
    poison = _drop(s, "poison", SlideSpec(width=8192, height=6144, seed=502))
    other = _drop(s, "other", SlideSpec(width=2048, height=1536, seed=503))
    p = InboxPipeline(s, executor, max_attempts=3)
    kills: list[int] = []

    def kill_poison() -> None:
        job = p.jobs.get(poison)
        pid = executor.pid_of(job.future) if job is not None else None
        if pid is not None and pid not in kills:
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)

    _run_until(p, lambda: (p.store.series(poison) or {}).get("state") == "failed"
               and (p.store.series(other) or {}).get("state") == "published", on_tick=kill_poison)
    assert len(kills) == 3
    assert p.retries.faults["worker-death"] == 3 and p.retries.faults["retry"] == 2 and p.retries.faults["poison"] == 1
    reason = (Path(s.quarantine) / f"{poison}.reason.txt").read_text()
    assert "poison slide: 3 conversion attempt(s)" in reason and "signal 9, SIGKILL" in reason
    assert sorted(f.name for f in (Path(s.quarantine) / poison / "poison").iterdir()) == NAMES["poison"]
    assert sorted(f.name for f in (Path(s.archive) / "other").iterdir()) == NAMES["other"]
    assert (Path(s.serving) / f"{other}.tiff").exists() and not (Path(s.serving) / f"{poison}.tiff").exists()
    assert not [f for f in Path(s.serving).iterdir() if f.name.startswith(".")]
    p.store.close()


def test_attempts_left_by_a_node_that_died_count(tmp_path, executor):
    """A slide that kills the node itself (not only its worker) must not loop forever across restarts."""
    s = inbox_settings(tmp_path)
    uid = _drop(s, "caseB", SlideSpec(width=2048, height=1536, seed=504))
    p = InboxPipeline(s, executor, max_attempts=2)
    p.run_pass()
    p.collect(wait=True)
    assert p.store.series(uid)["state"] == "published"
    p.store.close()
    # As a node killed during its second attempt leaves it: converting, attempts 2, the originals back in the inbox.
    uid2 = _drop(s, "caseC", SlideSpec(width=2048, height=1536, seed=505))
    p = InboxPipeline(s, executor, max_attempts=2)
    p.scan()
    p.store.set_series(uid2, state="converting", attempts=2, error="attempt 1 of 2: the conversion process died (signal 9, SIGKILL)")
    p.store.close()
    p = InboxPipeline(s, executor, max_attempts=2)
    p.recover()
    assert p.run_pass().submitted == 0
    assert p.store.series(uid2)["state"] == "failed" and p.retries.faults["poison"] == 1
    assert "poison slide: 2 conversion attempt(s)" in (Path(s.quarantine) / f"{uid2}.reason.txt").read_text()
    p.store.close()


def test_a_conversion_over_its_memory_budget_fails_with_a_reason_and_the_executor_goes_on(tmp_path, executor):
    folder = tmp_path / "wide"
    # Memory grows with the frame size only (re-encoding works in 2048 px blocks): one 4096 x 4096 frame.
    write_series(SlideSpec(width=4096, height=4096, tile_size=4096, downsamples=(1,), seed=506), folder, workers=1)
    instances = [read_instance(f) for f in sorted(folder.glob("*.dcm"))]
    out = tmp_path / "out" / "wide.tiff"
    out.parent.mkdir()
    options = ConversionOptions(mode="reencode")
    # 250 MB of data: below what decoding 4096 x 4096 frames on two threads needs, above an idle process.
    report = executor.submit(MemoryBudget(convert_series, 250 << 20), instances, out, options).result(WAIT)
    assert report.status == "out-of-memory", report.error
    assert "needed more memory than its budget of 250 MB" in report.error and "conversion_memory_mb" in report.error
    assert "Unable to allocate" in report.error, report.error  # it failed converting, not at the start
    assert list(out.parent.iterdir()) == []  # nothing partial, no scratch files
    # The same executor converts it with the budget the pipeline would give it.
    from converter.executors.local import conversion_budget

    budget = conversion_budget(4096, 4096, 3, options.threads, 4096 << 20)
    report = executor.submit(MemoryBudget(convert_series, budget), instances, out, options).result(WAIT)
    assert report.ok, report.error
    assert sorted(f.name for f in out.parent.iterdir()) == ["wide.json", "wide.tiff"]


def test_a_slide_declared_beyond_the_memory_cap_is_refused_before_converting(tmp_path, executor):
    s = inbox_settings(tmp_path)
    uid = _drop(s, "wide", SlideSpec(width=4096, height=4096, tile_size=4096, downsamples=(1,), seed=507))
    # 4096 x 4096 px frames: budgeted 256 MB + per thread (16 MB + 4 blocks of 12 MB + 2 frames of 48 MB), >= 416 MB
    p = InboxPipeline(s, executor, memory_cap_mb=400)
    assert p.run_pass().submitted == 0
    row = p.store.series(uid)
    assert row["state"] == "failed" and "more than conversion_memory_mb (400 MB)" in row["error"]
    assert (Path(s.quarantine) / f"{uid}.reason.txt").exists() and not list(Path(s.serving).iterdir())
    p.store.close()


def test_the_executor_attributes_a_death_to_its_task_only(executor):
    slow = executor.submit(time.sleep, 5)
    other = executor.submit(sum, [1, 2, 3])
    assert other.result(30) == 6
    deadline = time.monotonic() + 30
    while executor.pid_of(slow) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(executor.pid_of(slow), signal.SIGKILL)
    with pytest.raises(WorkerDied) as died:
        slow.result(30)
    assert died.value.signal == signal.SIGKILL and "signal 9, SIGKILL" in str(died.value)
    assert executor.submit(sum, [4, 5]).result(30) == 9  # nothing to recreate: the next task gets a fresh process
    assert executor.health()[0] and executor.deaths == 1


def test_a_stop_between_publishing_and_archiving_archives_the_originals_at_restart(tmp_path, executor):
    """Results.series records "published", then archives: a kill between the two (seen in the kill -9
    trials) left the originals in the inbox for good. At restart they are archived, not converted again."""
    s = inbox_settings(tmp_path)
    uid = _drop(s, "caseE", SlideSpec(width=1024, height=768, seed=509))
    p = InboxPipeline(s, executor)
    p.results.archive = lambda rows: None  # the node stops right after recording the publication
    p.run_pass()
    p.collect(wait=True)
    assert p.store.series(uid)["state"] == "published"
    assert sorted(f.name for f in (Path(s.inbox) / "caseE").iterdir()) == NAMES["caseE"]
    p.store.close()
    p = InboxPipeline(s, executor)
    p.recover()
    archived = sorted(f.name for f in Path(s.archive).rglob("*.dcm"))
    assert archived == NAMES["caseE"], archived
    assert not list((Path(s.inbox) / "caseE").glob("*.dcm"))
    assert p.run_pass().submitted == 0 and p.store.series(uid)["conversions"] == 1
    p.store.close()
