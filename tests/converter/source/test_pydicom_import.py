"""pydicom is imported without requests and Pillow (start-up time, issue 14), and both stay importable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

_SCRIPT = r"""
import sys
from converter.source.discover import discover
from converter.testkit import SlideSpec, write_series
print("hidden", sorted(m for m in ("requests", "PIL") if m in sys.modules))
files = write_series(SlideSpec(width=300, height=200), sys.argv[1])
found = discover([sys.argv[1]])
print("series", len(found.series), "rejected", len(found.rejected))
import requests, PIL.Image  # importable as ever
print("importable", bool(requests.get), bool(PIL.Image.open))
"""


@pytest.mark.skipif(not (importlib.util.find_spec("requests") and importlib.util.find_spec("PIL")),
                    reason="requests or Pillow not installed: nothing to hide")
def test_headers_read_without_requests_and_pillow_which_stay_importable(tmp_path):
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "in")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "hidden []" in lines
    assert "series 1 rejected 0" in lines
    assert "importable True True" in lines
