"""Storage Commitment Push Model SCP (PS3.4 Annex J) with real pynetdicom peers over 127.0.0.1.

pynetdicom is the Storage Commitment SCU: the report on the same association (kept open), and on a
new association to the SCU's own listener (commitment_peers, SCP role proposed). Bad input: malformed
requests get PS3.7 10.1.4.1.10 statuses; unknown or refused instances fail with J.3.3 reasons and do
not trigger a conversion; an unreachable reply address leaves the report pending (SQLite), retried
and delivered after a restart. Every wait is bounded.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from converter.testkit import SlideSpec, series_uids, write_series
from scp.commitment import STORAGE_COMMITMENT_INSTANCE
from scp.commitment.peers import Peer
from scp.commitment.service import CommitmentSettings
from scp.dimse import WSI_STORAGE
from tests.support.node import RunningNode, free_port

# A factor-4 pyramid whose smallest level (1100 x 750) is above 1024 px and several tiles: the structural
# rule alone would wait for the quiet period.
FACTOR4 = SlideSpec(width=4400, height=3000, tile_size=256, downsamples=(1, 4), seed=1201)


@pytest.fixture(scope="module")
def factor4(tmp_path_factory) -> list[Path]:
    return write_series(FACTOR4, tmp_path_factory.mktemp("factor4"))


def refs_of(files: list[Path]) -> list[tuple[str, str]]:
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def action_info(tuid: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = tuid
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, inst
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


class Reports:
    """N-EVENT-REPORTs received by the SCU (on its association or its own listener)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, Dataset, str]] = []
        self.ready = threading.Event()

    def handler(self, event) -> tuple[int, None]:
        self.items.append((int(event.request.EventTypeID), event.event_information, event.assoc.requestor.ae_title))
        self.ready.set()
        return 0x0000, None

    def wait(self, timeout: float = 15.0) -> tuple[int, Dataset, str]:
        assert self.ready.wait(timeout), f"no N-EVENT-REPORT within {timeout} s"
        return self.items[-1]


def scu_association(port: int, files: list[Path], reports: Reports | None = None, aet: str = "COMMITSCU"):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for ts in sorted({str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}):
        ae.add_requested_context(WSI_STORAGE, ts)
    ae.add_requested_context(StorageCommitmentPushModel)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)] if reports else []
    assoc = ae.associate("127.0.0.1", port, ae_title="WSINODE", evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def push(assoc, files: list[Path]) -> None:
    for f in files:
        assert int(assoc.send_c_store(f).Status) == 0x0000


def request(assoc, info: Dataset, action: int = 1) -> int:
    status, _ = assoc.send_n_action(info, action, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    assert status is not None, "no N-ACTION response"
    return int(status.Status)


def listener(aet: str, reports: Reports):
    """The SCU's own SCP for reports on a new association: it accepts the SCP role the node proposes."""
    ae = AE(ae_title=aet)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)])
    return server, port


def sops(ds: Dataset, keyword: str) -> list[str]:
    return sorted(str(i.ReferencedSOPInstanceUID) for i in ds.get(keyword, []))


def sidecar(n: RunningNode, uid: str) -> dict:
    return json.loads((n.data / "serving" / f"{uid}.json").read_text())


def test_same_association_report_and_commitment_completes_the_slide(tmp_path, factor4):
    n = RunningNode(tmp_path)
    try:
        reports = Reports()
        assoc = scu_association(n.port, factor4, reports)
        push(assoc, factor4)
        refs = refs_of(factor4)
        t0 = time.monotonic()
        assert request(assoc, action_info("1.2.826.0.1.3680043.10.1201.1", refs)) == 0x0000
        kind, info, _ = reports.wait()
        assert kind == 1, info
        assert str(info.TransactionUID) == "1.2.826.0.1.3680043.10.1201.1"
        assert sops(info, "ReferencedSOPSequence") == sorted(r[1] for r in refs) and "FailedSOPSequence" not in info
        # The association is still open and the smallest level is 1100 px: only the commitment can complete it.
        assert assoc.is_established
        _, uid = series_uids(FACTOR4)
        out = n.output(uid, timeout=20)
        assert time.monotonic() - t0 < 20 < n.settings.quiet
        assert assoc.is_established, "published while the association was open: the commitment signal decided"
        assert out.exists()
        assoc.release()
    finally:
        n.stop()


