"""Shared fixtures: generated slides, the real sample, and output checks with real tile readers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WSI_NODE_SHARED", REPO.parent / "shared"))
GCP_SAMPLE = SHARED / "testdata" / "gcp-cmu-1-small-region"


@pytest.fixture(scope="session")
def gcp_sample() -> Path:
    if not GCP_SAMPLE.is_dir():
        pytest.skip(f"real sample not available: {GCP_SAMPLE} is absent (it lives in ../shared, outside the repository)")
    return GCP_SAMPLE
