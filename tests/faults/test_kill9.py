"""kill -9 of the node at seeded random moments while 4 scanners push: nothing lost, duplicated or half-written.

Each trial starts a node (its own process group) on a fresh data folder; 4 senders push one series
each with DCMTK `storescu -R -xy`, re-sending the whole series until storescu exits 0, as scanners
do. Meanwhile the node is SIGKILLed (node, forkserver and workers at once) at 1-2 seeded random
moments (the first in the pushes, a second in the re-sends, the settle time or the conversions), and restarted on the same ports and
folders. At the end, per series: 0 lost instances, 0 duplicate copies, 0 partial files, exactly one
published TIFF made from every instance, and one conversion recorded in the state.

3 trials in the default run; 10 when CI=true (the `faults_long` trials).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from converter.testkit import SlideSpec
from tests.faults.audit import node_answers, settled_audits
from tests.faults.harness import storescu_until_ok

SHORT, LONG = 3, 10
TRIALS = [pytest.param(i, marks=[pytest.mark.faults_long] if i >= SHORT else []) for i in range(LONG)]


def _specs(trial: int) -> list[SlideSpec]:
    # Uncompressed level 0 (~9 MB): a push lasts long enough for a kill to land inside it; re-encoded on conversion.
    return [SlideSpec(width=2048, height=1536, seed=900 + 10 * trial + k, transfer_syntax="explicit" if k % 2 == 0 else "jpeg",
                      downsamples=(1, 4)) for k in range(4)]


@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="DCMTK storescu not installed (apt-get install dcmtk)")
@pytest.mark.parametrize("trial", TRIALS)
def test_kill9_while_four_senders_push(trial, node_process, series_factory):
    rng = random.Random(4242 + trial)
    series = [series_factory(spec) for spec in _specs(trial)]
    node = node_process()
    deadline = time.monotonic() + 120
    errors: list[BaseException] = []
    attempts: dict[int, int] = {}

    def sender(k: int) -> None:
        time.sleep(rng.uniform(0, 0.3) if k else 0)
        try:
            attempts[k] = storescu_until_ok(node.port, series[k][0], deadline, aet=f"SCANNER{k}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    # The first kill lands in the pushes; a second one (every other trial) after the restart, in the
    # re-sends, the settle time or the conversions. Each delay counts from the previous (re)start.
    kills = [rng.uniform(0.02, 0.5)] + ([rng.uniform(0.1, 2.5)] if rng.random() < 0.5 else [])
    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    for delay in kills:
        time.sleep(delay)
        node.restart()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    assert not errors, errors
    assert all(not t.is_alive() for t in threads), "a sender did not finish"
    for folder, files, study, uid, sops in series:
        node.wait_published(uid, sops, timeout=60)
    audits = settled_audits(node, [(study, uid, sops) for folder, files, study, uid, sops in series])
    summary = [(a.uid[-8:], len(a.lost), len(a.duplicates), len(a.partial), len(a.tiffs), a.conversions) for a in audits]
    print(f"trial {trial}: kills {[round(k, 2) for k in kills]} s after each (re)start, storescu attempts {attempts}; "
          f"(series, lost, duplicates, partial, tiffs, conversions) {summary}")
    for a in audits:
        assert (a.lost, a.duplicates, a.partial, a.tiffs, a.conversions) == ([], [], [], [f"{a.uid}.tiff"], 1), a
        assert a.state == "published", a
    assert node.incoming() == [], node.incoming()
    node_answers(node)