def test_new_association_report_with_failures_for_unknown_instances(tmp_path, factor4):
    reports = Reports()
    server, port = listener("COMMITSCU", reports)
    n = RunningNode(tmp_path, commitment=CommitmentSettings(peers={"COMMITSCU": Peer("COMMITSCU", "127.0.0.1", port)}))
    try:
        assoc = scu_association(n.port, factor4[:1])
        push(assoc, factor4[:1])
        refs = refs_of(factor4[:1]) + [(WSI_STORAGE, "1.2.826.0.1.3680043.10.1201.999")]  # never sent
        refs.append((refs[0][0].replace("77.1.6", "77.1.2"), "1.2.826.0.1.3680043.10.1201.998"))  # a class the node does not store
        assert request(assoc, action_info("1.2.826.0.1.3680043.10.1201.2", refs)) == 0x0000
        assoc.release()  # the report must come on a new association
        kind, info, calling = reports.wait()
        assert calling == "WSINODE"
        assert kind == 2
        assert sops(info, "ReferencedSOPSequence") == [refs[0][1]]
        reasons = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.FailedSOPSequence}
        assert reasons == {refs[1][1]: 0x0112, refs[2][1]: 0x0122}
        deadline = time.monotonic() + 10
        while n.node.commitment.counts["delivered-new"] < 1:  # recorded once the report's association is released
            assert time.monotonic() < deadline, n.node.commitment.counts
            time.sleep(0.05)
        db = sqlite3.connect(n.data / "state" / "commitments.sqlite")
        assert db.execute("SELECT state FROM commitments").fetchall() == [("delivered",)]
        metrics = n.node.metrics.registry.get_sample_value("wsi_node_storage_commitments_total", {"outcome": "delivered-new"})
        assert metrics == 1.0
    finally:
        n.stop()
        server.shutdown()


