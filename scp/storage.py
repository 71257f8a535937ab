"""Storing one received instance durably in the inbox.

Shared by every receiver (DIMSE C-STORE, DICOMweb STOW-RS): the instance is
validated, written as a DICOM Part 10 file under
`inbox/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm` by
fsync + rename from a temporary file on the same filesystem, and only then
reported as stored. UIDs are checked before they become path parts.

Validation before acknowledging: the header is read within caps (size, nesting) and checked by
converter.source.validate (the same rules the inbox scan applies to dropped files); a refusal
gets a status ('invalid', 'not-wsi', 'mismatch', 'too-large', 'no-space') with a reason of at
most 64 characters for the sender and the long form in `detail` (the receiver logs one line with
the peer, the SOP Instance UID and the status it sent; this module logs the refusal at debug
level only), and the temporary file is removed. `STATUS_CODES` is the one table from a result's
status to what a sender sees on each protocol (C-STORE status, PS3.4 B.2.3; STOW-RS
FailureReason, PS3.18 Annex I), read by `dimse_status` and `stow_failure_reason`, for every
receiver alike.

Duplicates: the same SOPInstanceUID with the same bytes is a success without
a second copy. With different bytes, the last received copy wins (the sender
re-sent it on purpose), and the earlier copy is not deleted but moved to
`archive/replaced/<Study>/<Series>/<SOP>.<time>.dcm`; both are logged.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from converter.errors import InputError, InstanceRefused, NotWsiError
from converter.source.instance import WsiInstance, describe_instance, read_dataset_header, sop_class_name
from converter.source.validate import DEFAULT_LIMITS, Limits
from converter.durable import durable_move, fsync_dir
from scp.incoming import free_bytes

log = logging.getLogger("wsi_node.storage")

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(UID_RE.match(text)) and not any(
        len(part) > 1 and part.startswith("0") for part in text.split(".")
    )


@dataclass
class StoreResult:
    status: str
    """'stored', 'duplicate', 'replaced' (success); refusals: 'invalid', 'not-wsi', 'mismatch', 'too-large', 'no-space', 'error'."""
    message: str = ""
    """For the sender: at most 64 characters (ErrorComment, PS3.7 C / PS3.5 6.2)."""
    path: Path | None = None
    instance: WsiInstance | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    detail: str = ""
    """For the log: the long form of a refusal (every problem found), without the temporary path."""

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate", "replaced")


class InstanceStore:
    def __init__(self, inbox: Path, archive: Path, quarantine: Path, reserve_bytes: int = 1 << 30, keep_other: bool = False,
                 limits: Limits = DEFAULT_LIMITS, mark: Path | None = None) -> None:
        self.inbox = Path(inbox)
        self.mark = mark
        """The receivers' mark (converter.inbox.receiving) its receivers touch while bytes arrive; None: none."""
        self.limits = limits
        """Header caps and the conversion memory budget every received instance is checked against."""
        self.archive = Path(archive)
        self.quarantine = Path(quarantine)
        self.reserve_bytes = reserve_bytes
        self.keep_other = keep_other
        self.incoming = self.inbox / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return free_bytes(self.inbox)  # f_bavail, the same measure as the receivers' IncomingFile

    def has_room(self) -> bool:
        return self.free_bytes() >= self.reserve_bytes

    def clean_incoming(self, older_than: float = 0) -> int:
        """Remove temporary files of transfers that never completed (aborted associations, crashes)."""
        removed = 0
        now = time.time()
        for item in self.incoming.iterdir():
            if now - item.stat().st_mtime >= older_than:
                item.unlink(missing_ok=True)
                removed += 1
        return removed

    def store_file(self, temp: Path, peer: str) -> StoreResult:
        """Validate a received Part 10 file and move it into the inbox.

        `temp` is consumed: moved into the inbox (or quarantine) on success, removed on refusal, so a
        refused transfer leaves nothing in inbox/.incoming. Every check of
        converter.source.validate runs before the durable write, hence before any success status.
        """
        if not self.has_room():
            temp.unlink(missing_ok=True)
            return StoreResult("no-space", f"free disk space below the reserve of {self.reserve_bytes // (1 << 20)} MB")
        try:
            result = self._store(temp, peer)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        except Exception as exc:  # a bug or a data set no rule foresaw: refuse it, never acknowledge
            log.exception("instance from %s: unexpected %s while checking it; refused", peer, type(exc).__name__)
            result = StoreResult("invalid", "the data set cannot be understood")
        if not result.ok:
            temp.unlink(missing_ok=True)
        return result

    def _refused(self, status: str, reason: str, detail: str, temp: Path, peer: str, sop_class: str = "", sop_uid: str = "") -> StoreResult:
        """A refusal: the short reason for the sender, the long one (no temporary path) for the receiver's log line.

        The receiver logs the refusal once, with the status it sent; here only at debug level.
        """
        detail = detail.replace(f"{temp}: ", "").replace(str(temp), "the instance")
        log.debug("instance %s from %s refused (%s): %s", sop_uid or "(no SOP Instance UID)", peer, status, detail)
        return StoreResult(status, reason[:64], sop_class_uid=sop_class, sop_instance_uid=sop_uid, detail=detail)

    def _store(self, temp: Path, peer: str) -> StoreResult:
        try:
            ds, scan = read_dataset_header(temp, self.limits)
        except InstanceRefused as exc:
            return self._refused(exc.status, exc.reason, exc.problem, temp, peer)
        except InputError as exc:
            return self._refused("invalid", "not a DICOM Part 10 data set", exc.problem, temp, peer)
        sop_class = _text(ds, "SOPClassUID")
        sop_uid, study, series = (_text(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
        bad = [name for name, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study), ("SeriesInstanceUID", series)) if not valid_uid(v)]
        if bad:
            # PS3.5 9.1: UIDs are digits and dots, at most 64 characters; they become path parts here.
            return self._refused("invalid", f"missing or invalid {', '.join(bad)}"[:64], f"missing or invalid {', '.join(bad)}",
                                 temp, peer, sop_class, sop_uid if valid_uid(sop_uid) else "")
        try:
            instance = describe_instance(ds, str(temp), scan, self.limits)
        except NotWsiError:
            if not self.keep_other:
                return self._refused("not-wsi", f"{sop_class_name(sop_class)} is not a whole-slide image"[:64],
                                     f"{sop_class_name(sop_class)} is not a whole-slide image", temp, peer, sop_class, sop_uid)
            dest = _unique(self.quarantine / "not-wsi" / study / series / f"{sop_uid}.dcm")
            self._place(temp, dest)
            log.warning("stored %s from %s in quarantine: %s is not a whole-slide image", sop_uid, peer, sop_class_name(sop_class))
            return StoreResult("stored", "kept in quarantine (not a whole-slide image)", dest, None, sop_class, sop_uid)
        except InstanceRefused as exc:
            return self._refused(exc.status, exc.reason, exc.problem, temp, peer, sop_class, sop_uid)
        except InputError as exc:
            return self._refused("invalid", exc.problem.replace(f"{temp}: ", "")[:64], exc.problem, temp, peer, sop_class, sop_uid)

        target = self.inbox / study / series / f"{sop_uid}.dcm"
        status = "stored"
        if target.exists():
            if filecmp.cmp(temp, target, shallow=False):
                temp.unlink(missing_ok=True)
                log.info("instance %s from %s: identical copy already stored; not stored twice", sop_uid, peer)
                return StoreResult("duplicate", "identical copy already stored", target, replace(instance, path=str(target)), sop_class, sop_uid)
            replaced = _unique(self.archive / "replaced" / study / series / f"{sop_uid}.{time.strftime('%Y%m%dT%H%M%S')}.dcm")
            durable_move(target, replaced)
            log.warning("instance %s from %s differs from the copy received before; the new one is used, the old one kept as %s", sop_uid, peer, replaced)
            status = "replaced"
        self._place(temp, target)
        stored = replace(instance, path=str(target))
        return StoreResult(status, "", target, stored, sop_class, sop_uid)

    @staticmethod
    def _place(temp: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "rb") as fp:
            os.fsync(fp.fileno())
        os.replace(temp, target)
        fsync_dir(target.parent)


