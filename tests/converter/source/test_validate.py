"""converter.source.validate and the header walk: each mutation of a valid generated instance -> the exact refusal.

Table-driven: every case copies one generated instance (converter.testkit.write_series), mutates
it with pydicom or at the byte level (what pydicom refuses to write: deep nesting, wrong VRs,
truncation), and reads it with read_instance, the same call the inbox scan makes. The receivers
map the same InstanceRefused to their statuses (tests/scp/test_store_validation.py).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from config.options import default
from converter.codecs.frames import SUPPORTED_TRANSFER_SYNTAXES as CODEC_SYNTAXES
from converter.executors.local import conversion_budget
from converter.errors import InstanceRefused, NotDicomError, NotWsiError
from converter.source.instance import read_instance
from converter.source.validate import CONVERSION_THREADS, SUPPORTED_TRANSFER_SYNTAXES, Limits, estimate_memory_bytes
from converter.testkit import SlideSpec, available_transfer_syntaxes, series_uids, write_non_wsi, write_series
from tests.support.mutate import before_pixels, delete, edit, raw_element, setattr_

BASES = {
    "jpeg": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), seed=11),
    "empty": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), offset_table="empty", seed=12),
    "native": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), transfer_syntax="explicit", seed=13),
    "extended": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), offset_table="extended", seed=14),
    "sparse": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), sparse=True, seed=15),
    "concat": SlideSpec(width=600, height=500, tile_size=256, downsamples=(1,), concatenation_parts=2, seed=16),
}
FRAME_BYTES = 256 * 256 * 3
SEQ, ITEM = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff", b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_END, SEQ_END = b"\xfe\xff\x0d\xe0\0\0\0\0", b"\xfe\xff\xdd\xe0\0\0\0\0"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {name: write_series(spec, root / name)[0] for name, spec in BASES.items()}


# --- mutations -------------------------------------------------------------------------------------
def cut(keep: Callable[[bytes], int]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[: keep(raw)])

    return mutate


def bytes_at(find: Callable[[bytes], int], new: bytes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        at = find(bytes(raw))
        raw[at: at + len(new)] = new
        path.write_bytes(bytes(raw))

    return mutate


def meta(fn: Callable[[pydicom.dataset.FileMetaDataset], None]) -> Callable[[Path], None]:
    return edit(lambda ds: fn(ds.file_meta))


def syntax(uid: str) -> Callable[[Path], None]:
    """Rewrite the file meta's TransferSyntaxUID in place (pydicom would re-encode the data set)."""

    def mutate(path: Path) -> None:
        raw = path.read_bytes()
        at = raw.index(b"\x02\x00\x10\x00UI", 132)
        (length,) = struct.unpack_from("<H", raw, at + 6)
        value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        out = bytearray(raw[:at] + b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value + raw[at + 8 + length:])
        (group_length,) = struct.unpack_from("<I", out, 132 + 8)
        struct.pack_into("<I", out, 132 + 8, group_length + len(value) - length)
        path.write_bytes(bytes(out))

    return mutate


def per_frame(fn) -> Callable[[Path], None]:
    return edit(lambda ds: fn(ds.PerFrameFunctionalGroupsSequence))


def _second_bot_entry(raw: bytes) -> int:
    at = raw.index(b"\xe0\x7f\x10\x00OB")
    return at + 12 + 8 + 4  # tag+VR+reserved+length, BOT item header, first entry


def _frames_of_fragments(n: int) -> Callable[[Path], None]:
    return raw_element(0x00280008, "IS", str(n))


@dataclass(frozen=True)
class Case:
    id: str
    base: str
    mutate: Callable[[Path], None]
    status: str
    reason: str
    limits: Limits = Limits()


