"""converter.tiff.copier: both copiers place every range at its planned offset (same place in a 4 KiB
block as in the source, a large range in a 2 MiB span), copy in steps that end on step multiples of
the source, zero unused tails, hand their errors to join, and the forked one is reaped
and its file removed unless a conversion claimed it."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from converter.tiff import copier as copier_module
from converter.tiff import splice as splice_module
from converter.tiff.copier import BLOCK, FOLIO, LARGE_RUN, Copier, Run, plan_places, steps
from converter.tiff.forked_copier import ForkedCopier
from converter.tiff.splice import LevelSplice, append_levels


def _sources(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for name, size in (("a.bin", 300_001), ("b.bin", 70_000)):
        p = tmp_path / name
        p.write_bytes(rng.integers(0, 255, size, np.uint8).tobytes())
        paths.append(p)
    return [Run(str(paths[0]), 1234, 300_001), Run(str(paths[1]), 10, 69_000), Run(str(paths[0]), 5, 900)]


def test_places_keep_the_source_block_position():
    places, end = plan_places([Run("x", 1234, 5000), Run("y", 10, 20)], 16)
    assert [p.at % BLOCK for p in places] == [1234, 10]
    assert places[1].at >= places[0].at + 5000 - 1234 and end == places[1].at + 10


def test_a_large_range_keeps_its_source_place_in_a_2_mib_span():
    big = Run("x", 4_399_726, 4_399_726 + LARGE_RUN)
    places, end = plan_places([big, Run("y", 10, 20)], 16)
    assert places[0].at % FOLIO == big.start % FOLIO and places[0].at - 16 < FOLIO
    assert places[1].at % BLOCK == 10 and places[1].at - (places[0].at + LARGE_RUN) < BLOCK


def test_steps_end_on_multiples_of_the_step_in_the_source():
    pieces = steps(622, 3 * 4096 + 5, 4096)
    assert pieces == [(622, 4096 - 622), (4096, 4096), (8192, 4096), (12288, 5)]
    assert steps(8192, 8192, 4096) == [] and steps(0, 10, 4096) == [(0, 10)]


@pytest.mark.parametrize("step", [None, 4096 * 3])
@pytest.mark.parametrize("kind", [Copier, ForkedCopier])
def test_every_range_lands_where_planned_and_tails_are_zeroed(tmp_path, kind, step, monkeypatch):
    if step is not None:  # many steps per range, each but the first starting on a step multiple
        monkeypatch.setattr(copier_module, "_STEP", step)
    runs = _sources(tmp_path)
    out = tmp_path / "out.bin"
    copier = kind(tmp_path / ".early" if kind is ForkedCopier else out, runs, 16)
    copier.clear_after({0: 200_000})
    copier.claim(out)
    copier.join()
    data = out.read_bytes()
    for k, (run, place) in enumerate(zip(runs, copier.places)):
        src = open(run.path, "rb").read()[run.start : run.stop]
        got = data[place.at : place.at + run.stop - run.start]
        if k == 0:
            cut = 200_000 - run.start
            assert got[:cut] == src[:cut] and got[cut:] == bytes(len(src) - cut)
        else:
            assert got == src
        assert copier.where(Run(run.path, run.start + 3, run.stop)) == place.at + 3
    assert copier.where(Run(runs[1].path, 0, 5)) is None
    if kind is ForkedCopier:
        copier.dispose()
        assert out.exists() and not (tmp_path / ".early").exists()  # claimed: kept under the conversion's name


@pytest.mark.parametrize("kind", [Copier, ForkedCopier])
def test_a_copy_error_is_raised_by_join(tmp_path, kind):
    copier = kind(tmp_path / "out.bin", [Run(str(tmp_path / "gone.bin"), 0, 10)], 16)
    with pytest.raises(OSError) as caught:
        copier.join()
    assert caught.value.errno == errno.ENOENT
    if kind is ForkedCopier:
        copier.dispose()


def test_forked_copy_claimed_is_kept_and_the_copier_reaped(tmp_path):
    runs = _sources(tmp_path)
    copier = ForkedCopier(tmp_path / ".x.early", runs, 16)
    copier.claim(tmp_path / "x.tmp")
    copier.join()
    pid = copier.pid
    copier.dispose()
    assert (tmp_path / "x.tmp").stat().st_size == copier.end and not (tmp_path / ".x.early").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "x.tmp"]
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # already reaped
    copier.dispose()  # twice is harmless


def test_forked_copy_cancelled_ends_and_join_says_so(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as fp:
        fp.truncate(2 << 30)  # sparse: the copy takes a while, the disk nothing
    copier = ForkedCopier(tmp_path / ".x.early", [Run(str(big), 0, 2 << 30)], 16)
    copier.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        copier.join()
    copier.dispose()
    assert not (tmp_path / ".x.early").exists()


def test_an_unclaimed_forked_copy_leaves_no_file_even_when_the_command_is_killed(tmp_path):
    """O_TMPFILE: the copy has no name until claimed; a killed command leaves nothing, its copier dies too."""
    import subprocess
    import sys
    import time

    big = tmp_path / "big.bin"
    with open(big, "wb") as fp:
        fp.truncate(2 << 30)
    code = (f"import time\nfrom converter.tiff.copier import Run\nfrom converter.tiff.forked_copier import ForkedCopier\n"
            f"c = ForkedCopier(__import__('pathlib').Path({str(tmp_path / '.x.early')!r}), [Run({str(big)!r}, 0, 2 << 30)], 16)\n"
            f"print(c.pid, flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]))
    copier_pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(copier_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the copier outlived the command")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_the_splice_path_places_runs_where_the_early_copy_would(tmp_path, monkeypatch):
    """converter.tiff.splice appends without an early copy: same places, same bytes, chunked at chunk multiples."""
    monkeypatch.setattr(splice_module, "_CHUNK", 4096 * 2)
    runs = _sources(tmp_path)[:2]
    out = tmp_path / "out.bin"
    out.write_bytes(bytes(16))
    level = LevelSplice(runs, np.array([0, 1], np.int64), np.array([0, 0], np.uint64),
                        np.array([10, 10], np.uint64), b"")
    placed = append_levels(out, {0: level})
    offsets, _counts = placed[0]
    expected, _end = plan_places(runs, 16)
    assert [int(o) for o in offsets] == [p.at for p in expected]
    data = out.read_bytes()
    for run, p in zip(runs, expected):
        assert data[p.at : p.at + run.stop - run.start] == open(run.path, "rb").read()[run.start : run.stop]
