"""Shared fixtures of the inbox pipeline tests (folders and settings: tests/converter/inbox/folders.py)."""

from __future__ import annotations

import pytest

from converter.executors.local import make_executor


@pytest.fixture
def executor():
    """The real local executor (a process per conversion), two at a time."""
    ex = make_executor(2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)
