"""Validation before acknowledging, over the network: a mutated instance pushed to a running node gets the
exact refusal status and ErrorComment, leaves nothing in inbox/ or inbox/.incoming, and the node still
converts a valid slide afterwards.

The node is the real one (tests/support/node.py) on loopback; senders are pynetdicom (sending the file's
bytes unchanged: STORE_SEND_CHUNKED_DATASET, so hostile bytes reach the node as written) and DCMTK
storescu. The rules themselves are tested per attribute in tests/converter/source/test_validate.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

from converter.testkit import SlideSpec, write_series
from scp.storage import STATUS_CODES, StoreResult, code_class, dimse_status, stow_failure_reason
from scp.dimse import WSI_STORAGE
from tests.support.mutate import before_pixels, edit, raw_element, setattr_
from tests.support.node import STORESCU, RunningNode, assert_published, pynetdicom_send

BASE = SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), seed=41)
NATIVE = SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), transfer_syntax="explicit", seed=42)
SPARSE = SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), sparse=True, seed=43)
SEQ, ITEM = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff", b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_END, SEQ_END = b"\xfe\xff\x0d\xe0\0\0\0\0", b"\xfe\xff\xdd\xe0\0\0\0\0"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = RunningNode(tmp_path_factory.mktemp("node"))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {name: write_series(spec, root / name)[0] for name, spec in (("jpeg", BASE), ("native", NATIVE), ("sparse", SPARSE))}


def cut(n: int) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(path.read_bytes()[:-n])


# (id, base, mutation, DIMSE status, ErrorComment)
CASES = [
    ("frames-negative", "jpeg", raw_element(0x00280008, "IS", "-5"), 0xA900, "NumberOfFrames -5 must be >= 1"),
    ("frames-zero", "jpeg", raw_element(0x00280008, "IS", "0"), 0xA900, "NumberOfFrames 0 must be >= 1"),
    ("frames-abc", "jpeg", raw_element(0x00280008, "IS", "abc"), 0xC000, "NumberOfFrames 'abc' is not an integer"),
    ("rows-vr-lo", "jpeg", raw_element(0x00280010, "LO", "256"), 0xC000, "Rows has VR LO, not US"),
    ("matrix-columns-1e9", "jpeg", setattr_("TotalPixelMatrixColumns", 10**9), 0xA700, "1000000000x500 px is over 4000000 tiles"),
    ("matrix-columns-zero", "jpeg", setattr_("TotalPixelMatrixColumns", 0), 0xA900, "TotalPixelMatrixColumns 0 must be >= 1"),
    ("matrix-rows-zero", "jpeg", setattr_("TotalPixelMatrixRows", 0), 0xA900, "TotalPixelMatrixRows 0 must be >= 1"),
    ("matrix-larger-than-frames", "jpeg", setattr_("TotalPixelMatrixColumns", 2000), 0xA900, "NumberOfFrames 6 but the grid has 16 tiles"),
    ("samples-4", "jpeg", setattr_("SamplesPerPixel", 4), 0xA900, "SamplesPerPixel 4 not supported (1 or 3)"),
    ("no-pixel-data", "jpeg", edit(lambda ds: delattr(ds, "PixelData")), 0xA900, "no PixelData"),
    ("truncated-in-fragment", "jpeg", cut(200), 0xC000, "truncated: fragment 6 runs past the end"),
    ("truncated-no-delimiter", "jpeg", cut(8), 0xC000, "truncated: the pixel data has no end delimiter"),
    ("native-truncated", "native", cut(1000), 0xC000, f"truncated: PixelData needs {6 * 256 * 256 * 3} bytes, has {6 * 256 * 256 * 3 - 1000}"),
    ("nested-3000", "jpeg", before_pixels((SEQ + ITEM) * 3000 + (ITEM_END + SEQ_END) * 3000), 0xC000, "sequences nested deeper than 16"),
    ("sparse-off-grid", "sparse", edit(lambda ds: setattr(ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSlideSequence[0],
                                                          "ColumnPositionInTotalImagePixelMatrix", 5)),
     0xA900, "frame 1 at 5,1 is off the tile grid"),
]


def send_raw(port: int, path: Path) -> tuple[int, str]:
    """C-STORE of the file's bytes as they are (pynetdicom's chunked send: no decoding on the way)."""
    ae = AE(ae_title="MUTANT")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 30
    ae.add_requested_context(WSI_STORAGE, str(read_file_meta_info(path).TransferSyntaxUID))
    old, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert "Status" in status, "no C-STORE response (association aborted?)"
    return int(status.Status), str(status.get("ErrorComment", ""))


def assert_nothing_left(node: RunningNode) -> None:
    inbox = node.data / "inbox"
    left = [p for p in inbox.rglob("*") if p.is_file()]
    assert left == [], f"files left behind: {left}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_mutation_over_c_store_gets_the_exact_status(case, node, bases, tmp_path, caplog):
    name, base, mutate, status, comment = case
    path = tmp_path / f"{name}.dcm"
    shutil.copy(bases[base], path)
    mutate(path)
    sop = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    caplog.set_level("WARNING", logger="wsi_node")
    assert send_raw(node.port, path) == (status, comment)
    assert_nothing_left(node)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage() and sop in r.getMessage()]
    assert refusals, f"no refusal log line names {sop}: {caplog.text[-2000:]}"
    assert "MUTANT" in refusals[0] and ".incoming" not in refusals[0]
    assert "Synthetic" not in caplog.text  # no patient name in the log


@pytest.mark.parametrize("name, mutate, expect, comment", [
    ("frames-negative", raw_element(0x00280008, "IS", "-5"), "0xa900", "NumberOfFrames -5 must be >= 1"),
    ("matrix-columns-1e9", setattr_("TotalPixelMatrixColumns", 10**9), "0xa700", "1000000000x500 px is over 4000000 tiles"),
    ("matrix-rows-zero", setattr_("TotalPixelMatrixRows", 0), "0xa900", "TotalPixelMatrixRows 0 must be >= 1"),
])
def test_mutation_over_dcmtk_storescu(name, mutate, expect, comment, node, bases, tmp_path):
    if not Path(STORESCU).exists():
        pytest.fail("DCMTK storescu is not installed (apt-get install dcmtk): this test needs it")
    path = tmp_path / f"{name}.dcm"
    shutil.copy(bases["jpeg"], path)
    mutate(path)
    cmd = [STORESCU, "-d", "-aet", "DCMTKSCU", "-aec", "WSINODE", "-R", "-xy", "-to", "30", "-ta", "30", "-td", "30",
           "127.0.0.1", str(node.port), str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert re.search(rf"DIMSE Status\s*:\s*{expect}:", out), out[-3000:]
    assert f"(0000,0902) LO [{comment}]" in out, out[-3000:]
    assert_nothing_left(node)


def test_valid_slide_still_converts_after_the_campaign(node, tmp_path):
    spec = SlideSpec(width=800, height=600, seed=44)
    files = write_series(spec, tmp_path / "good")
    assert pynetdicom_send(node.port, files) == [0] * len(files)
    assert_published(node, spec, files, timeout=60)
    assert not list((node.data / "quarantine").rglob("*.dcm"))


def test_status_functions_cover_every_refusal():
    for status, dimse, stow in [("invalid", 0xC000, 0xC000), ("mismatch", 0xA900, 0xA900), ("too-large", 0xA700, 0xA700),
                                ("not-wsi", 0xA900, 0x0122), ("no-space", 0xA700, 0xA700), ("error", 0xA700, 0xA700)]:
        result = StoreResult(status, "x")
        assert (dimse_status(result), stow_failure_reason(result)) == (dimse, stow)
    for status in ("stored", "duplicate", "replaced"):
        assert StoreResult(status).ok and dimse_status(StoreResult(status)) == 0x0000
    # A status no table knows (a bug) is refused on both protocols, never acknowledged.
    assert (dimse_status(StoreResult("new-kind")), stow_failure_reason(StoreResult("new-kind"))) == (0xA700, 0xA700)


def test_every_store_status_maps_to_the_same_code_class_on_both_protocols():
    # Every status StoreResult documents, and every status the validation rules and the header walk can give
    # (converter.source.validate, InstanceRefused), has one row, and its C-STORE status (PS3.4 B.2.3) and STOW-RS
    # FailureReason (PS3.18 Annex I) are of the same kind: A7xx with A7xx, A9xx/0122 with A9xx/0122, Cxxx with Cxxx.
    import inspect

    from converter.errors import InstanceRefused
    from converter.source import validate

    documented = set(re.findall(r"'([a-z-]+)'", inspect.getsource(StoreResult)))  # the statuses its docstring lists
    documented |= set(validate._PRIORITY) | set(re.findall(r"'([a-z-]+)' \(", inspect.getdoc(InstanceRefused)))
    assert {"stored", "duplicate", "replaced", "invalid", "not-wsi", "mismatch", "too-large", "no-space", "error"} <= documented
    assert documented <= set(STATUS_CODES), documented - set(STATUS_CODES)
    for status, (dimse, stow) in STATUS_CODES.items():
        result = StoreResult(status, "x")
        if result.ok:
            assert (dimse, stow) == (0x0000, None), status
            continue
        assert dimse != 0 and stow not in (None, 0), status
        assert code_class(dimse) == code_class(stow) != "other", (status, hex(dimse), hex(stow))
        assert (dimse_status(result), stow_failure_reason(result)) == (dimse, stow)


def test_a_refused_instance_gets_one_warning_line_naming_peer_uid_status_and_the_reason(node, bases, tmp_path, caplog):
    # One line per refusal, from the receiver (peer, SOP Instance UID, the status sent, the long reason);
    # scp/storage.py's own line is debug only. Over STOW-RS the same rule: one line, FailureReason A900.
    import logging

    import requests

    path = tmp_path / "two-problems.dcm"
    shutil.copy(bases["jpeg"], path)
    edit(lambda ds: (setattr(ds, "Rows", 0), setattr(ds, "SOPInstanceUID", "2.25.424242")))(path)
    caplog.set_level(logging.INFO)
    assert pynetdicom_send(node.port, [path], aet="ONELINE") == [0xA900]
    lines = [r for r in caplog.records if "2.25.424242" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    text = lines[0].getMessage()
    assert "ONELINE@127.0.0.1" in text and "0xA900" in text and "Rows is 0; it must be in 1..65535" in text, text
    assert str(path) not in text and ".incoming" not in text, text
    caplog.clear()
    boundary = "h12boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{node.http_url}/studies", data=body, timeout=30,
                      headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900], r.text
    lines = [r for r in caplog.records if "2.25.424242" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "0xA900" in lines[0].getMessage(), [r.getMessage() for r in lines]
    assert_nothing_left(node)