def _text(ds, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:  # a malformed value: treated as missing
        return ""


# What a sender sees for each result status, on both protocols, in ONE table so that they cannot drift:
# (C-STORE Status, PS3.4 B.2.3 / PS3.7 C; STOW-RS FailureReason (0008,1197), PS3.18 Annex I, which takes
# its values from the same storage statuses). Both codes of a row are of the same class (see code_class);
# tests/scp/test_store_validation.py checks every status has a row.
STATUS_CODES: dict[str, tuple[int, int | None]] = {
    "stored": (0x0000, None),
    "duplicate": (0x0000, None),
    "replaced": (0x0000, None),
    "no-space": (0xA700, 0xA700),  # Refused: Out of Resources
    "too-large": (0xA700, 0xA700),  # Refused: Out of Resources (over the conversion memory budget or the header cap)
    "error": (0xA700, 0xA700),  # Refused: Out of Resources (a write failed)
    "invalid": (0xC000, 0xC000),  # Error: Cannot understand (unparsable, truncated, bad UIDs or VRs)
    "mismatch": (0xA900, 0xA900),  # Error: Data Set does not match SOP Class (IOD violation, or what the converter cannot use)
    # Not a WSI: over C-STORE the data set contradicts the negotiated WSI SOP Class (A900); over STOW-RS there
    # is no negotiated class, so the part's SOP Class is not supported (0122, PS3.18 Annex I / PS3.7 C.5.x).
    "not-wsi": (0xA900, 0x0122),
}
UNKNOWN_STATUS = (0xA700, 0xA700)
"""A status this table does not know (a bug): refused, never acknowledged."""


def code_class(code: int) -> str:
    """The kind of answer a status code is: 'success', 'out-of-resources', 'sop-class' (the data set and its
    SOP Class do not go together: A9xx, 0122), 'cannot-understand' (Cxxx), or 'other'."""
    if code == 0x0000:
        return "success"
    if code & 0xFF00 == 0xA700:
        return "out-of-resources"
    if code & 0xFF00 == 0xA900 or code == 0x0122:
        return "sop-class"
    if code & 0xF000 == 0xC000:
        return "cannot-understand"
    return "other"


def dimse_status(result: StoreResult) -> int:
    """The C-STORE status of a store result (PS3.4 B.2.3); send result.message as ErrorComment when not 0x0000."""
    return STATUS_CODES.get(result.status, UNKNOWN_STATUS)[0]


def stow_failure_reason(result: StoreResult) -> int:
    """The FailureReason (0008,1197) of a refused STOW-RS part (PS3.18 Annex I, PS3.4 B.2.3)."""
    return STATUS_CODES.get(result.status, UNKNOWN_STATUS)[1] or UNKNOWN_STATUS[1]


def _unique(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate
