"""Fixtures of the receiving-node tests."""

from __future__ import annotations

import pytest

from tests.support.node import RunningNode


@pytest.fixture
def node(tmp_path):
    n = RunningNode(tmp_path)
    yield n
    n.stop()
