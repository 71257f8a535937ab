"""InboxPipeline.recover with the tracker: verdicts and series rows that a crash left out of step.

A finished conversion is recorded twice: the series row (state.py) and the tracker's verdict
(tracker.py). Results.series writes the row first; tests/faults/test_kill_points.py kills a real
node between the two. Nodes before that order wrote the verdict first, and a state database they
left after a crash between the two (a tracker saying "converted" for a series row still
"converting") must not hold the slide forever: that state is built here with the product's own
calls, then a new pipeline recovers from it with a real conversion process.
"""

from __future__ import annotations

import time
from pathlib import Path

from config.settings import BatchSettings
from converter.inbox.pipeline import InboxPipeline
from converter.inbox.state import StateStore
from converter.inbox.tracker import Tracker
from converter.source.instance import read_instance
from converter.testkit import SlideSpec, series_uids, write_series
from tests.converter.inbox.folders import inbox_settings


def _db(s: BatchSettings) -> Path:
    return Path(s.state_dir) / "wsi-node.sqlite"


def _dropped_and_tracked(s: BatchSettings, spec: SlideSpec) -> tuple[list[Path], str, Tracker]:
    """The series written into the inbox and every instance of it given to a tracker, 5 s ago."""
    files = write_series(spec, Path(s.inbox) / "case")
    tracker = Tracker(_db(s), settle=0, quiet=600)
    for f in files:
        tracker.on_instance(read_instance(f), None, "inbox", time.time() - 5)
    return files, series_uids(spec)[1], tracker


def _run_until(p: InboxPipeline, done, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.run_pass()
        p.collect(wait=False, timeout=0.1)
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: series {[dict(r) for r in p.store.all_series()]}, tracker "
                         f"{ {u: (t.status, t.converted_at) for u, t in p.tracker.series.items()} }")


def test_a_verdict_recorded_without_its_series_row_does_not_hold_the_slide(tmp_path, executor):
    s = inbox_settings(tmp_path, max_concurrent=1)
    spec = SlideSpec(width=1024, height=768, seed=621, downsamples=(1, 4))
    files, uid, tracker = _dropped_and_tracked(s, spec)
    # What the old order left: every instance tracked, the verdict "converted", the row "converting", no output.
    covered = tracker.started(uid)
    tracker.finished(uid, covered, True)
    store = StateStore(_db(s))
    store.set_series(uid, state="converting", attempts=1)
    store.close()
    tracker.close()

    tracker = Tracker(_db(s), settle=0, quiet=600)
    p = InboxPipeline(s, executor, tracker=tracker)
    p.recover()
    assert tracker.decision(uid).action == "convert", tracker.decision(uid)
    _run_until(p, lambda: (p.store.series(uid) or {}).get("state") == "published" and not list(Path(s.inbox).rglob("*.dcm")))
    assert p.store.series(uid)["conversions"] == 1
    assert tracker.series[uid].status == "published"
    assert sorted(f.name for f in (Path(s.archive) / "case").iterdir()) == sorted(f.name for f in files)
    p.store.close()
    tracker.close()


def test_a_series_row_recorded_without_the_verdict_settles_the_tracker(tmp_path, executor):
    s = inbox_settings(tmp_path, max_concurrent=1)
    spec = SlideSpec(width=1024, height=768, seed=622, downsamples=(1, 4))
    files, uid, tracker = _dropped_and_tracked(s, spec)
    p = InboxPipeline(s, executor, tracker=tracker)
    p.recover()
    _run_until(p, lambda: (p.store.series(uid) or {}).get("state") == "published")
    # The crash of the new order: the row says published, the tracker still converting.
    tracker.started(uid)
    assert tracker.series[uid].status == "converting"
    p.store.close()
    tracker.close()

    tracker = Tracker(_db(s), settle=0, quiet=600)
    p = InboxPipeline(s, executor, tracker=tracker)
    p.recover()
    assert tracker.series[uid].status == "published"
    assert tracker.decision(uid).action == "wait" and tracker.decision(uid).rule == "converted"
    p.run_pass()
    assert not p.jobs and p.store.series(uid)["conversions"] == 1
    p.store.close()
    tracker.close()
