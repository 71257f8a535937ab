"""The inbox pipeline end to end on real folders (batch-converter as users run it)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from config.settings import ConversionOptions
from converter.cli.batch_converter import main as batch_main
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.testkit import SlideSpec, render_region, series_uids, write_non_wsi, write_series
from tests.readers import open_large_image, open_openslide

REPO = Path(__file__).resolve().parents[3]


def age(folder: Path, seconds: float = 120) -> None:
    """Make every file look settled (last written `seconds` ago)."""
    old = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (old, old))


def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("inbox", "serving", "archive", "quarantine", "state")}
    d["inbox"].mkdir(exist_ok=True)
    return d


def args(d: dict[str, Path], *extra: str) -> list[str]:
    return ["-i", str(d["inbox"]), "-s", str(d["serving"]), "-a", str(d["archive"]), "--quarantine", str(d["quarantine"]),
            "--state-dir", str(d["state"]), *extra]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def make_svs(target: Path, seed: int) -> None:
    src = target.parent / f".src-{seed}"
    write_series(SlideSpec(width=1000, height=800, seed=seed), src)
    (uid, instances), = discover([src]).series.items()
    report = convert_series(instances, target, ConversionOptions(layout="svs"))
    assert report.ok
    target.with_suffix(".json").unlink()
    for f in src.iterdir():
        f.unlink()
    src.rmdir()


@pytest.fixture
def mixed_drop(tmp_path):
    d = dirs(tmp_path)
    a, b = SlideSpec(width=1500, height=1100, seed=11, label=True), SlideSpec(width=1200, height=900, seed=12, transfer_syntax="jpeg2000")
    write_series(a, d["inbox"] / "caseA")
    write_series(b, d["inbox"] / "caseB" / "slide")
    write_non_wsi("ct", d["inbox"] / "caseB" / "slide", *series_uids(b))
    make_svs(d["inbox"] / "scanner-export.svs", seed=13)
    tifffile.imwrite(d["inbox"] / "photo.tif", render_region(SlideSpec(width=900, height=700), 0, 0, 900, 700), photometric="rgb")
    (d["inbox"] / "notes.txt").write_text("not a slide")
    (d["inbox"] / "caseC.dcm.part").write_bytes(b"partial upload")
    age(d["inbox"])
    return d, a, b


def test_mixed_drop_one_pass(mixed_drop, caplog):
    d, a, b = mixed_drop
    code = batch_main(args(d))
    assert code == 1  # junk and a CT were quarantined
    uid_a, uid_b = series_uids(a)[1], series_uids(b)[1]
    serving = files_under(d["serving"])
    assert serving == sorted([f"{uid_a}.json", f"{uid_a}.tiff", f"{uid_b}.json", f"{uid_b}.tiff",
                              "photo.json", "photo.tiff", "scanner-export.svs"])
    for name in (f"{uid_a}.tiff", f"{uid_b}.tiff", "photo.tiff", "scanner-export.svs"):
        with open_openslide(d["serving"] / name) as slide:
            assert slide.level_count >= 3
    assert "label" in open_large_image(d["serving"] / f"{uid_a}.tiff").getAssociatedImagesList()
    # Originals archived with their relative paths; the converted plain TIFF's original too.
    archived = files_under(d["archive"])
    assert "caseA/level-0.dcm" in archived and "caseA/label.dcm" in archived
    assert "caseB/slide/level-0.dcm" in archived and "photo.tif" in archived
    # Junk and the CT in quarantine, each with a reason file naming the problem.
    quarantined = files_under(d["quarantine"])
    assert {"notes.txt", "notes.txt.reason.txt", "caseB/slide/ct-0.dcm", "caseB/slide/ct-0.dcm.reason.txt"} <= set(quarantined)
    assert "CT Image Storage" in (d["quarantine"] / "caseB/slide/ct-0.dcm.reason.txt").read_text()
    # The temporary upload is untouched; nothing else is left in the inbox.
    assert files_under(d["inbox"]) == ["caseC.dcm.part"]
    # A second pass has nothing to do and converts nothing again.
    assert batch_main(args(d)) == 0
    with sqlite3.connect(d["state"] / "wsi-node.sqlite") as db:
        assert dict(db.execute("SELECT uid, conversions FROM series")) == {uid_a: 1, uid_b: 1}


def test_growing_file_is_not_picked_up(tmp_path):
    d = dirs(tmp_path)
    spec = SlideSpec(width=800, height=600, seed=21)
    write_series(spec, d["inbox"] / "drop")
    age(d["inbox"])
    os.utime(d["inbox"] / "drop" / "level-1.dcm")  # just written: the drop is still arriving
    assert batch_main(args(d, "--settle-seconds", "30")) == 0
    assert files_under(d["serving"]) == []
    assert len(files_under(d["inbox"])) == 3
    age(d["inbox"])
    assert batch_main(args(d, "--settle-seconds", "30")) == 0
    assert f"{series_uids(spec)[1]}.tiff" in files_under(d["serving"])
    assert files_under(d["inbox"]) == []


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[p.relative_to(root).as_posix()] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mtime_ns, digest)
    return out


def test_dry_run_changes_nothing(mixed_drop, capsys):
    d, a, b = mixed_drop
    before = snapshot(d["inbox"].parent)
    assert batch_main(args(d, "--dry-run")) == 0
    assert snapshot(d["inbox"].parent) == before
    out = capsys.readouterr().out
    assert f"convert    series {series_uids(a)[1]}" in out and "L0 1500x1100 copy" in out
    assert "JPEG 2000" in out  # why caseB is re-encoded
    assert "pass       scanner-export.svs" in out and "convert    photo.tif" in out
    assert "quarantine notes.txt" in out and "quarantine caseB/slide/ct-0.dcm" in out and "CT Image Storage" in out


def test_drop_name_naming(tmp_path):
    d = dirs(tmp_path)
    write_series(SlideSpec(width=800, height=600, seed=31), d["inbox"] / "S23-0042 A1")
    age(d["inbox"])
    assert batch_main(args(d, "--naming", "drop-name")) == 0
    assert files_under(d["serving"]) == ["S23-0042 A1.json", "S23-0042 A1.tiff"]  # names are kept as dropped (docs/inbox.md)


@pytest.mark.parametrize("option, value, message", [
    ("--quality", "0", "--quality"), ("--quality", "101", "--quality"), ("--tile-size", "250", "--tile-size"),
])
def test_bad_configuration_stops_at_start(tmp_path, capsys, option, value, message):
    d = dirs(tmp_path)
    assert batch_main(args(d, option, value)) == 2
    err = capsys.readouterr().err
    assert message in err and value in err


def test_inbox_inside_serving_is_refused(tmp_path, capsys):
    d = dirs(tmp_path)
    d["inbox"] = d["serving"] / "inbox"
    d["inbox"].mkdir(parents=True)
    assert batch_main(args(d)) == 2
    assert "inbox" in capsys.readouterr().err.lower()


def _run(d, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "converter.cli.batch_converter", *args(d, *extra)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def test_kill_9_mid_conversion_then_restart_completes_exactly_once(tmp_path):
    d = dirs(tmp_path)
    spec = SlideSpec(width=6000, height=4500, seed=41, transfer_syntax="jpeg2000-lossless")
    write_series(spec, d["inbox"] / "big")
    age(d["inbox"])
    proc = _run(d, "-c", "1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if d["serving"].exists() and any(p.name.endswith(".work") for p in d["serving"].iterdir()):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    else:
        pytest.fail("conversion never started")
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert not any(p.suffix == ".tiff" for p in d["serving"].iterdir())  # nothing half-published
    proc = _run(d, "-c", "1")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "will be converted again" in out
    uid = series_uids(spec)[1]
    assert files_under(d["serving"]) == [f"{uid}.json", f"{uid}.tiff"]  # no temporary files left
    assert sorted(files_under(d["archive"])) == [f"big/level-{i}.dcm" for i in range(len(files_under(d["archive"])))]
    with sqlite3.connect(d["state"] / "wsi-node.sqlite") as db:
        assert db.execute("SELECT state, conversions FROM series WHERE uid=?", (uid,)).fetchone() == ("published", 1)
    with open_openslide(d["serving"] / f"{uid}.tiff") as slide:
        assert slide.dimensions == (6000, 4500)


def test_watch_mode_picks_up_drops_and_stops_on_sigterm(tmp_path):
    d = dirs(tmp_path)
    proc = _run(d, "--watch", "--watch-interval", "0.5", "--settle-seconds", "0.5")
    try:
        spec = SlideSpec(width=800, height=600, seed=51)
        staging = tmp_path / "staging"
        write_series(spec, staging)
        os.rename(staging, d["inbox"] / "drop")  # an atomic drop
        target = d["serving"] / f"{series_uids(spec)[1]}.tiff"
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.2)
        assert target.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out


def test_reopened_series_is_reconverted_with_archived_instances(tmp_path):
    d = dirs(tmp_path)
    spec = SlideSpec(width=1500, height=1100, seed=61, label=True)
    files = write_series(spec, tmp_path / "all")
    (d["inbox"] / "drop").mkdir()
    label = next(f for f in files if f.name == "label.dcm")
    for f in files:
        if f != label:
            os.rename(f, d["inbox"] / "drop" / f.name)
    age(d["inbox"])
    assert batch_main(args(d)) == 0
    uid = series_uids(spec)[1]
    assert "label" not in open_large_image(d["serving"] / f"{uid}.tiff").getAssociatedImagesList()
    (d["inbox"] / "late").mkdir()
    os.rename(label, d["inbox"] / "late" / "label.dcm")
    age(d["inbox"])
    assert batch_main(args(d)) == 0
    assert "label" in open_large_image(d["serving"] / f"{uid}.tiff").getAssociatedImagesList()
    with sqlite3.connect(d["state"] / "wsi-node.sqlite") as db:
        assert db.execute("SELECT conversions FROM series WHERE uid=?", (uid,)).fetchone() == (2,)
    assert "late/label.dcm" in files_under(d["archive"])


def test_pixels_of_published_output_match_source(mixed_drop):
    d, a, b = mixed_drop
    batch_main(args(d))
    with open_openslide(d["serving"] / f"{series_uids(a)[1]}.tiff") as slide:
        got = np.asarray(slide.read_region((300, 300), 0, (256, 256)).convert("RGB")).astype(int)
    truth = render_region(a, 300, 300, 256, 256).astype(int)
    assert np.abs(got - truth).mean(axis=(0, 1)).max() < 6


def test_a_dropped_series_with_an_unreadable_file_is_quarantined_whole(tmp_path):
    """A truncated level 0 must not leave a smaller slide that looks whole: nothing of that series is
    published, every file of it goes to quarantine with the reason; another series converts."""
    d = dirs(tmp_path)
    bad = write_series(SlideSpec(width=800, height=600, seed=41), d["inbox"] / "bad")
    write_series(SlideSpec(width=800, height=600, seed=42), d["inbox"] / "good")
    level0 = max(bad, key=lambda f: f.stat().st_size)
    level0.write_bytes(level0.read_bytes()[: level0.stat().st_size * 2 // 3])
    age(d["inbox"])
    assert batch_main(args(d)) == 1
    _, bad_uid = series_uids(SlideSpec(width=800, height=600, seed=41))
    _, good_uid = series_uids(SlideSpec(width=800, height=600, seed=42))
    assert files_under(d["serving"]) == [f"{good_uid}.json", f"{good_uid}.tiff"]
    quarantined = files_under(d["quarantine"])
    assert sum(1 for q in quarantined if q.endswith(".dcm")) == len(bad), quarantined
    reason = (d["quarantine"] / f"{bad_uid}.reason.txt").read_text()
    assert "rejected" in reason and "truncated" in reason.lower() and "incomplete slide" in reason
    assert not any((d["inbox"] / "bad").rglob("*.dcm"))
