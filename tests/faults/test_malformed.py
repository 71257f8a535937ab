"""Malformed input: a table-driven campaign of hostile instances and clients against one node process.

Each case is one row of CASES: how the input is made (a mutation of a valid generated instance,
or a hostile request), how it is sent (C-STORE from pynetdicom, sending the file's bytes as they
are; a STOW-RS part; a whole HTTP request; a raw socket) and the exact answer the sender must
see: the DIMSE status (PS3.4 B.2.3 / GG.4.2: 0xA700 Out of Resources, 0xA900 Data Set does not
match SOP Class, 0xC000 Cannot understand), or the HTTP status with the FailureReason
(0008,1197) of each failed part (PS3.18 10.5.3, Annex I). After each case: the node still
answers C-ECHO and /healthz and nothing is left in inbox/.incoming; a refused instance left
nothing in the inbox. After the campaign: a valid slide is still converted and published, and
nothing else was published.

Cases that the product does not pass yet are kept in tests/faults/pending_cases.py (same table
format) until it does.
"""

from __future__ import annotations

import pytest

from tests.faults import mutations as m
from tests.faults.campaign import (BAD_UIDS, CANNOT_UNDERSTAND, DOES_NOT_MATCH, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED,
                                   TS_NOT_SUPPORTED, Case, campaign_fixture, check_after, check_published, deep_nesting, flip_at, length_of,
                                   matrix, meta_ts, not_wsi_dataset, rows, send_mutant, truncate_at, vr_to)

