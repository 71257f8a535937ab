"""Tests of converter/inbox/passthrough.py: a file passes through only when its pixels can be read.

The files are generated (tests/converter/inbox/slide_files.py) with the vendor tags and XML that
OpenSlide's format detection looks for; a damaged tile in one level must send the file to
quarantine with a reason naming that level and the decoder's error.
"""

from __future__ import annotations

import os
import time
import unicodedata
from pathlib import Path

import pytest
import tifffile

from converter.inbox.passthrough import check_passthrough
from tests.converter.inbox import slide_files as sf
from tests.readers import open_openslide

# name, writer, vendor OpenSlide reports (None: read with tifffile), corruption of pyramid level 1
FORMATS = [
    ("slide.svs", sf.write_svs, "aperio", dict(page=2)),  # directory 1 is the thumbnail
    ("slide.ndpi", sf.write_ndpi, "hamamatsu", dict(raw_page=1, where="data")),
    ("slide.scn", sf.write_scn, "leica", dict(page=2)),  # directory 0 is the macro image
    ("slide.tif", sf.write_generic_tiff, "generic-tiff", dict(page=1)),
    ("slide.ome.tiff", sf.write_ome, None, dict(level=1)),
    ("slide.ome.tif", sf.write_ome, None, dict(level=1)),
]


@pytest.mark.parametrize("name,writer,vendor,damage", FORMATS, ids=[f[0] for f in FORMATS])
def test_a_readable_slide_passes_and_its_reader_sees_it(tmp_path: Path, name, writer, vendor, damage) -> None:
    path = writer(tmp_path / name)
    check = check_passthrough(path)
    assert check.action == "move", check.detail
    assert "a tile read at every level" in check.detail
    if vendor is None:
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome and len(tif.series[0].levels) == 3
    else:
        with open_openslide(path) as slide:
            assert slide.properties["openslide.vendor"] == vendor and slide.level_count >= 3
            if vendor in ("aperio", "hamamatsu", "leica"):
                assert slide.associated_images  # thumbnail/label/macro were read too
            assert f"{len(slide.associated_images)} associated image(s) read" in check.detail


@pytest.mark.parametrize("name,writer,vendor,damage", FORMATS, ids=[f[0] for f in FORMATS])
def test_a_slide_that_opens_but_cannot_be_decoded_is_rejected_naming_the_level(tmp_path: Path, name, writer, vendor, damage) -> None:
    path = writer(tmp_path / name)
    sf.corrupt_tile(path, **damage)
    if vendor is not None:
        with open_openslide(path) as slide:  # the header still opens: opening proves nothing
            assert slide.level_count >= 3
    check = check_passthrough(path)
    assert check.action == "reject", check.detail
    assert "pixels cannot be read: level 1 " in check.detail
    assert any(word in check.detail for word in ("Bogus marker length", "Corrupt JPEG data", "length")), check.detail
    assert "Fix:" in check.detail


def test_a_damaged_associated_image_is_rejected(tmp_path: Path) -> None:
    path = sf.write_svs(tmp_path / "slide.svs")
    sf.corrupt_tile(path, page=1, segment=0)  # the thumbnail (directory 1, JPEG strips)
    check = check_passthrough(path)
    assert check.action == "reject" and "associated image 'thumbnail'" in check.detail, check.detail


def test_mrxs_without_its_data_folder_is_rejected_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "case 1.mrxs"
    path.write_bytes(b"not really a MIRAX index")
    check = check_passthrough(path)
    assert check.action == "reject"
    assert "MIRAX data folder 'case 1/'" in check.detail and "Slidedat.ini" in check.detail and "Fix:" in check.detail
    (tmp_path / "case 1").mkdir()
    (tmp_path / "case 1" / "Slidedat.ini").write_text("[GENERAL]\nSLIDE_VERSION = 1.9\n")
    check = check_passthrough(path)
    assert check.action == "reject" and "OpenSlide cannot open it" in check.detail


def test_czi_that_openslide_cannot_read_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "a.czi"
    fake.write_bytes(b"PK\x03\x04 not a czi at all" * 10)
    check = check_passthrough(fake)
    assert check.action == "reject" and "ZISRAWFILE" in check.detail
    broken = tmp_path / "b.czi"
    broken.write_bytes(b"ZISRAWFILE".ljust(32, b"\0") + b"\0" * 512)  # the signature, then nothing readable
    check = check_passthrough(broken)
    assert check.action == "reject" and "brightfield CZI" in check.detail, check.detail


def test_refused_file_name_is_rejected(tmp_path: Path) -> None:
    path = sf.write_generic_tiff(tmp_path / "bad\x1bname.tif")
    check = check_passthrough(path)
    assert check.action == "reject" and "U+001B" in check.detail


def _age(folder: Path) -> None:
    old = time.time() - 120
    for p in folder.rglob("*"):
        os.utime(p, (old, old))


def test_pipeline_quarantines_the_undecodable_and_publishes_unicode_names(tmp_path: Path) -> None:
    from converter.cli.batch_converter import main as batch_main  # the whole pipeline, imported only here

    d = {k: tmp_path / k for k in ("inbox", "serving", "archive", "quarantine", "state")}
    d["inbox"].mkdir()
    nfc = unicodedata.normalize("NFC", "Präparat 😀 a.b.svs")
    nfd = unicodedata.normalize("NFD", nfc)
    sf.write_svs(d["inbox"] / nfc)
    sf.write_svs(d["inbox"] / nfd)
    bad = sf.write_svs(d["inbox"] / "broken.svs")
    sf.corrupt_tile(bad, page=3)  # level 2
    _age(d["inbox"])
    rc = batch_main(["-i", str(d["inbox"]), "-s", str(d["serving"]), "-a", str(d["archive"]), "--quarantine",
                     str(d["quarantine"]), "--state-dir", str(d["state"]), "--max-concurrent", "1"])
    assert rc == 1  # one file failed
    served = sorted(p.name for p in d["serving"].iterdir())
    assert served == sorted([nfc, nfd])  # both kept their whole name; neither took the other's
    for name in served:
        with open_openslide(d["serving"] / name) as slide:
            slide.read_region((700, 500), 0, (256, 256))
    reason = (d["quarantine"] / "broken.svs.reason.txt").read_text()
    assert "level 2 (384x256 px)" in reason and "Bogus marker length" in reason
    assert (d["quarantine"] / "broken.svs").exists() and not (d["serving"] / "broken.svs").exists()
