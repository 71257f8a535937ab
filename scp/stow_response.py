"""What a STOW-RS request gets back: the PS3.18 store response, failure reasons, request errors.

PS3.18 Annex I answers a store request with `application/dicom+json` listing every instance
stored (ReferencedSOPSequence) and every part refused, with a FailureReason from the PS3.4
storage statuses (FailedSOPSequence). A request that cannot be processed at all (bad media
type, bad credentials, malformed body) ends with a plain HTTP error instead: `Reject`.
Kept apart from the body parser and the endpoint, which both produce these.
"""

from __future__ import annotations

# FailureReason (0008,1197) values, PS3.18 Annex I / PS3.4 storage statuses.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # data set does not match SOP class; also: Study Instance UID does not match the URL
CANNOT_UNDERSTAND = 0xC000  # not DICOM Part 10, unparsable, missing/invalid UIDs, part media type not application/dicom
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a whole-slide image
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # Referenced Transfer Syntax not supported (PS3.18 Annex I): not one DIMSE accepts

# The FailureReason of a part refused by the InstanceStore comes from scp.storage.STATUS_CODES (one
# table for C-STORE and STOW-RS); the constants here are for what the STOW-RS side decides itself.


class Reject(Exception):
    """Ends a request with an HTTP error: `status`, and the reason as a text/plain body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def dicom_json_response(referenced: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> dict:
    """The PS3.18 Annex I store instances response: ReferencedSOPSequence and FailedSOPSequence."""

    def ui(value: str) -> dict:
        return {"vr": "UI", "Value": [value]}

    body: dict = {}
    if failed:
        items = []
        for sop_class, sop_uid, reason in failed:
            item = {}
            if sop_class:
                item["00081150"] = ui(sop_class)
            if sop_uid:
                item["00081155"] = ui(sop_uid)
            item["00081197"] = {"vr": "US", "Value": [reason]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": [{"00081150": ui(c), "00081155": ui(u)} for c, u in referenced]}
    return body
