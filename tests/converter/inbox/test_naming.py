"""Tests of converter/inbox/naming.py (property-tested) and its use for outputs, archive and quarantine."""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.inbox import naming
from converter.inbox.moves import archive_files, quarantine_file, unique_path
from converter.inbox.outputs import target_for
from converter.inbox.state import StateStore
from converter.source.discover import safe_name

EXTS = ["", ".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".dcm", ".SVS", ".Ome.Tiff"]
# Any character at all, including controls, surrogate escapes (undecodable bytes), '/', NUL.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80) | st.text(
    st.sampled_from(list("ab.é/\x00\n\t\u202e \udcff%~-😀")), max_size=20)
safe_stems = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"),
                     min_size=1, max_size=120).filter(lambda s: not s.startswith(".") and s not in ("", ".", ".."))
safe_names = st.builds(lambda s, e: s + e, safe_stems, st.sampled_from(EXTS)).filter(lambda n: naming.refusal(n) is None)


@settings(max_examples=400, deadline=None)
@given(safe_names)
def test_a_safe_name_keeps_stem_and_extension_and_stays_in_the_folder(name: str) -> None:
    out = naming.output_name(name)
    stem, ext = naming.split_name(name)
    assert naming.refusal(out) is None and "/" not in out
    assert (Path("/srv/serving") / out).parent == Path("/srv/serving")
    assert out.endswith(ext) and len(out.encode("utf-8")) <= naming.MAX_NAME_BYTES
    if len(name.encode("utf-8")) <= naming.MAX_NAME_BYTES:
        assert out == name  # kept exactly: same characters, same normalisation
    else:
        assert out.startswith(stem[:10]) and "~" in out
    assert safe_name(name) == out
    numbered = naming.numbered(name, 2)
    assert numbered.endswith("-2" + ext) and numbered != out and naming.refusal(numbered) is None


@settings(max_examples=400, deadline=None)
@given(safe_names, safe_names)
def test_two_names_never_map_to_one_output(a: str, b: str) -> None:
    if a != b:
        assert naming.output_name(a) != naming.output_name(b)
        assert naming.numbered(a, 2) != naming.numbered(b, 2) or naming.split_name(a) == naming.split_name(b)


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_any_name_gets_a_safe_spelling_or_a_clear_refusal(name: str) -> None:
    why = naming.refusal(name)
    if why is None:
        assert naming.output_name(name)
    else:
        with pytest.raises(naming.UnsafeNameError) as err:
            naming.output_name(name)
        assert "Rename the file" in err.value.fix if hasattr(err.value, "fix") else "Rename" in str(err.value)
    spelled = safe_name(name)  # never raises: the escaped spelling for refused names
    assert naming.refusal(spelled) is None
    assert (Path("/q") / spelled).parent == Path("/q")
    q = naming.relative(name, quarantine=True)
    assert not q.is_absolute() and ".." not in q.parts and all(naming.refusal(p, output=False) is None for p in q.parts)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b.svs", "/etc/passwd", "a\x00b.svs", "line\nbreak.svs", "tab\t.svs",
                                 "del\x7f.svs", "c1\x85.svs", "x\u202egpj.svs", "bytes\udcff.svs", ".hidden.svs"])
def test_refused_names(bad: str) -> None:
    with pytest.raises(naming.UnsafeNameError):
        naming.output_name(bad)


def test_real_world_names_survive() -> None:
    nfc = unicodedata.normalize("NFC", "Präparat é.svs")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    for name in ["😀.svs", "🧫 slide.ndpi", nfc, nfd, "a.b.svs", "S23-0042 A1.svs", "x.ome.tiff", "50% tumour.tif"]:
        assert safe_name(name) == name  # old code: '😀.svs' -> 'svs', accented letters -> '_'
    assert safe_name(nfc) != safe_name(nfd)
    assert naming.numbered("x.ome.tiff", 2) == "x-2.ome.tiff" and naming.numbered("a.b.svs", 3) == "a.b-3.svs"
    assert naming.split_name("1.2.840.113") == ("1.2.840", ".113") and safe_name("1.2.840.113") == "1.2.840.113"
    assert naming.uid_name("../1.2") == "1.2" and naming.uid_name("1.2.3") == "1.2.3"  # no DICOM value names a path


def test_relative_paths_refuse_leaving_the_folder() -> None:
    assert naming.relative("caseA/level 0 é.dcm") == PurePosixPath("caseA", "level 0 é.dcm")
    for bad in ["../x.dcm", "a/../../x.dcm", "/abs/x.dcm", "a/\nb.dcm"]:
        with pytest.raises(naming.UnsafeNameError):
            naming.relative(bad)
    assert naming.relative("../../x\n.dcm", quarantine=True) == PurePosixPath("%2E.", "%2E.", "x%0A.dcm")


def _store_file(store: StateStore, inbox: Path, rel: str, kind: str = "dicom", uid: str | None = None):
    path = inbox / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    store.put_file(rel, str(path), 4, 0, kind, uid)
    return store.files()[rel]


def test_drop_names_keep_unicode_and_never_collide(tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    serving.mkdir()
    inbox = tmp_path / "inbox"
    store = StateStore(tmp_path / "state.sqlite")
    try:
        nfc = unicodedata.normalize("NFC", "Präparat é")
        nfd = unicodedata.normalize("NFD", nfc)
        a = _store_file(store, inbox, f"{nfc}/a.dcm", uid="1.2.1")
        b = _store_file(store, inbox, f"{nfd}/a.dcm", uid="1.2.2")
        c = _store_file(store, inbox, "😀.b.dcm", uid="1.2.3")
        d = _store_file(store, inbox, "S23-0042 A1/x.dcm", uid="1.2.4")
        names = [target_for(r.series_uid, [r], serving, "drop-name", store).name for r in (a, b, c, d)]
        assert names == [f"{nfc}.tiff", f"{nfd}.tiff", "😀.b.tiff", "S23-0042 A1.tiff"]
        bad = _store_file(store, inbox, "bad\x1bname/x.dcm", uid="1.2.5")
        assert target_for("1.2.5", [bad], serving, "drop-name", store) == serving / "1.2.5.tiff"
    finally:
        store.close()


def test_archive_and_quarantine_keep_or_escape_names(tmp_path: Path) -> None:
    inbox, archive, quarantine = tmp_path / "inbox", tmp_path / "archive", tmp_path / "quarantine"
    store = StateStore(tmp_path / "state.sqlite")
    try:
        row = _store_file(store, inbox, "fall 1/😀 Schnitt.svs", kind="passthrough")
        archive_files([row], archive, store)
        assert (archive / "fall 1" / "😀 Schnitt.svs").read_bytes() == b"data"
        (inbox / "fall 1").mkdir(exist_ok=True)
        again = _store_file(store, inbox, "fall 1/😀 Schnitt.svs", kind="passthrough")
        archive_files([again], archive, store)
        assert (archive / "fall 1" / "😀 Schnitt-2.svs").exists()  # nothing overwritten, stem and extension kept

        weird = _store_file(store, inbox, "new\nline.svs", kind="passthrough")
        quarantine_file(weird, "refused name", quarantine, store)
        assert (quarantine / "new%0Aline.svs").read_bytes() == b"data"
        assert (quarantine / "new%0Aline.svs.reason.txt").read_text().startswith("new%0Aline.svs\n")
        assert not (inbox / "new\nline.svs").exists()
        assert unique_path(quarantine / "new%0Aline.svs") == quarantine / "new%0Aline-2.svs"
    finally:
        store.close()
