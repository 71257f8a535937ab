"""Load: 4 senders x 10 series at once (2 over DCMTK storescu, 2 over STOW-RS), each published exactly once.

The peak RSS of the node (alone, and with its conversion workers) is printed and written to
load.json under the test's tmp path. The long version (CI=true) pushes bigger slides;
bench/bench_load.py runs the same at benchmark sizes for docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.audit import node_answers
from tests.faults.loadrun import make_inputs, run_load

SIZES = [pytest.param(512, 384, id="512x384"),
         pytest.param(2048, 1536, id="2048x1536", marks=pytest.mark.faults_long)]


@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="DCMTK storescu not installed (apt-get install dcmtk)")
@pytest.mark.parametrize("width,height", SIZES)
def test_four_senders_ten_series_each(width, height, node_process, tmp_path):
    plan = make_inputs(tmp_path / "inputs", width, height, senders=4, per_sender=10)
    node = node_process("--max-associations", "10")
    result = run_load(node, plan, width, height, timeout=240)
    (tmp_path / "load.json").write_text(json.dumps(result.as_dict(), indent=2))
    print(f"load {width}x{height}: 40 series, {result.megabytes} MB, pushed in {result.push_seconds} s, all published after "
          f"{result.publish_seconds} s; peak RSS node {result.peak_rss_node_mb} MB, with workers {result.peak_rss_with_workers_mb} MB "
          f"({tmp_path / 'load.json'})")
    assert result.failures == [], result.failures
    assert result.published == 40
    assert result.peak_rss_node_mb > 0
    node_answers(node)
