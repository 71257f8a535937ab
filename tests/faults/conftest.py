"""Fixtures of the fault suite: generated series (cached per session) and a node in its own process.

Long versions (marker `faults_long`: more kill -9 trials, more load) run when CI=true, as `.ci/run`
sets it; in the default run they are skipped with that reason, and the short versions run.
"""

from __future__ import annotations

import pytest

from converter.testkit import SlideSpec, series_uids, write_series
from tests.faults.audit import sop_uid
from tests.faults.harness import CI, NodeProcess


@pytest.fixture(scope="session")
def series_factory(tmp_path_factory):
    """`make(spec)` -> (folder, files, study, series, sops), written once per spec and session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("fault-series")

    def make(spec: SlideSpec):
        if spec not in cache:
            folder = root / f"s{len(cache)}"
            files = write_series(spec, folder, workers=1)
            study, uid = series_uids(spec)
            cache[spec] = (folder, files, study, uid, sorted(sop_uid(f) for f in files))
        return cache[spec]

    return make


@pytest.fixture
def node_process(tmp_path):
    """`start(*extra, **kw)` -> a started NodeProcess on tmp_path/data; every one started is stopped after the test."""
    started: list[NodeProcess] = []

    def start(*extra: str, data=None, wait: bool = True, **kw) -> NodeProcess:
        n = NodeProcess(data or tmp_path / f"data{len(started)}", *extra, **kw)
        started.append(n)
        return n.start(wait=wait)

    yield start
    for n in started:
        n.stop(timeout=30)


def pytest_runtest_setup(item):
    if item.get_closest_marker("faults_long") and not CI:
        pytest.skip("long fault version: runs with CI=true (set by .ci/run); the default run has the short version")