DEEP = (SEQ + ITEM) * 3000 + (ITEM_END + SEQ_END) * 3000
TINY = b"".join(struct.pack("<HH", 0x0011, 0x1000 + i % 0xE000) + b"SH\x02\x00a " for i in range(5 * 2**20 // 10))
CASES = [
    # Multi-frame module, PS3.3 C.7.6.6
    Case("frames-negative", "jpeg", _frames_of_fragments(-5), "mismatch", "NumberOfFrames -5 must be >= 1"),
    Case("frames-zero", "jpeg", _frames_of_fragments(0), "mismatch", "NumberOfFrames 0 must be >= 1"),
    Case("frames-abc", "jpeg", raw_element(0x00280008, "IS", "abc"), "invalid", "NumberOfFrames 'abc' is not an integer"),
    Case("frames-missing", "jpeg", delete("NumberOfFrames"), "mismatch", "missing NumberOfFrames"),
    Case("frames-fewer-than-grid", "empty", _frames_of_fragments(5), "mismatch", "NumberOfFrames 5 but the grid has 6 tiles"),
    Case("frames-more-than-fragments", "empty", _frames_of_fragments(7), "invalid", "6 fragments cannot hold 7 frames"),
    # Image Pixel module, PS3.3 C.7.6.3
    Case("rows-vr-lo", "jpeg", raw_element(0x00280010, "LO", "256"), "invalid", "Rows has VR LO, not US"),
    Case("rows-zero", "jpeg", setattr_("Rows", 0), "mismatch", "Rows 0 must be in 1..65535"),
    Case("columns-zero", "jpeg", setattr_("Columns", 0), "mismatch", "Columns 0 must be in 1..65535"),
    Case("rows-missing", "jpeg", delete("Rows"), "mismatch", "missing Rows"),
    Case("rows-two-values", "jpeg", setattr_("Rows", [256, 256]), "invalid", "Rows has several values"),
    Case("samples-4", "jpeg", setattr_("SamplesPerPixel", 4), "mismatch", "SamplesPerPixel 4 not supported (1 or 3)"),
    Case("bits-16", "jpeg", setattr_("BitsAllocated", 16), "mismatch", "BitsAllocated 16 not supported (8 only)"),
    Case("bits-stored-over", "jpeg", setattr_("BitsStored", 12), "mismatch", "BitsStored 12 > BitsAllocated 8"),
    Case("planar-2", "jpeg", setattr_("PlanarConfiguration", 2), "mismatch", "PlanarConfiguration 2 must be in 0..1"),
    Case("photometric-unknown", "jpeg", setattr_("PhotometricInterpretation", "PALETTE COLOR"), "mismatch",
         "PhotometricInterpretation PALETTE COLOR not supported"),
    Case("photometric-vs-samples", "jpeg", setattr_("PhotometricInterpretation", "MONOCHROME2"), "mismatch",
         "MONOCHROME2 with SamplesPerPixel 3"),
    Case("photometric-missing", "jpeg", delete("PhotometricInterpretation"), "mismatch", "missing PhotometricInterpretation"),
    # Whole Slide Microscopy Image module, PS3.3 C.8.12.4, and the budgets
    Case("matrix-columns-1e9", "jpeg", setattr_("TotalPixelMatrixColumns", 10**9), "too-large",
         "1000000000x500 px is over 4000000 tiles"),
    Case("matrix-columns-zero", "jpeg", setattr_("TotalPixelMatrixColumns", 0), "mismatch", "TotalPixelMatrixColumns 0 must be >= 1"),
    Case("matrix-rows-zero", "jpeg", setattr_("TotalPixelMatrixRows", 0), "mismatch", "TotalPixelMatrixRows 0 must be >= 1"),
    Case("matrix-columns-vr-lo", "jpeg", raw_element(0x00480006, "LO", "600"), "invalid", "TotalPixelMatrixColumns has VR LO, not UL"),
    Case("matrix-larger-than-frames", "jpeg", setattr_("TotalPixelMatrixColumns", 2000), "mismatch",
         "NumberOfFrames 6 but the grid has 16 tiles"),
    Case("matrix-rows-huge", "jpeg", setattr_("TotalPixelMatrixRows", 4 * 10**9), "too-large", "600x4000000000 px is over 4000000 tiles"),
    Case("memory-budget", "jpeg", edit(lambda ds: (setattr(ds, "Columns", 20000), setattr(ds, "Rows", 20000))), "too-large",
         "20000x20000 px frames need 4961 MB > 4096 MB"),
    Case("focal-planes-zero", "jpeg", setattr_("TotalPixelMatrixFocalPlanes", 0), "mismatch", "TotalPixelMatrixFocalPlanes 0 must be >= 1"),
    Case("optical-paths-declared-2", "jpeg", setattr_("NumberOfOpticalPaths", 2), "mismatch", "NumberOfFrames 6 but the grid has 12 tiles"),
    Case("concatenation-beyond-grid", "concat", setattr_("ConcatenationFrameOffsetNumber", 5), "mismatch",
         "frames 6-8 beyond the 6 of the grid"),
    # TILED_SPARSE, PS3.3 C.7.6.16, C.8.12.6.1
    Case("sparse-off-grid", "sparse", per_frame(lambda s: setattr(s[0].PlanePositionSlideSequence[0],
                                                                 "ColumnPositionInTotalImagePixelMatrix", 5)),
         "mismatch", "frame 1 at 5,1 is off the tile grid"),
    Case("sparse-outside-matrix", "sparse", per_frame(lambda s: setattr(s[0].PlanePositionSlideSequence[0],
                                                                       "RowPositionInTotalImagePixelMatrix", -255)),
         "mismatch", "frame 1 at 1,-255 is off the tile grid"),
    Case("sparse-no-per-frame", "sparse", delete("PerFrameFunctionalGroupsSequence"), "mismatch", "TILED_SPARSE without per-frame positions"),
    Case("sparse-items-fewer", "sparse", per_frame(lambda s: s.pop()), "mismatch", "5 per-frame items for 6 frames"),
    # Pixel data, PS3.5 8.1.1 and A.4
    Case("no-pixel-data", "jpeg", delete("PixelData"), "mismatch", "no PixelData"),
    Case("native-short", "native", edit(lambda ds: setattr(ds, "PixelData", ds.PixelData[:-FRAME_BYTES])), "invalid",
         f"PixelData {5 * FRAME_BYTES} bytes < {6 * FRAME_BYTES} needed"),
    Case("native-long", "native", edit(lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\0" * 4)), "mismatch",
         f"PixelData {6 * FRAME_BYTES + 4} bytes > {6 * FRAME_BYTES} declared"),
    Case("native-truncated", "native", cut(lambda raw: len(raw) - 1000), "invalid",
         f"truncated: PixelData needs {6 * FRAME_BYTES} bytes, has {6 * FRAME_BYTES - 1000}"),
    Case("truncated-in-fragment", "jpeg", cut(lambda raw: len(raw) - 200), "invalid", "truncated: fragment 6 runs past the end"),
    Case("truncated-no-delimiter", "jpeg", cut(lambda raw: len(raw) - 8), "invalid", "truncated: the pixel data has no end delimiter"),
    Case("truncated-in-header", "jpeg", cut(lambda raw: raw.index(b"\x48\x00\x05\x01SQ") + 40), "invalid",
         "truncated: the file ends inside a sequence"),
    # Cut inside the Pixel Data element header (tag, VR, reserved, length: PS3.5 7.1): truncated, not "no PixelData".
    *[Case(f"truncated-in-pixel-tag-{base}-{n}", base, cut(lambda raw, n=n: raw.rfind(b"\xe0\x7f\x10\x00") + n), "invalid",
           "truncated: the file ends in an element header") for base in ("jpeg", "native") for n in (1, 4, 6, 8, 11)],
    Case("truncated-in-last-element-header", "jpeg", lambda p: (delete("PixelData")(p), p.write_bytes(p.read_bytes() + b"\x08\x00"))[0],
         "invalid", "truncated: the file ends in an element header"),
    Case("cut-just-before-pixel-data", "jpeg", cut(lambda raw: raw.rfind(b"\xe0\x7f\x10\x00")), "mismatch", "no PixelData"),
    Case("bot-points-inside-fragment", "jpeg", bytes_at(_second_bot_entry, b"\x01"), "invalid",
         "Basic Offset Table does not match the frames"),
    Case("eot-length-wrong", "extended", edit(lambda ds: setattr(ds, "ExtendedOffsetTableLengths",
                                                                  struct.pack("<Q", 1) + ds.ExtendedOffsetTableLengths[8:])),
         "invalid", "Extended Offset Table points between fragments"),
    Case("eot-without-lengths", "extended", delete("ExtendedOffsetTableLengths"), "invalid", "Extended Offset Table does not match the frames"),
    # File meta and encoding, PS3.10 7.1, PS3.5 A
    Case("meta-without-transfer-syntax", "jpeg", meta(lambda m: delattr(m, "TransferSyntaxUID")), "invalid",
         "file meta without TransferSyntaxUID"),
    Case("transfer-syntax-unknown", "jpeg", syntax("1.2.3.4"), "invalid",
         "transfer syntax 1.2.3.4 not supported"),
    Case("transfer-syntax-big-endian", "jpeg", syntax("1.2.840.10008.1.2.2"), "invalid",
         "transfer syntax Explicit VR Big Endian not supported"),
    Case("native-bytes-under-jpeg-syntax", "native", syntax("1.2.840.10008.1.2.4.50"),
         "invalid", "PixelData encoding does not match the transfer syntax"),
    # Header caps: nesting depth and size
    Case("nested-3000", "jpeg", before_pixels(DEEP), "invalid", "sequences nested deeper than 16"),
    Case("nested-17", "jpeg", before_pixels((SEQ + ITEM) * 17 + (ITEM_END + SEQ_END) * 17), "invalid", "sequences nested deeper than 16"),
    Case("header-over-cap", "jpeg", before_pixels(TINY), "too-large", "header over the 4 MB cap", Limits(max_header_bytes=4 << 20)),
    Case("undefined-length-ob", "jpeg", before_pixels(b"\x11\x00\x10\x10OB\0\0\xff\xff\xff\xff" + SEQ_END), "invalid",
         "malformed: (0011,1010) of undefined length"),
    Case("item-outside-sequence", "jpeg", before_pixels(ITEM + ITEM_END), "invalid", "malformed: item outside a sequence"),
]


def test_at_least_25_mutations_and_unique_ids():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_mutation_is_refused_with_the_exact_problem(case, bases, tmp_path):
    path = tmp_path / "instance.dcm"
    shutil.copy(bases[case.base], path)
    read_instance(path, case.limits)  # the base is valid
    case.mutate(path)
    with pytest.raises(InstanceRefused) as err:
        read_instance(path, case.limits)
    assert (err.value.status, err.value.reason) == (case.status, case.reason), err.value.problem
    assert len(err.value.reason) <= 64
    assert str(path) in err.value.problem  # the long form names the file


def test_nested_sequences_within_the_cap_are_read(bases, tmp_path):
    path = tmp_path / "instance.dcm"
    shutil.copy(bases["jpeg"], path)
    before_pixels((SEQ + ITEM) * 15 + (ITEM_END + SEQ_END) * 15)(path)
    assert read_instance(path).number_of_frames == 6


def test_header_under_the_cap_is_read(bases, tmp_path):
    path = tmp_path / "instance.dcm"
    shutil.copy(bases["jpeg"], path)
    before_pixels(TINY)(path)
    assert read_instance(path).number_of_frames == 6


def test_not_dicom_and_not_wsi_keep_their_errors(tmp_path):
    junk = tmp_path / "notes.dcm"
    junk.write_text("hello")
    with pytest.raises(NotDicomError):
        read_instance(junk)
    study, series = series_uids(BASES["jpeg"])
    with pytest.raises(NotWsiError):
        read_instance(write_non_wsi("ct", tmp_path, study, series))


@pytest.mark.parametrize("kw", [
    *({"transfer_syntax": t} for t in available_transfer_syntaxes()),
    {"sparse": True, "missing_tiles": 0.3, "shuffle_frames": True},
    {"transfer_syntax": "implicit", "sparse": True},
    {"concatenation_parts": 3},
    {"focal_planes": 3},
    {"optical_paths": 2},
    {"focal_planes": 2, "optical_paths": 2, "sparse": True},
    {"label": True, "overview": True, "thumbnail": True},
    {"offset_table": "extended"},
    {"offset_table": "empty", "fragments_per_frame": 3},
    {"fragments_per_frame": 2},
    {"samples_per_pixel": 1},
    {"image_type": False, "dimension_organization": False},
    {"transfer_syntax": "explicit", "concatenation_parts": 2, "focal_planes": 2},
    {"width": 1000, "height": 700, "tile_size": 240},
], ids=str)
def test_every_kind_of_generated_series_passes(kw, tmp_path):
    spec = SlideSpec(**{"width": 900, "height": 700, **kw})
    for f in write_series(spec, tmp_path):
        read_instance(f)


def test_sparse_positions_match_pydicom(tmp_path):
    for f in write_series(SlideSpec(width=900, height=700, sparse=True, focal_planes=2, optical_paths=2, shuffle_frames=True,
                                    missing_tiles=0.2, transfer_syntax="implicit"), tmp_path):
        inst = read_instance(f)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            continue
        expected = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            pos = item.PlanePositionSlideSequence[0]
            expected.append((int(pos.ColumnPositionInTotalImagePixelMatrix) - 1, int(pos.RowPositionInTotalImagePixelMatrix) - 1,
                             float(pos.ZOffsetInSlideCoordinateSystem), str(item.OpticalPathIdentificationSequence[0].OpticalPathIdentifier)))
        assert [(p.column, p.row, p.z, p.optical_path) for p in inst.frame_positions] == expected


def test_transfer_syntaxes_agree_with_the_codecs():
    assert SUPPORTED_TRANSFER_SYNTAXES == CODEC_SYNTAXES


@pytest.mark.parametrize("frame", [(256, 256), (500, 500), (2048, 1024), (16384, 16384), (65535, 65535)])
def test_receipt_budget_is_the_executor_budget(frame):
    """Refused on receipt exactly when the conversion's own budget would exceed conversion_memory_mb."""
    cap = default("conversion_memory_mb")
    assert Limits().conversion_memory_mb == cap
    w, h = frame
    assert estimate_memory_bytes(w, h, 3) == conversion_budget(w, h, 3, CONVERSION_THREADS, cap_bytes=1 << 62)


def test_the_budget_knows_the_block_size():
    from converter.executors.local import BLOCK_PX
    from converter.tiff.blocks import MAX_BLOCK

    assert BLOCK_PX == MAX_BLOCK


def test_8mb_header_keeps_memory_flat(bases, tmp_path):
    """The issue's case (95 -> 496 MB): 8 MB of tiny elements; read in a fresh process, peak RSS measured."""
    path = tmp_path / "instance.dcm"
    shutil.copy(bases["jpeg"], path)
    before_pixels(TINY + TINY[: 3 * 2**20 // 10 * 10])(path)
    assert path.stat().st_size > 8 << 20
    code = (
        "import sys\n"
        "from converter.source.instance import read_instance\n"
        "def hwm():\n"
        "    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) // 1024\n"
        "before = hwm()\n"
        "read_instance(sys.argv[1])\n"
        "print(before, hwm())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert after - before < 40, f"reading an 8 MB header took peak RSS from {before} to {after} MB"
