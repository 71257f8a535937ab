"""Tests of converter/testkit/__main__.py: ``python -m converter.testkit`` writes what write_series writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from converter.testkit import SlideSpec, write_series
from converter.testkit.__main__ import main

REPO = Path(__file__).resolve().parents[3]


def test_main_writes_the_series_of_the_spec_its_flags_describe(tmp_path: Path, capsys) -> None:
    argv = [str(tmp_path / "cli"), "--width", "300", "--height", "200", "--tile-size", "128", "--label",
            "--downsamples", "1", "2", "--pixel-spacing-mm", "0.0003", "0.0004", "--transfer-syntax", "explicit"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    spec = SlideSpec(width=300, height=200, tile_size=128, label=True, downsamples=(1, 2),
                     pixel_spacing_mm=(0.0003, 0.0004), transfer_syntax="explicit")
    expected = write_series(spec, tmp_path / "api")
    assert [Path(p).name for p in printed] == [p.name for p in expected] == ["level-0.dcm", "level-1.dcm", "label.dcm"]
    for p, e in zip(printed, expected):
        assert Path(p).read_bytes() == e.read_bytes(), e.name


def test_python_dash_m_runs(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "converter.testkit", str(tmp_path), "--width", "64", "--height", "64",
                          "--tile-size", "64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "level-0.dcm")]