@pytest.mark.parametrize("case, status", [
    ("no-transaction-uid", 0x0115), ("empty-sequence", 0x0115), ("item-without-class", 0x0115),
    ("bad-uid", 0x0115), ("other-action", 0x0123), ("not-a-peer", 0x0124),
])
def test_malformed_requests_get_clear_statuses(tmp_path, factor4, case, status, caplog):
    caplog.set_level("WARNING", logger="wsi_node.commitment")
    peers = {"OTHERAE": Peer("OTHERAE", "127.0.0.1", free_port())} if case == "not-a-peer" else {}
    n = RunningNode(tmp_path, commitment=CommitmentSettings(peers=peers))
    try:
        assoc = scu_association(n.port, factor4[:1])
        refs = refs_of(factor4[:1])
        info = action_info("1.2.826.0.1.3680043.10.1201.3", refs)
        if case == "no-transaction-uid":
            del info.TransactionUID
        elif case == "empty-sequence":
            info.ReferencedSOPSequence = Sequence([])
        elif case == "item-without-class":
            del info.ReferencedSOPSequence[0].ReferencedSOPClassUID
        elif case == "bad-uid":
            info.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.abc"
        assert request(assoc, info, action=2 if case == "other-action" else 1) == status
        assoc.release()
        assert any("refused (0x%04X)" % status in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert not (n.data / "state" / "commitments.sqlite").exists() or sqlite3.connect(
            n.data / "state" / "commitments.sqlite").execute("SELECT COUNT(*) FROM commitments").fetchone() == (0,)
    finally:
        n.stop()


def test_missing_instance_fails_and_an_incomplete_slide_is_not_converted_early(tmp_path):
    """An instance never received (or refused at receipt) is 0x0112 in the report; a request with failures is no
    completion signal, and a level with a missing part keeps the series waiting for the quiet period."""
    spec = SlideSpec(width=4400, height=3000, tile_size=256, downsamples=(1, 4), concatenation_parts=2, seed=1202)
    files = write_series(spec, tmp_path / "src")
    refs = refs_of(files)
    first = {str(pydicom.dcmread(f, stop_before_pixels=True).get("InConcatenationNumber", 0)): f for f in files[:2]}
    missing = first.get("2", files[1])
    sent = [f for f in files if f != missing]
    reports = Reports()
    n = RunningNode(tmp_path)
    try:
        assoc = scu_association(n.port, files, reports)
        push(assoc, sent)
        assert request(assoc, action_info("1.2.826.0.1.3680043.10.1201.4", refs)) == 0x0000
        kind, info, _ = reports.wait()
        assert kind == 2
        assert sops(info, "FailedSOPSequence") == [str(pydicom.dcmread(missing, stop_before_pixels=True).SOPInstanceUID)]
        assert {int(i.FailureReason) for i in info.FailedSOPSequence} == {0x0112}
        assoc.release()
        _, uid = series_uids(spec)
        time.sleep(3 * n.settings.settle + 1)
        assert not (n.data / "serving" / f"{uid}.tiff").exists(), "converted early although a part was missing"
        decision = n.node.query(lambda node: node.tracker.decision(uid))
        assert decision.action == "wait" and "missing frames or parts" in decision.waiting_for, decision
    finally:
        n.stop()


def test_unreachable_reply_address_stays_pending_and_is_delivered_after_a_restart(tmp_path, factor4, caplog):
    caplog.set_level("WARNING", logger="wsi_node.commitment")
    dead = free_port()
    settings = CommitmentSettings(peers={"COMMITSCU": Peer("COMMITSCU", "127.0.0.1", dead)}, retry_seconds=0.5, max_backoff=1.0)
    n = RunningNode(tmp_path, commitment=settings)
    try:
        assoc = scu_association(n.port, factor4[:1])
        push(assoc, factor4[:1])
        assert request(assoc, action_info("1.2.826.0.1.3680043.10.1201.5", refs_of(factor4[:1]))) == 0x0000
        assoc.release()
        deadline = time.monotonic() + 15
        while n.node.commitment.counts["retry"] < 2:
            assert time.monotonic() < deadline, n.node.commitment.counts
            time.sleep(0.1)
        assert any("not delivered" in r.getMessage() and "1.2.826.0.1.3680043.10.1201.5" in r.getMessage() for r in caplog.records)
    finally:
        n.stop()
    db = sqlite3.connect(tmp_path / "data" / "state" / "commitments.sqlite")
    assert db.execute("SELECT state FROM commitments").fetchall() == [("pending",)]
    db.close()
    reports = Reports()
    server, port = listener("COMMITSCU", reports)
    settings = CommitmentSettings(peers={"COMMITSCU": Peer("COMMITSCU", "127.0.0.1", port)})
    n = RunningNode(tmp_path, commitment=settings)
    try:
        kind, info, _ = reports.wait()
        assert kind == 1 and str(info.TransactionUID) == "1.2.826.0.1.3680043.10.1201.5"
    finally:
        n.stop()
        server.shutdown()


def test_peer_and_profile_settings():
    from config.errors import ConfigError
    from converter.inbox.completeness.profiles import SenderProfile, parse_profile
    from scp.commitment.peers import parse_peers

    peers = parse_peers(["ORTHANC=127.0.0.1:4242", "PACS=[::1]:104/tls"])
    assert peers["ORTHANC"] == Peer("ORTHANC", "127.0.0.1", 4242) and peers["PACS"] == Peer("PACS", "::1", 104, True)
    for bad in ("ORTHANC", "ORTHANC=host", "=h:1", "ORTHANC=h:0", "A_VERY_LONG_AE_TITLE_X=h:1"):
        with pytest.raises(ConfigError, match="Fix: Write --commitment-peer AET=host:port"):
            parse_peers([bad])
    default = SenderProfile(settle=1.0, quiet=40.0)
    p = parse_profile("SCANNER1=quiet:30,association_end:false", default)
    assert (p.name, p.settle, p.quiet, p.small_level_px, p.association_end_completes) == ("SCANNER1", 1.0, 30.0, 1024, False)
    for bad in ("SCANNER1=speed:3", "SCANNER1=quiet:soon", "SCANNER1=association_end:maybe", "=quiet:1"):
        with pytest.raises(ValueError):
            parse_profile(bad, default)


def test_default_profile_publishes_a_factor4_pyramid_when_its_association_ends(tmp_path, factor4):
    """No commitment: the release of the association that delivered complete levels completes the slide
    (smallest level 1100 px), within settle + conversion; the status page names the rule."""
    import requests

    from tests.support.node import pynetdicom_send

    n = RunningNode(tmp_path)
    try:
        assert pynetdicom_send(n.port, factor4) == [0] * len(factor4)
        t0 = time.monotonic()
        _, uid = series_uids(FACTOR4)
        n.output(uid, timeout=20)
        assert time.monotonic() - t0 < 20 < n.settings.quiet
        session = requests.Session()
        session.trust_env = False
        page = session.get(f"http://127.0.0.1:{n.http_port}/", timeout=10).text
        assert "decided by: association-end" in page, page[:2000]
    finally:
        n.stop()
