"""`wsi-node convert` end to end: one series (converted in a forked child) and several (the executor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def _cli(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "scp.cli", "convert", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_the_copy_starts_with_the_command_and_leaves_nothing_behind(tmp_path):
    """converter.tiff.forked_copier.ForkedCopier: started before the headers are read, adopted, its file renamed."""
    from converter.source.discover import discover
    from tests.converter.conversion.test_spliced_copy import _tiles_equal_frames

    write_series(SlideSpec(width=1500, height=1100), tmp_path / "in")
    out = tmp_path / "out" / "slide.tiff"
    r = _cli([tmp_path / "in", "-o", out, "--mode", "copy"])
    assert r.returncode == 0, r.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["source"]["copy_started"] == "with the command"
    (_uid, instances), = discover([tmp_path / "in"]).series.items()
    compared, _fills = _tiles_equal_frames(out, instances)
    assert compared > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["slide.json", "slide.tiff"]  # no .early, no .tmp


def test_an_early_copy_the_plan_does_not_take_is_removed(tmp_path):
    """200 px frames cannot be TIFF tiles (multiple of 16): the plan re-encodes, the early copy is dropped."""
    write_series(SlideSpec(width=1500, height=1100, tile_size=200), tmp_path / "in")
    out = tmp_path / "out" / "slide.tiff"
    r = _cli([tmp_path / "in", "-o", out, "--mode", "auto"])
    assert r.returncode == 0, r.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert all(lv["action"] == "reencode" for lv in report["levels"])
    assert "copy_started" not in report["source"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["slide.json", "slide.tiff"]


def test_a_failed_conversion_removes_the_early_copy(tmp_path):
    from converter.source.instance import read_instance

    write_series(SlideSpec(width=1500, height=1100), tmp_path / "in")
    level0 = next(p for p in sorted((tmp_path / "in").glob("*.dcm")) if read_instance(p).flavor == "VOLUME")
    data = bytearray(level0.read_bytes())
    data[-40:-8] = bytes(32)  # the last frame loses its end-of-image marker
    level0.write_bytes(bytes(data))
    out = tmp_path / "out" / "slide.tiff"
    r = _cli([tmp_path / "in", "-o", out, "--mode", "copy"])
    assert r.returncode == 1
    assert "not a complete JPEG bitstream" in r.stderr
    assert list(out.parent.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_scratch_of_killed_commands_is_removed_and_that_of_a_running_one_kept(tmp_path):
    """converter.conversion.run.stale_scratch: only our scratch names, only of processes that are gone."""
    write_series(SlideSpec(width=600, height=400), tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = [out / f".slide.tiff.{dead}.tmp", out / f".slide.json.{dead}.tmp", out / f".other.TIF.{dead}.early"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    work = out / f".slide.tiff.{dead}.work"
    work.mkdir()
    (work / "level-0.spool").write_bytes(b"x")
    running = out / f".slide.tiff.{os.getpid()}.tmp"  # this test's process: a conversion still running
    running.write_bytes(b"busy")
    not_ours = out / f".notes.txt.{dead}.tmp"
    not_ours.write_bytes(b"a user's file")
    r = _cli([tmp_path / "in", "-o", out / "slide.tiff"])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([running.name, not_ours.name, "slide.json", "slide.tiff"])
    for path in [*stale, work]:
        assert f"removed {path}, left by a conversion whose process was killed" in r.stderr


def test_a_command_killed_outright_leaves_its_temporary_tiff_and_the_next_command_removes_it(tmp_path):
    write_series(SlideSpec(width=6000, height=4000), tmp_path / "in")
    out = tmp_path / "out" / "slide.tiff"
    proc = subprocess.Popen([sys.executable, "-m", "scp.cli", "convert", str(tmp_path / "in"), "-o", str(out), "--mode", "reencode"],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not list(out.parent.glob(".slide.tiff.*.tmp")):
            assert proc.poll() is None, "the conversion ended before its temporary TIFF was seen"
            assert time.monotonic() < deadline, "no temporary TIFF within 60 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its forked conversion
        proc.wait(timeout=30)
    left = sorted(p.name for p in out.parent.iterdir())
    assert any(name.startswith(".slide.tiff.") and name.endswith(".tmp") for name in left), left
    r = _cli([tmp_path / "in", "-o", out])
    assert r.returncode == 0, r.stderr
    assert "left by a conversion whose process was killed" in r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["slide.json", "slide.tiff"]
