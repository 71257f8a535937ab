"""Bad input: a clear error naming the file and the problem, nothing published, other series unaffected."""

from __future__ import annotations

import os

import pytest

from config.settings import ConversionOptions
from converter.conversion.convert import convert_series
from converter.source.discover import discover
from converter.source.frame_index import build_frame_index
from converter.source.instance import read_instance
from converter.testkit import SlideSpec, series_uids, write_non_wsi, write_series
from scp.cli import main as wsi_node

SMALL = dict(width=800, height=600)


def _published(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def _convert_folder(folder, out):
    found = discover([folder])
    (uid, instances), = found.series.items()
    out.mkdir(exist_ok=True)
    return found, convert_series(instances, out / "slide.tiff", ConversionOptions())


def test_not_dicom_is_rejected_by_name(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    found = discover([junk])
    assert not found.series
    (rej,) = found.rejected
    assert "notes.txt" in rej.message and "not a DICOM file" in rej.message


def test_truncated_header_is_rejected_by_name(tmp_path):
    files = write_series(SlideSpec(**SMALL), tmp_path / "in")
    victim = files[0]
    victim.write_bytes(victim.read_bytes()[:300])
    found = discover([tmp_path / "in"])
    assert any(victim.name in r.message for r in found.rejected)


def test_truncated_pixel_data_fails_the_series_naming_the_file(tmp_path):
    files = write_series(SlideSpec(**SMALL), tmp_path / "in")
    level0 = next(f for f in files if read_instance(f).image_width == 800)
    data = level0.read_bytes()
    level0.write_bytes(data[: len(data) * 2 // 3])
    # Refused when its header is read (validation before acknowledging, docs/node.md), not at conversion:
    found = discover([tmp_path / "in"])
    (rej,) = found.rejected
    assert level0.name in rej.message and "truncated" in rej.message.lower()
    assert rej.series_uid == read_instance(files[-1]).series_uid
    # and the rest of its series is not published as if it were the whole slide.
    code = wsi_node(["convert", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert code == 1
    assert _published(tmp_path / "out") == []


@pytest.mark.parametrize("syntax", ["jpeg", "jpeg2000"])
def test_frame_that_fails_to_decode(tmp_path, syntax):
    files = write_series(SlideSpec(**SMALL, transfer_syntax=syntax), tmp_path / "in")
    level0 = next(f for f in files if read_instance(f).image_width == 800)
    inst = read_instance(level0)
    with open(level0, "r+b") as fp:
        (offset, length), = build_frame_index(inst, fp).ranges[2]
        fp.seek(offset + 2)
        fp.write(os.urandom(16) + b"\x00" * (length - 20) + b"\x00\x00")  # garbage, and no end-of-image marker
    found, report = _convert_folder(tmp_path / "in", tmp_path / "out")
    assert not report.ok
    assert level0.name in report.error and "frame 3" in report.error
    assert _published(tmp_path / "out") == []


@pytest.mark.parametrize("kind, name", [("ct", "CT Image Storage"), ("seg", "Segmentation Storage"), ("annotation", "Annotations")])
def test_non_wsi_instance_in_the_series_is_named_and_slide_still_converts(tmp_path, kind, name):
    spec = SlideSpec(**SMALL)
    write_series(spec, tmp_path / "in")
    study, series = series_uids(spec)
    stray = write_non_wsi(kind, tmp_path / "in", study, series)
    found, report = _convert_folder(tmp_path / "in", tmp_path / "out")
    (rej,) = found.rejected
    assert stray.name in rej.message and name in rej.message
    assert report.ok, report.error


def test_series_without_volume_level(tmp_path):
    files = write_series(SlideSpec(**SMALL, label=True, overview=True), tmp_path / "in")
    for f in files:
        if read_instance(f).flavor == "VOLUME":
            f.unlink()
    found, report = _convert_folder(tmp_path / "in", tmp_path / "out")
    assert not report.ok
    assert "no VOLUME image" in report.error
    assert _published(tmp_path / "out") == []


def test_cli_converts_good_series_and_fails_for_bad_ones(tmp_path, caplog):
    good = SlideSpec(**SMALL, seed=1)
    bad = SlideSpec(**SMALL, seed=2)
    write_series(good, tmp_path / "in" / "good")
    bad_files = write_series(bad, tmp_path / "in" / "bad")
    for f in bad_files:
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    (tmp_path / "in" / "README.txt").write_text("not a slide")
    out = tmp_path / "out"
    code = wsi_node(["convert", str(tmp_path / "in"), "-o", str(out), "--max-concurrent", "2"])
    assert code == 1
    good_uid = series_uids(good)[1]
    assert (out / f"{good_uid}.tiff").exists() and (out / f"{good_uid}.json").exists()
    assert not (out / f"{series_uids(bad)[1]}.tiff").exists()
    assert "README.txt" in caplog.text


def test_cli_exit_zero_when_all_good(tmp_path):
    write_series(SlideSpec(**SMALL), tmp_path / "in")
    out = tmp_path / "slide.tiff"
    assert wsi_node(["convert", str(tmp_path / "in"), "-o", str(out)]) == 0
    assert out.exists() and out.with_suffix(".json").exists()


@pytest.mark.parametrize("args, message", [(["--quality", "0"], "quality"), (["--tile-size", "250"], "multiple of 16")])
def test_cli_rejects_bad_options(tmp_path, capsys, args, message):
    assert wsi_node(["convert", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_verification_failure_publishes_nothing(tmp_path, monkeypatch):
    """Tag copied YCbCr frames as RGB (what a careless converter does): verification must catch it."""
    import converter.tiff.writer as tw

    original = tw._jpeg_args
    monkeypatch.setattr(tw, "_jpeg_args", lambda lv: original(tw.TiffLevel(**{**lv.__dict__, "colorspace": "RGB"})))
    write_series(SlideSpec(**SMALL), tmp_path / "in")
    found, report = _convert_folder(tmp_path / "in", tmp_path / "out")
    assert not report.ok
    assert "does not match the source" in report.error and "mislabelled" in report.error
    assert _published(tmp_path / "out") == []
