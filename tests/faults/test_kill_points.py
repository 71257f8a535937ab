"""kill -9 of the node exactly between the steps that record a finished conversion, then a restart.

A finished conversion is recorded in three steps on the node's main loop (converter/inbox/results.py):
the tracker's verdict, the series row ("published", the count) and the move of the originals to the
archive. test_kill9 lands its kills at random moments and reaches these gaps only by luck (a CI run
once left a slide published but "pending", its originals in the inbox, because the tracker had
recorded "converted" and the series row had not). Here a start-up hook (tests/faults/killpoint)
SIGKILLs the node right after one chosen step; after the restart the slide must end as after a clean
run: published once from every instance, originals archived, nothing left in the inbox.
"""

from __future__ import annotations

import os
import sqlite3

import pytest

from converter.testkit import SlideSpec
from tests.faults.audit import node_answers, settled_audits
from tests.faults.harness import c_store, wait_for

SPEC = SlideSpec(width=1024, height=768, seed=611, downsamples=(1, 4))
HOOK = os.path.join(os.path.dirname(__file__), "killpoint")

POINTS = {
    # the result is back from the conversion process, nothing recorded yet
    "result-arrived": ("converter.inbox.results:Results.series", "before", ""),
    # the tracker says "converted"; the series row still says "converting"
    "tracker-recorded": ("converter.inbox.tracker:Tracker.finished", "after", ""),
    # the series row says "published"; the originals are still in the inbox
    "series-recorded": ("converter.inbox.state:StateStore.set_series", "after", "state=published"),
}


@pytest.mark.parametrize("point", sorted(POINTS))
def test_kill_between_recording_steps_resumes_to_one_published_slide(point, node_process, series_factory, tmp_path):
    folder, files, study, uid, sops = series_factory(SPEC)
    target, when, condition = POINTS[point]
    marker = tmp_path / "killed"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (HOOK, os.environ.get("PYTHONPATH", "")) if p),
           "WSI_TEST_KILL_AT": target, "WSI_TEST_KILL_ONCE": str(marker),
           "WSI_TEST_KILL_WHEN": when, "WSI_TEST_KILL_IF": condition}
    node = node_process(env=env)
    assert [o.status for o in c_store(node.port, files)] == [0] * len(files)
    wait_for(lambda: not node.alive(), 60, 0.05, f"the node to be killed after {target}")
    assert marker.exists(), f"the node exited without reaching {target}:\n{node.log_text()[-3000:]}"
    node.restart()
    node.wait_published(uid, sops, timeout=60)
    [a] = settled_audits(node, [(study, uid, sops)], timeout=20)
    assert a.ok and a.state == "published", f"after the kill ({point}) and a restart: {a}\n{node.log_text()[-4000:]}"
    assert _tracker_status(node, uid) == "published"  # the status page does not show it converting forever
    assert node.incoming() == []
    node_answers(node)


def _tracker_status(node, uid: str) -> str | None:
    con = sqlite3.connect(f"file:{node.folder('state') / 'wsi-node.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT status FROM tracked_series WHERE uid=?", (uid,)).fetchone()
    finally:
        con.close()
    return row[0] if row else None
