"""`wsi-node convert` end to end: one series (converted in a forked child) and several (the executor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from converter.testkit import SlideSpec, series_uids, write_series
from scp.cli import main as wsi_node

REPO = Path(__file__).resolve().parents[3]


def test_two_series_in_one_folder_are_both_converted(tmp_path):
    specs = [SlideSpec(width=600, height=400, seed=1), SlideSpec(width=600, height=400, seed=2)]
    for name, spec in zip("ab", specs):
        write_series(spec, tmp_path / "in" / name)
    uids = [series_uids(spec)[1] for spec in specs]
    assert wsi_node(["convert", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-c", "2"]) == 0
    published = sorted(p.name for p in (tmp_path / "out").glob("*.tiff"))
    assert published == sorted(f"{u}.tiff" for u in uids)


def test_one_series_to_a_named_file_from_a_fresh_command(tmp_path):
    """The real command line (a single-threaded process, so the forked child is used), its sidecar."""
    write_series(SlideSpec(width=600, height=400), tmp_path / "in")
    out = tmp_path / "out" / "slide.tiff"
    r = subprocess.run([sys.executable, "-m", "scp.cli", "convert", str(tmp_path / "in"), "-o", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 of 1 series converted and verified" in r.stderr
    report = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert report["output"].endswith("slide.tiff") and not report.get("error")
    assert out.stat().st_size > 0


def test_help_does_not_import_the_conversion_engine():
    code = ("import sys\nfrom scp.cli import main\ntry:\n    main(['convert', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('pydicom', 'numpy', 'imagecodecs', 'tifffile', 'pynetdicom', 'converter.conversion.convert')"
            " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_a_failing_command_line_says_why_and_exits_1(tmp_path):
    """The command line ends its process at once after converting: the exit status and the log still arrive."""
    r = subprocess.run([sys.executable, "-m", "scp.cli", "convert", str(tmp_path / "missing"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert "no such file or folder" in r.stderr and "no whole-slide image series found" in r.stderr


def test_a_conversion_child_killed_outright_leaves_no_scratch_files(tmp_path, monkeypatch):
    import os

    import converter.conversion.convert as engine

    src = tmp_path / "in"
    write_series(SlideSpec(width=600, height=400, tile_size=256), src)
    out = tmp_path / "out.tiff"

    def dies(instances, output, options):  # what a codec crash looks like from outside: no cleanup, no result
        Path(output).parent.joinpath(f".{Path(output).name}.{os.getpid()}.tmp").write_bytes(b"partial")
        Path(output).parent.joinpath(f".{Path(output).name}.{os.getpid()}.work").mkdir()
        os._exit(9)

    monkeypatch.setattr(engine, "convert_series", dies)
    assert wsi_node(["convert", str(src), "-o", str(out)]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
