"""The machinery of the malformed-input campaign: the case format, how a case is sent and checked, the node.

A case (`Case`) is a mutation of a valid generated instance, sent over C-STORE (pynetdicom,
the file's bytes as they are) or as one STOW-RS part, with the exact answer the sender must
see; `send_mutant` sends it and asserts that answer; `check_after` asserts the node is still
well. `campaign_fixture` starts one node process per test module. The tables themselves are in
tests/faults/test_malformed.py (and pending_cases.py for cases the product does not pass yet).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pydicom
import pytest

from converter.testkit import SlideSpec, write_non_wsi
from tests.faults import mutations as m
from tests.faults.audit import node_answers
from tests.faults.harness import NodeProcess, StoreOutcome, c_echo, c_store_bytes, healthz, multipart, stow

CANNOT_UNDERSTAND, DOES_NOT_MATCH, OUT_OF_RESOURCES = 0xC000, 0xA900, 0xA700
SOP_CLASS_NOT_SUPPORTED, TS_NOT_SUPPORTED = 0x0122, 0xC122  # PS3.18 10.5.3 failure reasons
SPEC = SlideSpec(width=512, height=384, tile_size=256, seed=10, downsamples=(1, 2))
NATIVE_SPEC = SlideSpec(width=512, height=384, tile_size=256, seed=11, downsamples=(1, 2), transfer_syntax="explicit")


@dataclass
class Campaign:
    """What every case needs: the node and the valid instances mutations start from."""
    node: NodeProcess
    level0: pydicom.Dataset
    level1: pydicom.Dataset
    native0: pydicom.Dataset
    native1: pydicom.Dataset
    folder: Path
    published: dict[str, bool] = field(default_factory=dict)
    """Series UID of every case -> whether it must end up published."""

    def instance(self, case: str, native: bool = False, level: int = 0) -> pydicom.Dataset:
        src = (self.native0, self.native1) if native else (self.level0, self.level1)
        return m.renamed(src[level], case)


@dataclass
class Case:
    name: str
    via: str
    """'dimse': C-STORE of the mutant's bytes; 'stow': one STOW-RS part; 'both': a row for each."""
    mutate: m.Mutator | None = None
    expect: int = 0
    """DIMSE status over C-STORE; FailureReason over STOW-RS (0: stored, HTTP 200)."""
    native: bool = False
    run: Callable[[Campaign, "Case"], None] | None = None
    """Instead of a mutation: a function that sends and asserts (HTTP requests, raw sockets)."""


def send_mutant(c: Campaign, case: Case, via: str) -> None:
    base = c.instance(f"{case.name}/{via}", native=case.native)
    data = case.mutate(base, m.to_bytes(base)) if case.mutate else m.to_bytes(base)
    expect = case.expect
    parts = [data]
    if expect == 0:
        # An accepted mutant comes with the rest of its series, so that the slide is complete and is converted.
        parts.append(m.to_bytes(c.instance(f"{case.name}/{via}", native=case.native, level=1)))
    c.published[str(base.SeriesInstanceUID)] = expect == 0 and case.name.startswith("valid")
    if via == "dimse":
        outcomes = c_store_bytes(c.node.port, parts, c.folder)
        assert outcomes[0].status == expect, f"{case.name}: sender saw {_fmt(outcomes[0])}, expected 0x{expect:04X}"
        assert all(o.status == 0 for o in outcomes[1:]), outcomes
        if expect:
            assert outcomes[0].comment, f"{case.name}: status 0x{expect:04X} without an ErrorComment"
    else:
        out = stow(c.node.stow_url, multipart(parts))
        # PS3.18 10.5.3: 409 when no instance could be stored; 507 when that is for lack of resources (issue 10).
        want = (200, []) if expect == 0 else (507 if expect == OUT_OF_RESOURCES else 409, [expect])
        assert (out.http, out.failed) == want, f"{case.name}: HTTP {out.http}, failure reasons {[hex(r) for r in out.failed]} ({out.text!r}); expected {want}"
    if expect:
        folder = c.node.folder("inbox") / str(base.StudyInstanceUID)
        assert not folder.exists() or not any(folder.rglob("*.dcm")), f"{case.name}: a refused instance was stored: {list(folder.rglob('*'))}"


def _fmt(o: StoreOutcome) -> str:
    return "no status" + (f" ({o.comment})" if o.comment else "") if o.status is None else f"0x{o.status:04X} {o.comment!r}"


# --- mutations --------------------------------------------------------------------------------------
def truncate_at(where: Callable[[bytes], int]) -> m.Mutator:
    return lambda ds, data: data[: where(data)]


