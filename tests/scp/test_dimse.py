"""DIMSE receiver settings that the node tests leave at their defaults."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from converter.testkit import SlideSpec, series_uids, write_non_wsi
from tests.support.node import RunningNode


def test_other_storage_is_kept_in_quarantine_when_configured(tmp_path, caplog):
    n = RunningNode(tmp_path, accept_other_storage=True)
    try:
        study, series = series_uids(SlideSpec(width=800, height=600, seed=301))
        ct = write_non_wsi("ct", tmp_path / "ct", study, series)
        ae = AE(ae_title="MODALITY")
        ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", n.port, ae_title="WSINODE")
        assert assoc.is_established
        assert assoc.send_c_store(ct).Status == 0
        assoc.release()
        kept = list((n.data / "quarantine" / "not-wsi").rglob("*.dcm"))
        assert len(kept) == 1
        assert not [p for p in (n.data / "inbox").rglob("*.dcm") if ".incoming" not in p.parts]
        assert "MODALITY" in caplog.text and "CT Image Storage" in caplog.text
    finally:
        n.stop()
