"""Orthanc 1.10 as the Storage Commitment SCU: it pushes a stored series to the node as a DICOM modality with
storage commitment requested through its REST API, and reads the result at GET /storage-commitment/{id}.

Orthanc sends the N-ACTION after its C-STOREs and expects the N-EVENT-REPORT on a new association to its own
DICOM port (commitment_peers). Its traffic stays on 127.0.0.1 (RemoteAccessAllowed false; it has no bind
option). Every wait is bounded.
"""

from __future__ import annotations

import time

from converter.testkit import SlideSpec, series_uids, write_series
from scp.commitment.peers import Peer
from scp.commitment.service import CommitmentSettings
from tests.support.node import RunningNode, free_port
from tests.support.orthanc import running_orthanc


def test_orthanc_requests_storage_commitment_and_reads_the_result(tmp_path):
    http_port, dicom_port = free_port(), free_port()
    n = RunningNode(tmp_path, commitment=CommitmentSettings(peers={"ORTHANC": Peer("ORTHANC", "127.0.0.1", dicom_port)}))
    try:
        with running_orthanc(tmp_path, http_port, Name="wsi-node-commitment-test", DicomPort=dicom_port, DicomServerEnabled=True,
                             DicomAet="ORTHANC", DicomModalities={"wsinode": ["WSINODE", "127.0.0.1", n.port]}) as (session, base):
            # A factor-4 pyramid whose smallest level is above 1024 px: the commitment (or the association end) completes it.
            spec = SlideSpec(width=4400, height=3000, tile_size=256, downsamples=(1, 4), seed=1203)
            files = write_series(spec, tmp_path / "src")
            series = {session.post(f"{base}/instances", data=f.read_bytes(), timeout=30).json()["ParentSeries"] for f in files}
            assert len(series) == 1
            r = session.post(f"{base}/modalities/wsinode/store",
                             json={"Resources": list(series), "Synchronous": True, "StorageCommitment": True}, timeout=60)
            assert r.status_code == 200, r.text + (tmp_path / "orthanc.log").read_text()
            answer = r.json()
            tuid = answer.get("StorageCommitmentTransactionUID")
            assert tuid, answer
            deadline = time.monotonic() + 30
            while True:
                result = session.get(f"{base}/storage-commitment/{tuid}", timeout=10).json()
                if result.get("Status") != "Pending":
                    break
                assert time.monotonic() < deadline, result
                time.sleep(0.2)
            assert result["Status"] == "Success", (result, (tmp_path / "orthanc.log").read_text()[-3000:])
            assert len(result.get("Success", [])) == len(files) and not result.get("Failures"), result
            _, uid = series_uids(spec)
            n.output(uid, timeout=20)
            assert n.node.commitment.counts["delivered-new"] == 1, n.node.commitment.counts
    finally:
        n.stop()