CASES: list[Case] = [
    Case("valid-control", "both"),
    Case("valid-native-pixel-flip", "both", flip_at(lambda d: m.pixel_offset(d) + 400, 0x55), 0, native=True),
    # A byte flip that destroys a JPEG frame's SOI: the header is sound (stored), the conversion must fail, nothing published.
    Case("corrupt-jpeg-frame", "both", flip_at(m.first_frame_offset, 0xFF), 0),
    # Truncated at several offsets (PS3.5 7.1: every element must be complete).
    Case("trunc-dataset-plus-8", "both", truncate_at(lambda d: m.dataset_offset(d) + 8), CANNOT_UNDERSTAND),
    Case("trunc-mid-header", "both", truncate_at(lambda d: (m.dataset_offset(d) + m.pixel_offset(d)) // 2), CANNOT_UNDERSTAND),
    Case("trunc-in-pixel-tag", "both", truncate_at(lambda d: m.pixel_offset(d) + 6), CANNOT_UNDERSTAND),
    Case("trunc-mid-pixel-data", "both", truncate_at(lambda d: (m.pixel_offset(d) + len(d)) // 2), CANNOT_UNDERSTAND),
    Case("trunc-last-byte", "both", truncate_at(lambda d: len(d) - 1), CANNOT_UNDERSTAND),
    Case("trunc-in-file-meta", "stow", truncate_at(lambda d: 150), CANNOT_UNDERSTAND),
    # Byte flips in the header.
    Case("flip-length-image-type", "both", flip_at(length_of(0x00080008)), CANNOT_UNDERSTAND),
    Case("flip-length-rows", "both", flip_at(length_of(0x00280010)), CANNOT_UNDERSTAND),
    Case("flip-dicm-magic", "stow", flip_at(lambda d: 128), CANNOT_UNDERSTAND),
    # Missing, wrong or hostile UIDs (PS3.5 9.1: digits and dots, at most 64 characters, no leading zeros).
    Case("missing-sop-instance-uid", "stow", m.delete_attr("SOPInstanceUID"), CANNOT_UNDERSTAND),
    Case("missing-series-uid", "both", m.delete_attr("SeriesInstanceUID"), CANNOT_UNDERSTAND),
    Case("missing-study-uid", "both", m.delete_attr("StudyInstanceUID"), CANNOT_UNDERSTAND),
    Case("empty-study-uid", "both", m.set_attr("StudyInstanceUID", ""), CANNOT_UNDERSTAND),
    *[Case(f"series-{name}", "both", m.set_attr("SeriesInstanceUID", value), CANNOT_UNDERSTAND) for name, value in BAD_UIDS.items()],
    Case("sop-uid-dotdot", "both", m.set_attr("SOPInstanceUID", "../../x"), CANNOT_UNDERSTAND),
    Case("study-uid-slash", "both", m.set_attr("StudyInstanceUID", "1.2/3"), CANNOT_UNDERSTAND),
    Case("frames-not-a-number", "both", m.raw_value(0x00280008, "IS", b"abc "), CANNOT_UNDERSTAND),
    # Values that would crash or mislead the tracker and converter (PS3.3 A.32.8, C.7.6.6, C.8.12.4): refused on receipt,
    # A900 on both protocols (C-STORE status PS3.4 B.2.3; STOW-RS FailureReason PS3.18 Annex I: one table, scp.storage).
    Case("frames-zero", "both", m.set_attr("NumberOfFrames", 0), DOES_NOT_MATCH),
    Case("frames-negative", "both", m.set_attr("NumberOfFrames", -5), DOES_NOT_MATCH),
    Case("rows-zero", "both", m.set_attr("Rows", 0), DOES_NOT_MATCH),
    Case("columns-zero", "both", m.set_attr("Columns", 0), DOES_NOT_MATCH),
    Case("matrix-columns-zero", "both", m.set_attr("TotalPixelMatrixColumns", 0), DOES_NOT_MATCH),
    Case("matrix-rows-zero", "both", m.set_attr("TotalPixelMatrixRows", 0), DOES_NOT_MATCH),
    Case("missing-pixel-data", "both", m.delete_attr("PixelData"), DOES_NOT_MATCH),
    # 40000 x 25000 with the 4 frames of the original: the frame count contradicts the matrix before any budget applies.
    Case("matrix-1e9-pixels", "both", matrix(40000, 25000), DOES_NOT_MATCH),
    # A declared size beyond the memory budget: A700 (over STOW-RS: HTTP 507, FailureReason A700).
    Case("matrix-columns-1e9", "both", matrix(10**9, 384), OUT_OF_RESOURCES),
    # Pixel data that cannot hold the declared frames (fragments, Basic Offset Table): cannot be understood as declared.
    Case("frames-more-than-items", "both", m.set_attr("NumberOfFrames", 10), CANNOT_UNDERSTAND),
    Case("frames-fewer-than-tiles", "both", m.set_attr("NumberOfFrames", 2), CANNOT_UNDERSTAND),
    # Wrong VRs.
    Case("rows-vr-lo", "both", m.raw_value(0x00280010, "LO", b"abc "), CANNOT_UNDERSTAND),
    Case("sop-class-vr-sq", "both", vr_to(0x00080016, b"SQ"), CANNOT_UNDERSTAND),
    Case("rows-vr-ob", "both", vr_to(0x00280010, b"OB"), CANNOT_UNDERSTAND),
    # The file meta says another transfer syntax than the data set is in (PS3.10 7.1).
    Case("meta-ts-implicit", "both", meta_ts(m.IMPLICIT), CANNOT_UNDERSTAND),
    Case("meta-ts-missing", "stow", meta_ts(None), CANNOT_UNDERSTAND),
    Case("meta-ts-unknown", "stow", meta_ts("1.2.3.4.5.6.7"), TS_NOT_SUPPORTED),
    # 3,000 nested sequences in the header.
    Case("nested-3000-sequences", "both", deep_nesting(3000), CANNOT_UNDERSTAND),
    # Non-WSI headers sent as WSI (PS3.4 B.2.3: data set does not match SOP class); over STOW-RS: SOP class not supported.
    *[Case(f"dataset-is-{kind}-sent-as-wsi", "dimse", not_wsi_dataset(kind, True), DOES_NOT_MATCH) for kind in ("ct", "seg", "annotation")],
    *[Case(f"part-is-{kind}", "stow", not_wsi_dataset(kind, False), SOP_CLASS_NOT_SUPPORTED) for kind in ("ct", "seg", "annotation")],
]



@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    yield from campaign_fixture(tmp_path_factory)


@pytest.mark.parametrize("case,via", rows(CASES))
def test_mutant(campaign, case, via):
    send_mutant(campaign, case, via)
    check_after(campaign, case.name)


def test_after_the_campaign_a_valid_slide_is_published_and_nothing_else(campaign):
    check_published(campaign)


def test_campaign_has_at_least_60_cases():
    assert len(rows(CASES)) >= 60, len(rows(CASES))