def flip_at(where: Callable[[bytes], int], mask: int = 0xFF) -> m.Mutator:
    return lambda ds, data: m.flip(data, where(data), mask)


def length_of(tag: int) -> Callable[[bytes], int]:
    """The high byte of an explicit-VR element's 2-byte length: the length becomes huge (past the end)."""
    return lambda data: m.element_offset(data, tag) + 7


def deep_nesting(depth: int) -> m.Mutator:
    return lambda ds, data: m.insert_before(data, m.element_offset(data, 0x52009229), m.nested_sequences(depth))


def meta_ts(ts: str | None) -> m.Mutator:
    return lambda ds, data: m.set_meta_ts(data, ts)


def matrix(cols: int, rows: int) -> m.Mutator:
    def fn(d: pydicom.Dataset) -> None:
        d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows = cols, rows
    return m.with_ds(fn)


def not_wsi_dataset(kind: str, meta_says_wsi: bool) -> m.Mutator:
    """A non-WSI instance (CT, SEG, annotations) in the case's series; with `meta_says_wsi` its file meta
    (and so the C-STORE's Affected SOP Class) claims VL Whole Slide Microscopy Image Storage."""
    def mutate(ds: pydicom.Dataset, data: bytes) -> bytes:
        d = pydicom.dcmread(write_non_wsi(kind, Path(_TMP[0]) / f"nonwsi-{kind}", str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))
        return m.set_meta(m.to_bytes(d), MediaStorageSOPClassUID=m.WSI_STORAGE) if meta_says_wsi else m.to_bytes(d)
    return mutate


def vr_to(tag: int, vr: bytes) -> m.Mutator:
    """The element's VR bytes replaced: with SQ (2 reserved bytes, 4-byte length) the rest of the element no longer parses."""
    def mutate(ds: pydicom.Dataset, data: bytes) -> bytes:
        at = m.element_offset(data, tag) + 4
        return data[:at] + vr + data[at + 2:]
    return mutate


_TMP: list[str] = []

BAD_UIDS = {
    "uid-dotdot": "../../../etc/passwd",
    "uid-slash": "1.2.3/4.5",
    "uid-backslash": "1.2.3\\4",
    "uid-65-chars": "1." + "2" * 63,
    "uid-leading-zero": "1.2.03.4",
    "uid-letters": "1.2.abc",
}

def rows(cases: list[Case]) -> list:
    rows = []
    for case in cases:
        for via in (("dimse", "stow") if case.via == "both" else (case.via,)):
            rows.append(pytest.param(case, via, id=f"{via}-{case.name}"))
    return rows


def campaign_fixture(tmp_path_factory):
    """Body of the module-scoped `campaign` fixture of each table module."""
    from converter.testkit import write_series

    root = tmp_path_factory.mktemp("malformed")
    _TMP[:] = [str(root)]
    files = write_series(SPEC, root / "src", workers=1)
    native = write_series(NATIVE_SPEC, root / "native", workers=1)
    node = NodeProcess(root / "data", quiet=600).start()
    c = Campaign(node, *(pydicom.dcmread(f) for f in (files[0], files[1], native[0], native[1])), folder=root / "send")
    c.folder.mkdir()
    yield c
    node.stop(timeout=30)


def check_after(c: Campaign, case: str) -> None:
    assert c.node.alive(), f"after {case}: the node exited:\n{c.node.log_text()[-3000:]}"
    assert c_echo(c.node.port), f"after {case}: no C-ECHO answer"
    assert healthz(c.node.url), f"after {case}: no /healthz answer"
    time.sleep(0.05)
    assert c.node.incoming() == [], f"after {case}: left in inbox/.incoming: {c.node.incoming()}"




def check_published(c: Campaign) -> None:
    """After a campaign: the node answers, every valid case's slide is published, nothing else is."""
    node_answers(c.node)
    for uid, wanted in c.published.items():
        if wanted:
            c.node.wait_published(uid, timeout=60)
    time.sleep(2)  # the settle time of anything accepted last
    published = {p.stem for p in c.node.folder("serving").glob("*.tiff")}
    unexpected = published - {uid for uid, wanted in c.published.items() if wanted}
    assert not unexpected, f"published although refused or wrong: {unexpected}"
    assert c.node.incoming() == []


def valid_pair(c, case: str, publish: bool = True) -> tuple[pydicom.Dataset, list[bytes]]:
    """Two valid instances (both levels) of a slide of its own for `case`; `publish`: it must end up published."""
    a, b = c.instance(case), c.instance(case, level=1)
    c.published[str(a.SeriesInstanceUID)] = publish
    return a, [m.to_bytes(a), m.to_bytes(b)]
