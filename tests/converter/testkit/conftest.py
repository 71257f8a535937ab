"""Fixtures of the testkit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the series written by :func:`tests.converter.testkit.helpers.write` (cached per spec)."""
    return tmp_path_factory.mktemp("synthetic")
