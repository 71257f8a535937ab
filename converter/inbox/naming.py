"""File names: the one set of rules for output, archive and quarantine names. Pure, no I/O.

Slide files arrive with whatever name the scanner, the LIS export or a person gave them:
Unicode (NFC or NFD), emoji, spaces, several dots (``a.b.svs``), two-part format suffixes
(``.ome.tiff``). The rules, used by :mod:`converter.source.discover` (``safe_name``),
:mod:`converter.inbox.outputs` (targets in serving) and :mod:`converter.inbox.moves` (archive and
quarantine paths):

* A name that is safe is kept exactly as it is: same characters, same normalisation (NFC and NFD
  spellings are different names on Linux file systems, so normalising would map two inputs to one
  output), same stem, same extension. Keeping the name is what makes the mapping injective.
* Refused (:func:`refusal`): the empty name, ``.`` and ``..``, a ``/`` or NUL (which would leave the
  folder or truncate the name), control characters (Unicode category Cc: C0, DEL, C1), bidirectional
  override/isolate controls (they make ``x\\u202egpj.svs`` display as another name), and bytes that are
  not UTF-8 (Python's surrogate escapes: the name cannot be written to the sidecar or the state
  database). Output names also refuse a leading ``.``: serving reserves hidden names for temporary
  files. A refused name gets an error that says what is wrong and how to fix it
  (:class:`UnsafeNameError`); where a file must still be moved (quarantine), :func:`escaped` gives a
  safe spelling with ``%XX`` escapes of the offending characters.
* Length: file systems allow 255 bytes per name and we add ``-2`` / ``-<hash>``, ``.json``,
  ``.reason.txt`` and ``.<name>.<pid>.tmp``; so a name longer than :data:`MAX_NAME_BYTES` (UTF-8) keeps
  its extension and the start of its stem and gets ``~<8 hex digits of sha1(full name)>``, which keeps
  two long names that share their start apart.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import PurePosixPath

from converter.errors import InputError

MAX_NAME_BYTES = 200
"""Longest output name (UTF-8 bytes); leaves room under NAME_MAX (255) for the suffixes we add."""

FORMAT_SUFFIXES = (".ome.tiff", ".ome.tif")
"""Extensions of two parts; kept whole (``s.ome.tiff`` -> ``s-2.ome.tiff``, not ``s.ome-2.tiff``)."""

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_MAX_EXT = 12


class UnsafeNameError(InputError):
    """A file name that could leave its folder or cannot be stored as it is."""


def _bad_char(c: str) -> str | None:
    if c == "/":
        return "a '/' (a path separator)"
    if c == "\x00":
        return "a NUL character"
    if "\udc80" <= c <= "\udcff":
        return f"the byte 0x{ord(c) - 0xDC00:02X}, which is not UTF-8"
    cat = unicodedata.category(c)
    if cat == "Cc":
        return f"the control character U+{ord(c):04X}"
    if cat == "Cs":
        return f"the lone surrogate U+{ord(c):04X}"
    if c in _BIDI_CONTROLS:
        return f"the bidirectional control U+{ord(c):04X} (it disguises the name)"
    return None


def refusal(name: str, *, output: bool = True) -> str | None:
    """Why `name` cannot be used as one file name, or None if it can (``output``: a name in serving)."""
    if name in ("", ".", ".."):
        return f"the name {name!r} is not a file name (it would name the folder itself or its parent)"
    for c in name:
        bad = _bad_char(c)
        if bad is not None:
            return f"the name {escaped(name)!r} contains {bad}"
    if output and name.startswith("."):
        return f"the name {name!r} starts with '.', which serving reserves for temporary files"
    return None


def check_name(name: str, *, output: bool = True) -> str:
    """`name` itself if it is safe; else :class:`UnsafeNameError` with the reason and the fix."""
    why = refusal(name, output=output)
    if why is not None:
        raise UnsafeNameError(f"{why}.", "Rename the file (letters, digits, spaces and punctuation are fine) and drop it again.")
    return name


def split_name(name: str) -> tuple[str, str]:
    """(stem, extension): ``a.b.svs`` -> (``a.b``, ``.svs``); ``s.ome.tiff`` -> (``s``, ``.ome.tiff``).

    The extension is the two-part format suffix, else the last dot-part if it is short and has no
    space; a name without one (or whose only dot is the first character) has the extension ``''``.
    """
    lower = name.lower()
    for suffix in FORMAT_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    ext = name[dot:]
    if len(ext) > _MAX_EXT or " " in ext or len(ext) == 1:
        return name, ""
    return name[:dot], ext


def _fit(stem: str, ext: str, whole: str) -> str:
    """`stem + ext`, or, if longer than MAX_NAME_BYTES, a prefix of the stem + '~' + a hash + ext."""
    name = stem + ext
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    tag = "~" + hashlib.sha1(whole.encode("utf-8")).hexdigest()[:8]
    budget = MAX_NAME_BYTES - len((tag + ext).encode("utf-8"))
    out, used = "", 0
    for c in stem:  # cut on a character boundary, never inside a UTF-8 sequence
        n = len(c.encode("utf-8"))
        if used + n > budget:
            break
        out, used = out + c, used + n
    return out + tag + ext


def output_name(name: str) -> str:
    """The name a file keeps in serving/archive: `name` itself (stem and extension), length-limited."""
    check_name(name)
    stem, ext = split_name(name)
    return _fit(stem, ext, name)


def with_extension(base: str, ext: str) -> str:
    """``base + ext`` for a name made from a drop or a UID (e.g. ``.tiff``), checked and length-limited."""
    check_name(base + ext)
    return _fit(base, ext, base + ext)


def numbered(name: str, n: int) -> str:
    """The n-th free variant of `name`: ``-n`` before the extension (``s.ome.tiff`` -> ``s-2.ome.tiff``)."""
    stem, ext = split_name(name)
    return _fit(stem, f"-{n}{ext}", f"{name}/{n}")


def tagged(name: str, tag: str) -> str:
    """`name` with ``-tag`` before the extension (used to tell two series' outputs apart)."""
    stem, ext = split_name(name)
    return _fit(stem, f"-{tag}{ext}", f"{name}/{tag}")


def uid_name(uid: str) -> str:
    """A file name for a UID. Valid UIDs (PS3.5 9.1: digits and '.') are kept; anything else in the
    value is replaced by '_', so no DICOM value can name a path."""
    cleaned = "".join(c if (c.isascii() and (c.isalnum() or c in "._-")) else "_" for c in uid).strip("._")
    return (cleaned or "unnamed")[:MAX_NAME_BYTES]


def escaped(name: str) -> str:
    """A safe spelling of any name for quarantine: refused characters as ``%XX`` (UTF-8 bytes, or the
    original byte for undecodable ones); ``.``/``..``/empty/hidden get a visible prefix. Identity on
    names that are safe."""
    if name not in ("", ".", "..") and not name.startswith(".") and all(_bad_char(c) is None for c in name):
        return name
    out = []
    for c in name:
        if _bad_char(c) is None and c != "%":
            out.append(c)
        elif "\udc80" <= c <= "\udcff":
            out.append(f"%{ord(c) - 0xDC00:02X}")
        else:
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")))
    text = "".join(out)
    if text.startswith("."):
        text = "%2E" + text[1:]
    return text or "%00"


def relative(rel: str, *, quarantine: bool = False) -> PurePosixPath:
    """A relative path below a folder (archive, quarantine) for inbox path `rel`.

    Refuses absolute paths and ``..`` (they would leave the folder) and unsafe components with
    :class:`UnsafeNameError`; with ``quarantine`` every component is :func:`escaped` instead, so a
    file that must be moved aside always has somewhere to go, inside the folder.
    """
    parts = rel.split("/")
    if rel.startswith("/") and not quarantine:
        raise UnsafeNameError(f"the path {escaped(rel)!r} is absolute; it would leave the folder.",
                              "Give the path relative to the inbox.")
    if quarantine:
        return PurePosixPath(*[escaped(p) for p in parts if p != ""] or ["unnamed"])
    if not rel:
        raise UnsafeNameError("an empty path was given for a file.", "This is a bug in the caller; report it.")
    for p in parts:
        check_name(p, output=False)
    return PurePosixPath(*parts)
